#!/usr/bin/env bash
# Recipe of the shipped model (resources/models/): x4, 3-band 8-bit RGB, small config, trained on the
# NEON 0.1 m training tile (minus the demo sample's window) with the project's own training CLI.
# Stage 1 the residual autoencoder, stage 2 CondNet + consistency denoiser (the shipped model); with
# ALIGN=1 also the optional stage 3, the decoder tuned to the one-step latents (+PSNR, -texture: the
# model card has both figures); the domain (aerial RGB, 0.2-0.8 m input pixels) is written into the file
# and the weights stored as int8 (a scale per output channel).  Resumable: rerun it and each stage continues from its newest checkpoint.
# Usage: scripts/train_default.sh [AE_STEPS] [LCM_STEPS] [DEC_STEPS]      (DEVICE=cuda for a GPU,
#        WORK=<dir> for another work folder than build/default, OUT=<model file>, ALIGN=1 for stage 3)
set -euo pipefail
cd "$(dirname "$0")/.."
AE_STEPS=${1:-2500}
LCM_STEPS=${2:-2500}
DEC_STEPS=${3:-1500}
DEVICE=${DEVICE:-auto}
PY=${PY:-.venv/bin/python}
W=${WORK:-build/default}
OUT=${OUT:-resources/models/lcmsr_x4_rgb_small.safetensors}
mkdir -p "$W" "$(dirname "$OUT")"
[ -f data/manifest.json ] || $PY scripts/fetch_data.py --out data
# The training tile without the demo sample's window (data/manifest.json: excluded_windows), as four VRTs.
$PY scripts/training_split.py --vrt "$W"
TRAIN="$W/yell_top.vrt $W/yell_bottom.vrt $W/yell_left.vrt $W/yell_right.vrt"
VAL=$(ls data/val/*)
$PY -m lcmsr train-autoencoder $TRAIN --val $VAL --config small --scale 4 --patch 128 --batch 8 \
  --iterations "$AE_STEPS" --lr 3e-4 --device "$DEVICE" --checkpoint-dir "$W/ae" --checkpoint-every 100 \
  --val-every 200 --log-every 50 --resume --quiet --pixel-loss l2 --lpips-weight 0.05 --out "$W/autoencoder"
$PY -m lcmsr train-consistency $TRAIN --val $VAL --stage1 "$W/autoencoder.safetensors" --patch 128 --batch 8 \
  --iterations "$LCM_STEPS" --lr 2e-4 --device "$DEVICE" --checkpoint-dir "$W/lcm" --checkpoint-every 100 \
  --val-every 200 --log-every 50 --resume --quiet --set consistency.x0_weight=1.0 --out "$W/consistency.safetensors"
FINAL="$W/consistency.safetensors"
if [ "${ALIGN:-0}" = 1 ]; then
  $PY -m lcmsr train-decoder $TRAIN --val $VAL --model "$W/consistency.safetensors" --patch 128 --batch 8 \
    --iterations "$DEC_STEPS" --lr 1e-4 --device "$DEVICE" --checkpoint-dir "$W/dec" --checkpoint-every 100 \
    --val-every 250 --log-every 50 --resume --quiet --pixel-loss l2 --no-lpips --out "$W/aligned.safetensors"
  FINAL="$W/aligned.safetensors"
fi
# What imagery the model is for goes into the file (the domain guard and the automatic choice read it);
# int8 storage (a scale per output channel) quarters the file (measured: outputs within 2 grey levels of fp16's).
$PY -m lcmsr set-domain "$FINAL" "$OUT" --preset aerial-rgb --storage int8
echo "model: $OUT"
