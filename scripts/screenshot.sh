#!/usr/bin/env bash
# The real QGIS desktop under Xvfb, with the plugin installed the way README tells users: the release zip unzipped
# into a fresh profile, enabled, and torch made importable through the plugin's "Extra Python path" setting.
# scripts/screenshot_code.py (run inside QGIS) opens the sample raster and the "Super-resolve raster" dialog,
# optionally runs it, opens the settings dialog and photographs each.
#
#   scripts/screenshot.sh [--model FILE.safetensors] [--no-run] [--out DIR] [--work DIR] [--timeout SECONDS]
#
# Images: --out (default docs/img): superresolve_dialog.png, settings_dialog.png and, when a model exists (--model,
# or the bundled resources/models/*.safetensors), qgis_result.png and qgis_uncertainty.png (the optional
# uncertainty output, loaded with its colour ramp).  --work (default build/): the QGIS profile
# (desktop-profile/, wiped first) and the logs, status.json and raw grabs (desktop-shot/).  Exit 0 when every
# step worked.
# Needs: apt-get install -y --no-install-recommends xvfb xauth imagemagick (and QGIS, see docs/ENVIRONMENT.md).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$REPO/.venv/bin/python
OUT=$REPO/docs/img
BASE=$REPO/build
MODEL=""
RUN=1
TIMEOUT=600
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$(realpath "$2"); shift 2 ;;
    --no-run) RUN=0; shift ;;
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --work) BASE=$(realpath -m "$2"); shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "screenshot.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

for tool in xvfb-run xauth qgis convert; do
  command -v "$tool" >/dev/null || {
    echo "screenshot.sh: '$tool' is missing: apt-get install -y --no-install-recommends xvfb xauth imagemagick qgis" >&2
    exit 2
  }
done
[ -x "$PY" ] || { echo "screenshot.sh: $PY is missing: run 'make setup' first" >&2; exit 2; }
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ -n "$MODEL" ] && [ ! -f "$MODEL" ]; then echo "screenshot.sh: model file '$MODEL' does not exist" >&2; exit 2; fi
if [ -z "$MODEL" ] && [ "$RUN" = 1 ] && ! ls "$REPO"/resources/models/*.safetensors >/dev/null 2>&1; then
  echo "screenshot.sh: no model in resources/models/ and no --model: the run and qgis_result.png are skipped" >&2
  RUN=0
fi

PROFILE=$BASE/desktop-profile
WORK=$BASE/desktop-shot
rm -rf "$PROFILE" "$WORK"
mkdir -p "$WORK" "$OUT"
PLUGINS=$PROFILE/profiles/default/python/plugins
mkdir -p "$PLUGINS" "$PROFILE/profiles/default/QGIS"

"$PY" "$REPO/scripts/package.py" --out "$WORK/dist"
ZIP=$(ls "$WORK"/dist/lcmsr_qgis-*.zip)
# What QGIS's "Install from ZIP" does: the zip's lcmsr_qgis/ folder lands in the profile's plugin folder.
"$PY" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$ZIP" "$PLUGINS"

# The plugin enabled, and the README's instruction for torch: Settings -> Extra Python path = a venv's
# site-packages.  showScriptWarning: otherwise `--code` waits for a click on "untrusted script, continue?".
cat > "$PROFILE/profiles/default/QGIS/QGIS3.ini" <<EOF
[PythonPlugins]
lcmsr_qgis=true

[lcmsr]
extra_python_path=$SITE

[UI]
showScriptWarning=false
EOF

echo "QGIS desktop under Xvfb (profile $PROFILE; log $WORK/qgis.log) ..."
rc=0
# The Makefile exports QT_QPA_PLATFORM=offscreen and QGIS_PLUGINPATH (the dev symlink) and a shell may carry a
# PYTHONPATH: each would make this something other than a user's desktop with the zip's plugin.
env -u QGIS_PLUGINPATH -u PYTHONPATH -u QT_QPA_PLATFORM \
  QGIS_CUSTOM_CONFIG_PATH="$PROFILE" \
  LCMSR_SHOT_WORK="$WORK" LCMSR_SHOT_OUT="$OUT" LCMSR_SHOT_INPUT="$REPO/resources/sample/neon_lr.tif" \
  LCMSR_SHOT_MODEL="$MODEL" LCMSR_SHOT_RUN="$RUN" LCMSR_SHOT_TIMEOUT="$TIMEOUT" \
  timeout -k 20 $((TIMEOUT + 120)) \
  xvfb-run -a -s "-screen 0 1280x800x24" \
  qgis --nologo --noversioncheck --code "$REPO/scripts/screenshot_code.py" >"$WORK/qgis.log" 2>&1 || rc=$?

if [ ! -f "$WORK/status.json" ]; then
  echo "screenshot.sh: QGIS exited ($rc) before the script wrote $WORK/status.json; last lines of the log:" >&2
  tail -n 30 "$WORK/qgis.log" >&2
  exit 1
fi

# README images must stay small: an UI grab has few colours, so a 256-colour palette loses nothing visible.
for png in "$OUT"/superresolve_dialog.png "$OUT"/settings_dialog.png "$OUT"/settings_models.png "$OUT"/qgis_result.png \
           "$OUT"/qgis_uncertainty.png; do
  [ -f "$png" ] || continue
  convert "$png" -strip "$png.tmp" && mv "$png.tmp" "$png"
  if [ "$(stat -c %s "$png")" -gt 300000 ]; then
    convert "$png" -dither None -colors 256 "PNG8:$png.tmp" && mv "$png.tmp" "$png"
  fi
  # Map imagery (a noisy result above all) can stay large even with a palette: shrink until it fits.
  while [ "$(stat -c %s "$png")" -gt 300000 ]; do
    convert "$png" -resize 85% -dither None -colors 256 "PNG8:$png.tmp" && mv "$png.tmp" "$png"
  done
  echo "$png: $(identify -format '%wx%h' "$png"), $(( $(stat -c %s "$png") / 1024 )) KiB"
done

echo "Lines of the QGIS log mentioning lcmsr and looking like errors:"
grep -i lcmsr "$WORK/qgis.log" | grep -i -E "error|traceback|exception|warning|failed" || echo "  (none)"

"$PY" - "$WORK/status.json" <<'EOF'
import json, sys
status = json.load(open(sys.argv[1]))
print("steps:", status["steps"])
for error in status["errors"]:
    print("ERROR:", error)
sys.exit(0 if status["ok"] else 1)
EOF
