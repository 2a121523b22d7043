#!/usr/bin/env bash
# One call on the lent GPU machine (torch, no GDAL/QGIS, no network): the benchmark, then a chunk of
# default-model training that resumes from the carried checkpoints.  Prepare here first:
#   .venv/bin/python scripts/pack_training_data.py            # -> build/gpu-data (17 MiB of .npy)
# then run through the device tool, e.g.
#   run(command="bash scripts/gpu_session.sh 300", carry=["build/gpu-data", "build/gpu-train"], timeout_s=540)
# Arguments: [TRAIN_SECONDS (default 300)] [STAGE: ae | lcm (default ae)].  Results go to $OUT:
# bench.json/.md and the logs; the newest checkpoint of the stage, split in 15 MiB parts
# (ckpt.tar.part-*; rejoin with `cat ckpt.tar.part-* | tar x`), to carry into the next call.
# DEVICE=cpu runs the same steps on the CPU (to check the script, not to train).
set -uo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-300}
STAGE=${2:-ae}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-out/gpu}
PY=${PY:-python}
export PYTHONPATH=$PWD/backend
mkdir -p "$OUT" build/gpu-train
{ nvidia-smi || true; $PY -c 'import torch; print(torch.__version__, torch.cuda.is_available())'; } > "$OUT/machine.txt" 2>&1
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  timeout 240 $PY scripts/bench.py --device "$DEVICE" --out "$OUT" ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
  echo "bench: exit $?" >> "$OUT/bench.log"
fi
DATA=build/gpu-data
[ -f "$DATA/train_top.npy" ] || { echo "no $DATA: run scripts/pack_training_data.py here and carry it" >&2; exit 2; }
COMMON=(--val "$DATA"/val_*.npy --patch ${PATCH:-256} --batch ${BATCH:-32} --device "$DEVICE"
        --checkpoint-every ${EVERY:-100} --val-every ${EVERY:-100} --log-every 50 --resume --quiet)
if [ "$STAGE" = ae ]; then
  CMD=(train-autoencoder "$DATA"/train_*.npy "${COMMON[@]}" --config small --scale 4 --lr ${LR:-1e-4}
       --iterations ${STEPS:-100000} --pixel-loss l2 --lpips-weight 0.05 --checkpoint-dir build/gpu-train/ae
       --out build/gpu-train/autoencoder)
else
  CMD=(train-consistency "$DATA"/train_*.npy "${COMMON[@]}" --stage1 build/gpu-train/autoencoder.safetensors
       --lr ${LR:-4e-4} --iterations ${STEPS:-100000} --set consistency.x0_weight=1.0
       --checkpoint-dir build/gpu-train/lcm --out build/gpu-train/lcmsr_x4_rgb_small.safetensors)
fi
# Killed at the time limit: training resumes exactly from the last checkpoint next call.
timeout --signal=KILL "$SECS" $PY -m lcmsr "${CMD[@]}" > "$OUT/train_$STAGE.log" 2>&1
echo "train: exit $? after at most $SECS s" >> "$OUT/train_$STAGE.log"
DIR=build/gpu-train/$STAGE
if ls "$DIR"/step-*.json > /dev/null 2>&1; then
  last=$(ls "$DIR"/step-*.json | sort | tail -1)
  tar cf - "$last" "${last%.json}.safetensors" | split -b 15M - "$OUT/ckpt.tar.part-"
  echo "checkpoint: $last" >> "$OUT/train_$STAGE.log"
fi
ls -la "$OUT"
