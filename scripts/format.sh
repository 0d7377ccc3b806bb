#!/usr/bin/env bash
# Formats the C, CUDA and header files by .clang-format (Debian 12's clang-format 14).
#   scripts/format.sh           rewrite them in place
#   scripts/format.sh --check   change nothing; list what is not formatted and exit 1 (tests/cpu/test_format.py)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format > /dev/null || { echo "format.sh: clang-format is not installed: run scripts/setup.sh" >&2; exit 2; }
mapfile -t files < <(git ls-files 'src/*.c' 'src/*.h' 'src/*.cu' 'src/*.cuh' 'include/*.h' 'tests/*.c' 'tests/*.h' \
                                  'tests/*.cpp' 'tests/*.cu' 'bench/*.c' 'bench/*.cu')
if [ "${1:-}" = --check ]; then
  clang-format --dry-run --Werror "${files[@]}"
else
  clang-format -i "${files[@]}"
fi
