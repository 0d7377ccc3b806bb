"""bench/compare_sets.sh's input checks, before any data or training: a set it does not know, a budget that is not
a number, and a folder holding another command's comparison are refused with one line and exit 2. (Its end-to-end
run takes minutes even at 2 steps, and is checked by hand: see the script's header.)"""
import json
import os
import subprocess

from unet_testlib import BUILD

SOURCE = os.environ.get("UNET_SOURCE", os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(SOURCE, "bench", "compare_sets.sh")


def refused(*args, **env):
    full_env = dict(os.environ, UNET=os.path.join(BUILD, "unet"))
    full_env.update(env)
    r = subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=full_env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and r.stdout == "", (r.returncode, r.stderr)
    return r.stderr


def test_compare_sets_refuses_bad_input(tmp_path):
    assert "usage: bench/compare_sets.sh isbi2012|nuclei|mnfinder" in refused("mnist")
    assert "usage" in refused()
    assert "whole numbers" in refused("nuclei", COMPARE_STEPS="1e3", COMPARE_OUT=str(tmp_path / "a"))
    assert "is not built" in refused("nuclei", UNET=str(tmp_path / "no_unet"), COMPARE_OUT=str(tmp_path / "a"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text(json.dumps({"settings": {}}))
    assert "holds the report of another command" in refused("nuclei", COMPARE_OUT=str(other))
    assert sorted(os.listdir(other)) == ["report.json"]
