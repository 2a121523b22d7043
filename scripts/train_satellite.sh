#!/usr/bin/env bash
# Recipe of the band-wise satellite model (resources/models/lcmsr_x4_satellite_bandwise.safetensors): x4,
# one single-band network applied to every band, small config, trained on the satellite split of
# ../shared/docs/DATA.md (Landsat-7/8 at 28.5-30 m; scripts/satellite_data.py says which files) with the
# project's own training CLI.  Stage 1 the residual autoencoder, stage 2 CondNet + consistency denoiser;
# then the domain (what imagery it is for) is written into the file and the weights stored as int8 (a scale per output channel).
# Resumable: rerun it and each stage continues from its newest checkpoint.
# KIND=joint trains the joint R,G,B,NIR model instead (build/satellite-rgbn/lcmsr_x4_satellite_rgbn.safetensors;
# not shipped: its card, resources/models/MODEL_CARD_satellite_rgbn.md, says why):
# one 4-band network, on the two satellite sources with a NIR band (scripts/satellite_data.py --joint says
# which files and which rows validate).
# Usage: scripts/train_satellite.sh [AE_STEPS] [LCM_STEPS]   (DEVICE=cuda on a GPU, WORK=<dir>, OUT=<file>,
#        KIND=bandwise|joint)
set -euo pipefail
cd "$(dirname "$0")/.."
AE_STEPS=${1:-5000}
LCM_STEPS=${2:-5000}
DEVICE=${DEVICE:-auto}
PY=${PY:-.venv/bin/python}
KIND=${KIND:-bandwise}
case "$KIND" in
  bandwise) W=${WORK:-build/satellite}; PRESET=satellite-bandwise; SPLIT=data/satellite; JOINT=
            OUT=${OUT:-resources/models/lcmsr_x4_satellite_bandwise.safetensors} ;;
  joint)    W=${WORK:-build/satellite-rgbn}; PRESET=satellite-rgbn; SPLIT=data/satellite/rgbn; JOINT=--joint
            OUT=${OUT:-build/satellite-rgbn/lcmsr_x4_satellite_rgbn.safetensors} ;;   # ships once it beats band-wise
  *) echo "KIND must be bandwise or joint, not '$KIND'" >&2; exit 2 ;;
esac
mkdir -p "$W" "$(dirname "$OUT")"
[ -f data/manifest.json ] || $PY scripts/fetch_data.py --out data
$PY scripts/satellite_data.py --data data --out data/satellite $JOINT
TRAIN=$(ls $SPLIT/train/*.npy)
VAL=$(ls $SPLIT/val/*.npy)
$PY -m lcmsr train-autoencoder $TRAIN --val $VAL --config small --scale 4 --patch 128 --batch 8 \
  --iterations "$AE_STEPS" --lr 3e-4 --device "$DEVICE" --checkpoint-dir "$W/ae" --checkpoint-every 100 \
  --val-every 500 --log-every 50 --resume --quiet --pixel-loss l2 --lpips-weight 0.05 --out "$W/autoencoder"
$PY -m lcmsr train-consistency $TRAIN --val $VAL --stage1 "$W/autoencoder.safetensors" --patch 128 --batch 8 \
  --iterations "$LCM_STEPS" --lr 2e-4 --device "$DEVICE" --checkpoint-dir "$W/lcm" --checkpoint-every 100 \
  --val-every 500 --log-every 50 --resume --quiet --set consistency.x0_weight=1.0 --out "$W/consistency.safetensors"
$PY -m lcmsr set-domain "$W/consistency.safetensors" "$OUT" --preset "$PRESET" --storage int8
echo "model: $OUT"
