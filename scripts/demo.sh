#!/usr/bin/env bash
# The main job: super-resolve the bundled sample through qgis_process with the bundled model that its
# domain chooses (no MODEL given: the aerial model for this 0.4 m RGB raster; MODEL=<file> to force one),
# then write a side-by-side PNG (bicubic | LCMSR | reference) and print PSNR/SSIM/LPIPS and the time taken.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT_DIR:-$REPO/out/demo}
MODEL=${MODEL:-}
LR=$REPO/resources/sample/neon_lr.tif
HR=$REPO/resources/sample/neon_hr.tif
ls "$REPO"/resources/models/*.safetensors > /dev/null 2>&1 || { echo "demo: no model in resources/models/" >&2; exit 2; }
mkdir -p "$OUT"
SITE=$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export QT_QPA_PLATFORM=offscreen
export QGIS_CUSTOM_CONFIG_PATH=$REPO/build/qgis-profile QGIS_PLUGINPATH=$REPO/build/dev-plugins
export PYTHONPATH=$SITE:$REPO/backend
/usr/bin/qgis_process.bin plugins enable lcmsr_qgis > /dev/null 2>&1 || true   # non-zero when already enabled
rm -f "$OUT/neon_sr.tif"
start=$(date +%s%N)
/usr/bin/qgis_process.bin run lcmsr:superresolve -- INPUT="$LR" ${MODEL:+MODEL="$MODEL"} OUTPUT="$OUT/neon_sr.tif" \
  2>&1 | grep -E "^(chose|Model:|sampler|device|wrote)|rror" || true
[ -f "$OUT/neon_sr.tif" ] || { echo "demo: qgis_process wrote no output" >&2; exit 1; }
end=$(date +%s%N)
"$REPO/.venv/bin/python" "$REPO/scripts/demo_report.py" --lr "$LR" --sr "$OUT/neon_sr.tif" --hr "$HR" \
  --png "$OUT/neon_side_by_side.png" --milliseconds $(( (end - start) / 1000000 )) --json "$OUT/demo.json"
