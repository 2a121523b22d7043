#!/usr/bin/env bash
# Mutation testing of the method's code (lcmsr/diffusion and lcmsr/train) with mutmut 3.
# mutmut expects the package at ./, src/ or source/ of its working folder, so the run happens in a
# scratch copy laid out that way (the checkout is never mutated); the report lands in $OUT.
# Usage: scripts/mutation.sh [OUT_DIR]     (make mutation; about 1-2 h on 2 cores)
set -euo pipefail
set -f   # MUTATION_FILES holds globs for mutmut, not for the shell
top=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$top/build/mutation}
work=$out/run
py=$top/.venv/bin/python
tools=$out/mutmut-pkgs   # mutmut stays out of the project venv: it is a tool, not a dependency
mkdir -p "$out"
if [ ! -d "$tools/mutmut" ]; then
  "$py" -m pip install -q --target "$tools" "mutmut==3.8.1"
fi
rm -rf "$work"; mkdir -p "$work"
cp -r "$top/backend/lcmsr" "$work/lcmsr"
mkdir -p "$work/tests"
cp "$top/tests/conftest.py" "$work/tests/"
cp -r "$top/tests/backend" "$top/tests/fixtures" "$work/tests/"
cp -r "$top/resources" "$work/resources"
cp -r "$top/docs" "$work/docs"   # a test runs the sampler example in DESIGN.md
cp "$top/pytest.ini" "$work/"
# The tests that state the method's behaviour; the slow learning and multi-process ones stay out.
tests=${MUTATION_TESTS:-"tests/backend/test_diffusion.py tests/backend/test_samplers.py tests/backend/test_method_training.py tests/backend/test_train_loop.py tests/backend/test_train_data.py"}
{
  echo "[mutmut]"
  echo "source_paths=lcmsr"
  echo "only_mutate="
  for g in ${MUTATION_FILES:-lcmsr/diffusion/* lcmsr/train/*}; do echo "    $g"; done
  echo "also_copy="
  echo "    resources"
  echo "    docs"
  echo "    pytest.ini"
  printf 'pytest_add_cli_args=\n    -m\n    not slow\n    -p\n    no:cacheprovider\n    -p\n    no:qgis\n'
  echo "pytest_add_cli_args_test_selection="
  for t in $tests; do [ -e "$top/$t" ] && echo "    $t"; done
  # fork, and no pytest-qgis: a QGIS application in the forked workers crashes them
  echo "process_isolation=fork"
} > "$work/setup.cfg"
cd "$work"
export PYTHONPATH=$tools OMP_NUM_THREADS=1 QT_QPA_PLATFORM=offscreen
export LCMSR_METRIC_WEIGHTS=${LCMSR_METRIC_WEIGHTS:-$top/build/metric-weights}   # the LPIPS terms are under test
"$py" -m mutmut run --max-children "${MUTATION_JOBS:-2}" 2>&1 | tail -n 30 | tee "$out/run.log"
"$py" -m mutmut results --all true > "$out/results.txt" 2>&1 || true
grep -E ': (survived|no tests|timeout|suspicious)' "$out/results.txt" > "$out/survivors.txt" || true
echo "mutation: $(grep -c . "$out/survivors.txt" || true) survivors; list in $out/survivors.txt"
