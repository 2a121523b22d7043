# Inside the chroot (scripts/qgis_chroot.sh test copies this to /root/lcmsr-run/run.sh after a line that
# sets TORCH_SOURCE): what a new user does with the zip, then the QGIS tests.
set -eu
cd /root/lcmsr-run
export HOME=/root QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=2 LCMSR_TEST_STRICT=1
export QGIS_CUSTOM_CONFIG_PATH=$PWD/config LCMSR_METRIC_WEIGHTS=$PWD/metric-weights
PROFILE=$PWD/config/profiles/default
PLUGINS=$PROFILE/python/plugins

if [ "$TORCH_SOURCE" = plugin ]; then
  echo "== PyTorch from the plugin's installer (its build for this Python, or the reachable one it offers) =="
  python3 -P - "$PLUGINS" <<'PY'
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/lcmsr_qgis/ext"]
from lcmsr_qgis import torch_install as t
try:
    print(t.install(t.torch_dir(), t.torch_plan("cpu")))
except t.InstallError as exc:
    if exc.offer is None:
        raise SystemExit(f"install failed: {exc}")
    print(f"{exc}\n-> installing the offered build")
    print(t.install(t.torch_dir(), exc.offer.plan))
PY
fi

echo "== qgis_process: the plugin from the zip, enabled in the profile, super-resolves the sample =="
qgis_process plugins enable lcmsr_qgis >out/enable.log 2>&1 || { tail -20 out/enable.log; exit 1; }
qgis_process run lcmsr:superresolve -- "INPUT=$PLUGINS/lcmsr_qgis/resources/sample/neon_lr.tif" \
  "OUTPUT=$PWD/out/sr.tif" >out/qgis_process.log 2>&1 || { tail -20 out/qgis_process.log; exit 1; }
grep -E "^(QGIS version|device|wrote)" out/qgis_process.log || true
python3 -c 'from osgeo import gdal; gdal.UseExceptions(); d = gdal.Open("out/sr.tif"); print("qgis_process output:", d.RasterXSize, "x", d.RasterYSize, "x", d.RasterCount)'

echo "== the QGIS tests, importing the plugin and its bundled backend where the zip put them =="
export PYTHONPATH=$PLUGINS:$PLUGINS/lcmsr_qgis/ext
if [ "$TORCH_SOURCE" = plugin ]; then export PYTHONPATH=$PYTHONPATH:$PROFILE/python/lcmsr_torch; fi
python3 -c 'import qgis.core, torch, sys; print("QGIS", qgis.core.Qgis.QGIS_VERSION, "| Python", sys.version.split()[0], "| torch", torch.__version__, "from", torch.__file__)'
# -P: the working folder is not on sys.path (every import of the plugin is the zip's); -u: the summary line
# is out before QGIS shuts down, whatever happens after it.
python3 -u -P -m pytest -q -p no:cacheprovider tests/qgis "$@"
