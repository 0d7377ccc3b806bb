#!/usr/bin/env bash
# U-Net against UNet++ on one data set, as issue 14 asks: U-Net, the wide
# U-Net matched to UNet++'s parameter count, UNet+ and UNet++ (both deep-
# supervised, every depth evaluated pruned), same padding, filters
# 16..256, tiles of 256 with the paper's augmentation (elastic, flips, turns),
# the same steps, Adam with a cosine schedule and seeds 1..3 for all:
#
#   bench/compare_sets.sh isbi2012    -> bench/results/compare-isbi2012/
#   bench/compare_sets.sh nuclei      -> bench/results/compare-nuclei/
#   bench/compare_sets.sh mnfinder    -> bench/results/compare-mnfinder/
#
# isbi2012: slices 0..23 train, 24..29 validation (datasets/isbi2012.py, from
# ../shared/data/isbi2012); nuclei: the stardist image, rows 0..383 train,
# 384..511 validation (datasets/nuclei.py; its wheel comes from PyPI, or put
# stardist-0.9.1-*.whl in data/cache); mnfinder: the larger nuclei set, 49 annotated
# fluorescence images from the mnfinder wheel on PyPI (MIT), its own split cut into
# 256x256 tiles, 304 to train and 99 to validate (datasets/mnfinder.py). The data
# goes to data/ (ignored by git). mnfinder's budget was not timed: its training steps
# are the others' (same tiles and batch), its validations are 99 tiles against 6 or 1;
# it trains 1000 steps with 5 validations (below).
#
# The budget, 1500 steps of batch 2, is for about two hours per set on an
# idle 2-core CPU, estimated from step times measured with `unet bench
# --device cpu --tile 256 --batch 2 --optimizer adam --steps 10 --json` on
# this project's machine while nothing else ran on it (top: 100% idle; two
# repetitions agreed within 4%): the median step of U-Net 16..256 took
# 194-198 ms, the wide U-Net 237-246 ms, UNet+ (deep supervision) 419-431 ms,
# UNet++ (deep supervision) 514-516 ms: 1.39 s for one step of all four, 4.2 s
# with 3 seeds, so 1500 steps train in about 6250 s. The rest: a U-Net run
# of this script on ISBI 2012 at 40 steps (4 validations), on the idle
# machine, took 19 s, about 11 s beyond its steps; scaled by the models'
# step times to 10 validations and UNet++'s and UNet+'s 4 pruned depths
# evaluated at the end, that is about 220 s per seed for the four models
# (an estimate: the larger models' runs were not timed idle), 660 s for
# three, and the costs measured first about 60 s: about 6950 s, 1.9 hours
# (nuclei's one validation image makes it a little shorter). Under load the steps are
# far slower: while other builds and tests shared the two cores (load
# average 5 to 7) the same benchmark took 3.0-3.2 s per U-Net step and
# 4.6-15 s per UNet++ step, 10 to 30 times as long. Each run saves a
# checkpoint every 125 steps, and `unet compare` prints the runs done and
# the time left; an interrupted comparison continues where it stopped when
# this script is run again.
#
# Overrides, for a quick check that the whole thing runs (never commit their
# results): COMPARE_STEPS (1500), COMPARE_SEEDS (3), COMPARE_OUT (the folder
# under bench/results), UNET (build/unet). Extra arguments go to unet compare.
set -euo pipefail
cd "$(dirname "$0")/.."

set_name=${1:-}
case "$set_name" in
  isbi2012|nuclei|mnfinder) shift ;;
  *) echo "usage: bench/compare_sets.sh isbi2012|nuclei|mnfinder [extra unet compare options]" >&2; exit 2 ;;
esac

unet=${UNET:-build/unet}
# mnfinder validates 99 tiles against ISBI's 6 images and nuclei's one strip: at 1500
# steps and 10 validations its validations alone would add about 45 minutes (from the
# other sets' run times: about 7.7 s per seed for each tile-sized validation image), so
# it trains 1000 steps and validates 5 times, to stay near two hours
case "$set_name" in
  mnfinder) default_steps=1000 validations=5 ;;
  *) default_steps=1500 validations=10 ;;
esac
steps=${COMPARE_STEPS:-$default_steps}
seeds=${COMPARE_SEEDS:-3}
out=${COMPARE_OUT:-bench/results/compare-$set_name}
if [ ! -x "$unet" ]; then
  echo "compare_sets: $unet is not built: run scripts/setup.sh first (or set UNET)" >&2
  exit 2
fi
case "$steps$seeds" in
  *[!0-9]*) echo "compare_sets: COMPARE_STEPS and COMPARE_SEEDS take whole numbers" >&2; exit 2 ;;
esac
# validations: 10 (mnfinder 5) over the run, checkpoints: 12 (never 0, for a tiny budget)
val_every=$(( steps / validations > 0 ? steps / validations : 1 ))
save_every=$(( steps / 12 > 0 ? steps / 12 : 1 ))

train=data/${set_name}_train.h5 val=data/${set_name}_val.h5
cmd=("$unet" compare --models unet,wide_unet,unet_plus,unetpp --match-params --deep-supervision
     --data "$train" --val "$val" --padding same --filters 16,32,64,128,256 --classes 1
     --tile 256 --batch 2 --augment paper --optimizer adam --lr 1e-3 --schedule cosine
     --steps "$steps" --seeds "$seeds" --seed 1 --val-every "$val_every" --save-every "$save_every"
     --device cpu --out "$out" "$@")
# the exact command, beside the report it writes; a folder of another command is not mixed with this one's runs
quote() { # an argument as the shell takes it back, quoted only where it needs to be
  case "$1" in *[!A-Za-z0-9_./,=:+-]*|"") printf '%q' "$1" ;; *) printf '%s' "$1" ;; esac
}
command=$(for a in "${cmd[@]}"; do quote "$a"; printf ' '; done | sed 's/ $//')
if [ -f "$out/report.json" ] && [ "$(cat "$out/command.txt" 2>/dev/null)" != "$command" ]; then
  echo "compare_sets: $out holds the report of another command: remove the folder (git rm -r $out) to start" \
       "afresh, or set COMPARE_OUT" >&2
  exit 2
fi

mkdir -p data "$out"
if [ ! -f "$val" ]; then
  case "$set_name" in
    isbi2012) /usr/bin/python3 datasets/isbi2012.py --out data ;;
    nuclei) /usr/bin/python3 datasets/nuclei.py --out data --cache data/cache ;;
    mnfinder) /usr/bin/python3 datasets/mnfinder.py --out data --cache data/cache ;;
  esac
fi
echo "$command" > "$out/command.txt"
echo "compare_sets: $command"
"${cmd[@]}"
