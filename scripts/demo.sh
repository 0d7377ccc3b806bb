#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare the nuclei data (real,
# hand-annotated), add the U-Net paper's border weight map, train a U-Net with
# the paper's augmentation for a few minutes, report validation IoU and Dice,
# and draw the prediction and the training curve into runs/demo/.
#   scripts/demo.sh [extra unet train options, e.g. --steps 600 --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/build:$PATH"
out=runs/demo
mkdir -p data "$out"

/usr/bin/python3 datasets/nuclei.py --out data --cache data/cache
unet data weights data/nuclei_train.h5 --w0 10 --sigma 5

# A U-Net of the paper's shape (valid padding, transposed-convolution
# upsampling, crop-and-concat skips) at a quarter of its width, so that a
# few minutes on two CPU cores learn something; see --help for the rest.
unet train --data data/nuclei_train.h5 --val data/nuclei_val.h5 \
  --model unet --filters 16,32,64,128,256 --padding valid --tile 284 --batch 4 \
  --optimizer adam --lr 1e-3 --schedule cosine --steps 1200 --augment paper \
  --seed 1 --log "$out/metrics.jsonl" --log-every 10 --val-every 200 \
  --save "$out/unet.safetensors" "$@"

unet predict --checkpoint "$out/unet.safetensors" --input data/nuclei_val.h5 --output "$out/pred.h5"
unet eval --checkpoint "$out/unet.safetensors" --data data/nuclei_val.h5
/usr/bin/python3 scripts/plot_run.py --log "$out/metrics.jsonl" --pred "$out/pred.h5" --data data/nuclei_val.h5 --out "$out"
echo "demo: pictures in $out/prediction.png and $out/curve.png"
