"""The Processing algorithms run the backend on real rasters and hand QGIS georeferenced, named layers."""
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import plugin_sources
from qgis.core import (
    QgsApplication,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
)


REPO = Path(__file__).resolve().parents[2]
SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"
SAMPLE_HR = REPO / "resources" / "sample" / "neon_hr.tif"
ALGORITHMS = ["superresolve", "superresolve_many", "degrade", "evaluate", "train_autoencoder", "train_consistency",
              "train_decoder", "finetune"]


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self, cancel_on_progress=False):
        super().__init__()
        self.infos, self.warnings, self.texts = [], [], []
        if cancel_on_progress:  # cancel as soon as the job has reported any progress: mid-run, not before it
            self.progressChanged.connect(lambda value: self.cancel() if value > 0 else None)

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        self.warnings.append(warning)
        super().pushWarning(warning)

    def setProgressText(self, text):  # noqa: N802
        self.texts.append(text)
        super().setProgressText(text)


def make_raster(path, width=24, height=20, bands=3, origin=(500000.0, 4600000.0), pixel=2.0, seed=0):
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), width, height, bands, gdal.GDT_Byte)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(seed)
    for b in range(1, bands + 1):
        ds.GetRasterBand(b).WriteArray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    ds = None
    return str(path)


def raster_facts(path_or_layer) -> dict:
    """Plain values of a raster layer: no QGIS object may outlive the test (a layer destroyed after
    QgsApplication.exitQgis, e.g. kept alive by a pytest.raises traceback, crashes the interpreter)."""
    layer = path_or_layer if isinstance(path_or_layer, QgsRasterLayer) else QgsRasterLayer(str(path_or_layer), "r")
    extent = layer.extent()
    return {"valid": layer.isValid(), "extent": (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(),
                                                 extent.yMaximum()),
            "size": (layer.width(), layer.height()), "crs": layer.crs().authid(), "bands": layer.bandCount()}


def run(algorithm, parameters, feedback=None, context=None):
    import processing

    return processing.run(f"lcmsr:{algorithm}", parameters, feedback=feedback or RecordingFeedback(),
                          context=context)


def fast(parameters):
    """Small tiles keep the tiny model's runs well under a second on one core."""
    return dict({"TILE": 64, "OVERLAP": 8, "BATCH": 4, "DEVICE": 2}, **parameters)


def test_every_algorithm_is_listed_with_help_and_icon(provider):
    from lcmsr_qgis import qgis_enums

    ids = sorted(a.name() for a in provider.algorithms())
    assert ids == sorted(ALGORITHMS)
    for alg in provider.algorithms():
        assert alg.displayName() and alg.group() and alg.groupId()
        assert len(alg.shortHelpString()) > 100, alg.name()
        assert not alg.icon().isNull()
        assert alg.flags() & qgis_enums.ALGORITHM_CAN_CANCEL
        assert alg.createInstance() is not alg and alg.createInstance().name() == alg.name()
    sr = QgsApplication.processingRegistry().algorithmById("lcmsr:superresolve")
    assert sr.parameterDefinition("COG").flags() & qgis_enums.PARAMETER_ADVANCED
    keys = [p.name() for p in sr.parameterDefinitions()]
    for key in ("INPUT", "BANDS", "MODEL", "DEVICE", "TILE", "OVERLAP", "BATCH", "MEMORY_BUDGET", "STEPS", "SEED", "OUTPUT_TYPE",
                "OUTPUT"):
        assert key in keys and getattr(type(sr), key) == key
    steps = sr.parameterDefinition("STEPS")
    assert (steps.minimum(), steps.maximum(), steps.defaultValue()) == (1, 1000, 1)  # consistency takes 1-4 (checked by the backend), DDIM K
    # Precision offers "auto" as the default; the indices saved by older versions (0 fp32, 1 bf16) keep meaning.
    from lcmsr.choices import PRECISIONS

    precision = sr.parameterDefinition("PRECISION")
    assert PRECISIONS[:2] == ("fp32", "bf16") and PRECISIONS[precision.defaultValue()] == "auto"
    assert precision.options()[precision.defaultValue()].startswith("Auto")


def test_algorithm_modules_import_only_torch_free_choices_at_module_level():
    """The toolbox lists the algorithms in a QGIS without torch; of the backend only lcmsr.choices is read then."""
    import ast

    folder = REPO / "lcmsr_qgis" / "algorithms"
    for path in list(folder.glob("*.py")) + [REPO / "lcmsr_qgis" / "feedback.py", REPO / "lcmsr_qgis" / "tasks.py",
                                             REPO / "lcmsr_qgis" / "model_cache.py"]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only; imports inside functions run when an algorithm runs
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.ImportFrom) and node.module == "lcmsr":
                names = [f"lcmsr.{a.name}" for a in node.names]
            assert not [n for n in names if n.split(".")[0] in ("torch", "lcmsr") and n != "lcmsr.choices"], \
                f"{path.name}: {names}"
    import subprocess

    probe = "import sys, lcmsr.choices; print(sorted({'torch', 'numpy', 'osgeo'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_can_execute_says_what_is_missing_without_torch(provider, monkeypatch, runner_setting):
    """Inside QGIS: QGIS's own interpreter lacks torch."""
    runner_setting("inprocess")
    monkeypatch.setitem(sys.modules, "torch", None)
    from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    for alg in provider.algorithms():
        ok, message = alg.canExecute()
        assert not ok and "torch (not installed)" in message and "'Install PyTorch'" in message
        assert "\n" not in message
        # qgis_process skips canExecute: preparing the run gives the same line instead of an import traceback.
        with pytest.raises(QgsProcessingException, match=r"torch \(not installed\)"):
            alg.createInstance().prepareAlgorithm({}, QgsProcessingContext(), QgsProcessingFeedback())


def test_can_execute_says_what_the_worker_python_lacks(provider, runner_setting, tmp_path):
    """In a worker: the chosen interpreter, a Python that lacks torch, is checked without importing anything
    into QGIS.  That interpreter is this test's own Python started with -S (no site-packages, so neither a
    venv's nor Debian's python3-torch), behind a wrapper a user could have chosen."""
    import importlib.util

    system = tmp_path / "python-without-site"
    system.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    system.chmod(0o755)
    system = str(system)
    assert not subprocess_finds(system, "torch")
    runner_setting("worker", system)
    from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    for alg in provider.algorithms():
        ok, message = alg.canExecute()
        assert not ok and f"worker Python {system}" in message and "torch (not installed)" in message, message
        assert "'Install PyTorch'" in message and "\n" not in message
        with pytest.raises(QgsProcessingException, match=r"torch \(not installed\)"):
            alg.createInstance().prepareAlgorithm({}, QgsProcessingContext(), QgsProcessingFeedback())
    assert importlib.util.find_spec("lcmsr_qgis.worker") is not None


def subprocess_finds(python: str, module: str) -> bool:
    import subprocess

    probe = f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"
    return subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


def test_superresolve_output_layer_is_named_after_input_and_keeps_extent(provider, tiny_model, tmp_path,
                                                                         qgis_new_project):
    import processing

    out = tmp_path / "sr.tif"
    feedback = RecordingFeedback()
    processing.runAndLoadResults("lcmsr:superresolve",
                                 fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OUTPUT": str(out)}),
                                 feedback=feedback)
    names = [layer.name() for layer in QgsProject.instance().mapLayers().values()]
    assert names.count("neon_lr x4 LCMSR") == 1, names
    (layer,) = QgsProject.instance().mapLayersByName("neon_lr x4 LCMSR")
    assert os.path.samefile(layer.source(), out)
    got, source = raster_facts(layer), raster_facts(SAMPLE_LR)
    del layer
    assert got["valid"] and got["extent"] == pytest.approx(source["extent"])
    assert got["size"] == (4 * source["size"][0], 4 * source["size"][1])
    assert got["crs"] == source["crs"] == "EPSG:32612" and got["bands"] == 3
    QgsProject.instance().removeAllMapLayers()
    # The log says which device and precision ran, and why: the default is "auto" (lcmsr.runtime decides).
    import torch

    from lcmsr.runtime import resolve_precision

    precision, why = resolve_precision("auto", torch.device("cpu"))
    assert any("device cpu" in line and f"precision {precision} ({why})" in line for line in feedback.infos), \
        feedback.infos
    # From the first finished batch the progress text says the output rate and the time left (the CLI's words).
    assert "MP/s" in feedback.texts[0] and feedback.texts[0].endswith(" left"), feedback.texts
    assert any(line.startswith("progress: tile ") for line in feedback.infos), feedback.infos


def test_batch_of_inputs_loads_the_model_once(provider, tiny_model, tmp_path, runner_setting):
    """Inside QGIS, the model cache serves a batch (a worker loads its model once per job)."""
    from lcmsr_qgis.model_cache import model_cache

    runner_setting("inprocess")

    model_cache().clear()
    before = model_cache().loads
    inputs = [make_raster(tmp_path / f"in{i}.tif", seed=i, origin=(500000.0 + 100 * i, 4600000.0))
              for i in range(3)]
    for i, path in enumerate(inputs):
        result = run("superresolve", fast({"INPUT": path, "MODEL": tiny_model, "OUTPUT": str(tmp_path / f"o{i}.tif")}))
        got = raster_facts(result["OUTPUT"])
        assert got["valid"] and got["extent"] == pytest.approx(raster_facts(path)["extent"])
        assert got["size"] == (96, 80)
    assert model_cache().loads - before == 1


def test_model_cache_loads_once_across_threads_and_reloads_a_changed_file(tmp_path):
    from lcmsr_qgis.model_cache import ModelCache

    calls = []

    def slow_loader(path, device):
        calls.append((path, device))
        time.sleep(0.05)  # long enough that the threads below overlap inside the load
        return object()

    model_file = tmp_path / "m.safetensors"
    model_file.write_bytes(b"one")
    cache = ModelCache(loader=slow_loader)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(str(model_file), "cpu"))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.loads == 1 and all(g is got[0] for g in got)
    assert cache.get(str(model_file), "cuda:0") is not got[0]  # another device is another copy
    os.utime(model_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.get(str(model_file), "cpu") is not got[0]  # a replaced file is read again
    assert cache.loads == 3 and len(cache) == 2
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        cache.get(str(tmp_path / "missing.safetensors"), "cpu")


def test_superresolve_bands_and_errors_name_the_problem(provider, tiny_model, tmp_path):
    four = make_raster(tmp_path / "four.tif", bands=4)
    result = run("superresolve", fast({"INPUT": four, "BANDS": [3, 2, 1], "MODEL": tiny_model, "OUTPUT_TYPE": 1,
                                       "OUTPUT": str(tmp_path / "bands.tif")}))
    from osgeo import gdal

    ds = gdal.Open(result["OUTPUT"])
    assert ds.RasterCount == 3 and ds.GetRasterBand(1).DataType == gdal.GDT_Float32
    ds = None
    with pytest.raises(QgsProcessingException, match="band"):
        run("superresolve", fast({"INPUT": four, "BANDS": [1, 2], "MODEL": tiny_model,
                                  "OUTPUT": str(tmp_path / "two.tif")}))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 4)
    with pytest.raises(QgsProcessingException, match="broken.safetensors"):
        run("superresolve", fast({"INPUT": four, "MODEL": str(broken), "OUTPUT": str(tmp_path / "x.tif")}))
    assert not (tmp_path / "two.tif").exists() and not (tmp_path / "x.tif").exists()


def test_superresolve_cancel_leaves_no_output(provider, tiny_model, tmp_path):
    out = tmp_path / "cancelled.tif"
    feedback = RecordingFeedback(cancel_on_progress=True)
    with pytest.raises(QgsProcessingException, match="[Cc]ancel"):
        run("superresolve", {"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "TILE": 16, "OVERLAP": 2, "BATCH": 1,
                             "DEVICE": 2, "OUTPUT": str(out)}, feedback=feedback)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_degrade_makes_the_lr_raster_over_the_same_extent(provider, tmp_path):
    result = run("degrade", {"INPUT": str(SAMPLE_HR), "SCALE": 4, "OUTPUT": str(tmp_path / "lr.tif")})
    got, hr = raster_facts(result["OUTPUT"]), raster_facts(SAMPLE_HR)
    assert got["valid"] and got["extent"] == pytest.approx(hr["extent"])
    assert got["size"] == (hr["size"][0] // 4, hr["size"][1] // 4)
    with pytest.raises(QgsProcessingException, match="SCALE = 5"):
        run("degrade", {"INPUT": str(SAMPLE_HR), "SCALE": 5, "OUTPUT": str(tmp_path / "lr5.tif")})


def test_outputs_that_are_inputs_are_refused_and_nothing_changes(provider, tiny_model, tmp_path):
    """The backend's output-path rule (lcmsr.paths) holds in QGIS too: a report or a raster written over
    a raster or the model it reads would destroy it."""
    import shutil

    hr, model = tmp_path / "hr.tif", tmp_path / "model.safetensors"
    shutil.copy(SAMPLE_HR, hr)
    shutil.copy(tiny_model, model)
    os.link(model, tmp_path / "model-link.tif")
    before = {p: p.read_bytes() for p in (hr, model)}
    with pytest.raises(QgsProcessingException, match="would destroy that input"):
        run("evaluate", {"REFERENCE": str(hr), "SR": str(hr), "SCALE": 4, "DEVICE": 2, "OUTPUT_HTML": str(hr)})
    with pytest.raises(QgsProcessingException, match="model-link.tif is the model file"):
        run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": str(model),
                                  "OUTPUT": str(tmp_path / "model-link.tif")}))
    assert {p: p.read_bytes() for p in before} == before


def test_evaluate_a_given_sr_raster_and_a_model(provider, tiny_model, tmp_path):
    sr = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OUTPUT": str(tmp_path / "sr.tif")}))
    html = tmp_path / "report.html"
    given = run("evaluate", {"REFERENCE": str(SAMPLE_HR), "SR": sr["OUTPUT"], "SCALE": 4, "DEVICE": 2,
                             "OUTPUT_HTML": str(html)})
    assert 5.0 < given["PSNR"] < 60.0 and -1.0 < given["SSIM"] <= 1.0
    # LPIPS always: from the float32 weights of `make setup`, else the float16 copy the plugin bundles.
    assert 0.0 < given["LPIPS_VALUE"] <= 2.0
    assert given["BICUBIC_PSNR"] is None  # no LR is known for a given SR raster: no baseline row
    text = html.read_text(encoding="utf-8")
    assert "psnr" in text and f"{given['PSNR']:.4f}" in text and "bicubic" not in text
    # With a model: degrade the reference, super-resolve it, score — the same numbers as doing it by hand —
    # next to bicubic upsampling of the same LR, which the untrained tiny model (decoder = bicubic) equals.
    modelled = run("evaluate", {"REFERENCE": str(SAMPLE_HR), "MODEL": tiny_model, "LPIPS": False, "DEVICE": 2,
                                "SAMPLES": 2, "OUTPUT_HTML": str(tmp_path / "model.html")})
    assert modelled["LPIPS_VALUE"] is None and os.path.exists(modelled["SR_RASTER"])
    from lcmsr.metrics.evaluate import evaluate_rasters

    by_hand = evaluate_rasters(modelled["SR_RASTER"], str(SAMPLE_HR), 4, lpips=False)
    assert modelled["PSNR"] == pytest.approx(by_hand["psnr"]) and modelled["SSIM"] == pytest.approx(by_hand["ssim"])
    bicubic_raster = os.path.join(os.path.dirname(modelled["SR_RASTER"]), "bicubic.tif")
    by_hand = evaluate_rasters(bicubic_raster, str(SAMPLE_HR), 4, lpips=False)
    assert modelled["BICUBIC_PSNR"] == pytest.approx(by_hand["psnr"]) and modelled["BICUBIC_LPIPS"] is None
    # The untrained tiny model's decoder is bicubic upsampling; the pipeline's default LR-consistency (3
    # back-projections with the project's own degradation) then corrects it.  The same, computed by hand:
    import numpy as np
    import torch
    from osgeo import gdal

    from lcmsr.choices import SR_DEFAULTS
    from lcmsr.ops import downsample_bicubic, upsample_bicubic

    lr = torch.from_numpy(gdal.Open(os.path.join(os.path.dirname(modelled["SR_RASTER"]), "lr.tif"))
                          .ReadAsArray().astype(np.float64))[None]
    y = upsample_bicubic(lr, 4)
    for _ in range(SR_DEFAULTS["lr_consistency"]):
        y = y + upsample_bicubic(lr - downsample_bicubic(y, 4), 4)
    lo, hi = lr.amin(dim=(2, 3), keepdim=True), lr.amax(dim=(2, 3), keepdim=True)   # the input's value range
    by_hand = torch.minimum(torch.maximum(y, lo), hi).round()[0].numpy()
    got = gdal.Open(modelled["SR_RASTER"]).ReadAsArray().astype(np.float64)
    assert np.abs(got - by_hand).max() <= 1 and np.abs(got - by_hand).mean() < 0.01
    text = (tmp_path / "model.html").read_text(encoding="utf-8")
    assert "<th>bicubic</th>" in text and f"<td>{modelled['BICUBIC_PSNR']:.4f}</td>" in text
    with pytest.raises(QgsProcessingException, match="MODEL"):
        run("evaluate", {"REFERENCE": str(SAMPLE_HR), "MODEL": str(tmp_path / "nope.safetensors"), "LPIPS": False,
                         "OUTPUT_HTML": str(tmp_path / "x.html")})
    from lcmsr_qgis.settings import Settings

    Settings().set("default_model", "")  # no default model: the run says what to give
    with pytest.raises(QgsProcessingException, match="give a super-resolved raster or a model"):
        run("evaluate", {"REFERENCE": str(SAMPLE_HR), "LPIPS": False, "OUTPUT_HTML": str(tmp_path / "y.html")})


def test_evaluate_says_whether_to_trust_a_result_with_and_without_a_reference(provider, tiny_model, tmp_path):
    """LR-consistency, spectral angles and the uncertainty/error correlation come back as outputs and in the
    report with its pictures; without a reference the run measures what it can and says what it cannot."""
    import base64
    import re

    import numpy as np
    from osgeo import gdal

    from lcmsr.metrics import trust
    from lcmsr.metrics.evaluate import read_image

    hr = read_image(SAMPLE_HR)
    shifted = tmp_path / "shifted.tif"
    gdal.Translate(str(shifted), str(SAMPLE_HR))
    ds = gdal.Open(str(shifted), gdal.GA_Update)
    ds.WriteArray(np.roll(hr, 8, axis=2))                     # two LR pixels off: inconsistent with its input
    ds = None
    unc = tmp_path / "unc.tif"
    gdal.Translate(str(unc), str(SAMPLE_HR), bandList=[1], outputType=gdal.GDT_Float32)
    ds = gdal.Open(str(unc), gdal.GA_Update)
    ds.WriteArray(np.abs(np.roll(hr, 8, axis=2).astype(np.float32) - hr).mean(0))
    ds = None
    html = tmp_path / "noref.html"
    feedback = RecordingFeedback()
    noref = run("evaluate", {"SR": str(shifted), "LR": str(SAMPLE_LR), "LPIPS": False, "DEVICE": 2,
                             "OUTPUT_HTML": str(html)}, feedback)
    by_hand = trust.lr_consistency(np.roll(hr, 8, axis=2), read_image(SAMPLE_LR), 4)
    assert noref["LR_MAE"] == pytest.approx(by_hand["mae"], rel=1e-6) and noref["LR_MAE"] > 5
    assert noref["LR_MAX"] == pytest.approx(by_hand["max"], rel=1e-6)
    assert noref["SAM_INPUT"] > 0 and noref["PSNR"] is None and noref["SAM_REFERENCE"] is None
    assert any("need a reference" in line for line in feedback.infos)
    text = html.read_text(encoding="utf-8")
    assert "need a reference" in text and text.count("data:image/png;base64,") == 2   # bicubic | SR crops
    full = run("evaluate", {"REFERENCE": str(SAMPLE_HR), "SR": str(shifted), "LR": str(SAMPLE_LR),
                            "UNCERTAINTY": str(unc), "LPIPS": False, "DEVICE": 2,
                            "OUTPUT_HTML": str(tmp_path / "f.html")})
    assert full["LR_MAE"] == pytest.approx(noref["LR_MAE"]) and full["SAM_REFERENCE"] > 0
    assert full["UNCERTAINTY_SPEARMAN"] == pytest.approx(1.0) and 5 < full["PSNR"] < 40
    text = (tmp_path / "f.html").read_text(encoding="utf-8")
    names = re.findall(r'<img alt="([^"]+)"', text)
    assert names == ["crop_bicubic", "crop_sr", "crop_reference", "crop_error", "error_map", "uncertainty_map"]
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1))
    assert png.startswith(b"\x89PNG") and (tmp_path / "f_crop_bicubic.png").read_bytes() == png
    # A model: the trust metrics against the LR it made, the bicubic row's too.  The untrained tiny model's
    # decoder is bicubic, and bicubic is not LR-consistent (its reduction blurs twice); the default
    # LR-consistency back-projection brings the model's row back close to the input, bicubic's stays far.
    modelled = run("evaluate", {"REFERENCE": str(SAMPLE_HR), "MODEL": tiny_model, "LPIPS": False, "DEVICE": 2,
                                "SAMPLES": 2, "OUTPUT_HTML": str(tmp_path / "model.html")})
    assert modelled["BICUBIC_LR_MAE"] > 2.0 and modelled["LR_MAE"] < modelled["BICUBIC_LR_MAE"] / 4
    # Every number output is a Python float (or None): a numpy scalar reaches Qt as an opaque object, which
    # qgis_process and the results viewer show as an empty value.
    numbers = {name: type(value).__name__ for results in (noref, full, modelled) for name, value in results.items()
               if name not in ("OUTPUT_HTML", "SR_RASTER") and value is not None and type(value) is not float}
    assert numbers == {}
    assert modelled["BICUBIC_SAM_REFERENCE"] == pytest.approx(modelled["SAM_REFERENCE"], rel=0.05)
    names = re.findall(r'<img alt="([^"]+)"', (tmp_path / "model.html").read_text(encoding="utf-8"))
    assert names == ["crop_bicubic", "crop_sr", "crop_reference", "crop_error", "error_map", "uncertainty_map"]
    with pytest.raises(QgsProcessingException, match="give one"):
        run("evaluate", {"SR": str(shifted), "LPIPS": False, "OUTPUT_HTML": str(tmp_path / "z.html")})
    with pytest.raises(QgsProcessingException, match="REFERENCE"):
        run("evaluate", {"MODEL": tiny_model, "LPIPS": False, "OUTPUT_HTML": str(tmp_path / "z.html")})


def _train_parameters(tmp_path, name, **extra):
    return dict({"INPUTS": [str(SAMPLE_HR)], "VALIDATION": str(SAMPLE_HR), "SCALE": 4, "PATCH": 32, "BATCH": 2,
                 "ITERATIONS": 2, "DEVICE": 2, "CHECKPOINT": str(tmp_path / f"{name}_ck"),
                 "OUTPUT": str(tmp_path / f"{name}.safetensors")}, **extra)


def test_train_all_stages_cancel_resume_and_use_the_model(provider, tmp_path):
    pytest.importorskip("torch").set_num_threads(1)
    params = _train_parameters(tmp_path, "stage1", CONFIG=0)
    del params["CHECKPOINT"]  # the default: beside the output
    feedback = RecordingFeedback()
    stage1 = run("train_autoencoder", params, feedback=feedback)
    assert stage1["STEPS"] == 2 and stage1["LOSS"] is not None and os.path.exists(stage1["OUTPUT"])
    assert stage1["CHECKPOINT"] == str(tmp_path / "stage1_checkpoints")
    assert list(Path(stage1["CHECKPOINT"]).glob("step-*.json")), stage1["CHECKPOINT"]
    assert any(text.startswith("step 1/2 loss") for text in feedback.texts), feedback.texts
    assert any("val PSNR" in line for line in feedback.infos), feedback.infos
    # Cancel during stage 2: the backend saves a checkpoint and the error says how to resume.
    params = _train_parameters(tmp_path, "model", AUTOENCODER=stage1["OUTPUT"], ITERATIONS=3)
    params.pop("SCALE")
    feedback = RecordingFeedback(cancel_on_progress=True)
    with pytest.raises(QgsProcessingException, match="RESUME") as caught:
        run("train_consistency", params, feedback=feedback)
    assert str(tmp_path / "model_ck") in str(caught.value)
    assert list((tmp_path / "model_ck").glob("step-*.json")) and not (tmp_path / "model.safetensors").exists()
    done = run("train_consistency", dict(params, RESUME=str(tmp_path / "model_ck")))
    assert done["STEPS"] == 3 and done["VAL_PSNR"] is not None
    from lcmsr.weights import read_info

    info = read_info(done["OUTPUT"])
    assert (info.scale, info.bands, info.config.name) == (4, 3, "tiny")
    # Optional stage 3 on that model file: a new file whose metadata records the alignment.
    params = _train_parameters(tmp_path, "aligned", MODEL=done["OUTPUT"], LPIPS_WEIGHT=0.0)
    params.pop("SCALE")
    aligned = run("train_decoder", params)
    assert aligned["STEPS"] == 2 and aligned["VAL_PSNR"] is not None
    assert read_info(aligned["OUTPUT"]).training["decoder_alignment"]["base_model"] == done["OUTPUT"]
    sr = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": aligned["OUTPUT"], "OUTPUT": str(tmp_path / "sr.tif")}))
    assert raster_facts(sr["OUTPUT"])["valid"]


def test_stage1_pixel_loss_and_lpips_weight_reach_the_backend(provider, tmp_path):
    pytest.importorskip("torch").set_num_threads(1)
    from lcmsr.train import checkpoint as ckpt

    done = run("train_autoencoder", _train_parameters(tmp_path, "l2", CONFIG=0, PIXEL_LOSS=1, LPIPS_WEIGHT=0.0))
    options = ckpt.load_checkpoint(done["CHECKPOINT"]).state["options"]
    assert (options["pixel_loss"], options["lpips"], options["lpips_weight"]) == ("l2", False, 0.0)
    default = run("train_autoencoder", _train_parameters(tmp_path, "l1", CONFIG=0))
    options = ckpt.load_checkpoint(default["CHECKPOINT"]).state["options"]
    assert (options["pixel_loss"], options["lpips_weight"]) == ("l1", 1.0)   # the paper's, unless asked


def test_training_parameters_are_checked_before_the_backend_runs(provider, tmp_path):
    with pytest.raises(QgsProcessingException, match="'x' is not a band number"):
        run("train_autoencoder", _train_parameters(tmp_path, "bad", BANDS="1,x"))
    with pytest.raises(QgsProcessingException, match="must end in .safetensors"):
        run("train_autoencoder", _train_parameters(tmp_path, "bad", OUTPUT=str(tmp_path / "m.pt")))
    assert not (tmp_path / "bad_ck").exists() or not list((tmp_path / "bad_ck").iterdir())


def test_training_parameters_show_the_backend_defaults_of_their_stage(provider):
    """The training algorithms' parameters read lcmsr.train_options: same defaults, minima and choices
    per stage as the CLI and the backend (stage 2's batch is the paper's 16, stage 3's LPIPS weight 0.1)."""
    from lcmsr.choices import PIXEL_LOSSES
    from lcmsr.train_options import option, option_default

    fields = {"ITERATIONS": "iterations", "PATCH": "patch", "BATCH": "batch", "SEED": "seed",
              "LPIPS_WEIGHT": "lpips_weight"}
    for name, stage in (("train_autoencoder", "autoencoder"), ("train_consistency", "consistency"),
                        ("train_decoder", "decoder")):
        algorithm = provider.algorithm(name)
        for parameter, field in fields.items():
            definition = algorithm.parameterDefinition(parameter)
            if stage not in option(field).metadata["stages"]:
                assert definition is None, (name, parameter)
                continue
            assert definition.defaultValue() == option_default(field, stage), (name, parameter)
            assert definition.minimum() == option(field).metadata["minimum"], (name, parameter)
    assert provider.algorithm("train_consistency").parameterDefinition("BATCH").defaultValue() == 16
    assert provider.algorithm("train_decoder").parameterDefinition("LPIPS_WEIGHT").defaultValue() == 0.1
    pixel = provider.algorithm("train_autoencoder").parameterDefinition("PIXEL_LOSS")
    assert len(pixel.options()) == len(PIXEL_LOSSES)
    assert PIXEL_LOSSES[pixel.defaultValue()] == option_default("pixel_loss", "autoencoder") == "l1"


def test_every_algorithm_dialog_builds_a_widget_for_each_parameter(provider, qgis_iface, monkeypatch):
    import processing

    # pytest-qgis's stand-in iface lacks browserModel(), which the Processing dialog asks for.
    monkeypatch.setattr(type(qgis_iface), "browserModel", lambda self: None, raising=False)
    for name in ALGORITHMS:
        dialog = processing.createAlgorithmDialog(f"lcmsr:{name}", {})
        try:
            wrapped = set(dialog.mainWidget().wrappers)
            expected = {p.name() for p in dialog.algorithm().parameterDefinitions()}
            assert expected <= wrapped, (name, expected - wrapped)
        finally:
            dialog.deleteLater()
            del dialog
    QgsApplication.processEvents()


def test_sampler_choice_reaches_the_backend(provider, tmp_path):
    """CondNet regression and the DDIM baseline run through the same algorithm; consistency
    sampling refuses more than 4 steps with a message, leaving no file."""
    import numpy as np
    import torch
    from osgeo import gdal

    from lcmsr.config import tiny_config
    from lcmsr.model import build_model
    from lcmsr.weights import save_model

    torch.manual_seed(1)
    model = build_model(tiny_config(scale=4, bands=3), with_encoder=False)
    with torch.no_grad():  # an untrained model is bicubic whatever the sampler: give its zero layers weights
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    tiny_model = str(tmp_path / "random.safetensors")
    save_model(tiny_model, model)

    src = make_raster(tmp_path / "in.tif")
    outputs = {}
    for sampler, steps in ((0, 1), (1, 1), (2, 3)):
        out = tmp_path / f"s{sampler}.tif"
        run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "SAMPLER": sampler, "STEPS": steps,
                                  "OUTPUT_TYPE": 1, "OUTPUT": str(out)}))
        ds = gdal.Open(str(out))
        outputs[sampler] = ds.ReadAsArray()
        ds = None
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    with pytest.raises(QgsProcessingException, match="1 to 4 steps"):
        run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "SAMPLER": 0, "STEPS": 9,
                                  "OUTPUT": str(tmp_path / "x.tif")}))
    assert not (tmp_path / "x.tif").exists()
    # Left at its default, the sampler is the one the model file names (here faithful), whatever STEPS says.
    from lcmsr.raster.io import PROVENANCE_PREFIX
    from lcmsr.weights import read_info

    info = read_info(tiny_model)
    info.default_sampler = {"sampler": "faithful", "steps": 1, "rule": "test", "why": "set by the test"}
    named = str(tmp_path / "named.safetensors")
    save_model(named, model, info)
    feedback = RecordingFeedback()
    run("superresolve", fast({"INPUT": src, "MODEL": named, "STEPS": 9, "OUTPUT_TYPE": 1,
                              "OUTPUT": str(tmp_path / "d.tif")}), feedback=feedback)
    ds = gdal.Open(str(tmp_path / "d.tif"))
    assert ds.GetMetadata()[f"{PROVENANCE_PREFIX}SAMPLER"] == "faithful"
    assert np.array_equal(ds.ReadAsArray(), outputs[1])
    ds = None
    assert any("the model's default" in line for line in feedback.infos), feedback.infos


def test_empty_model_chooses_by_domain_and_the_guard_can_be_overridden(provider, tmp_path):
    """No MODEL and no default: the bundled aerial model is chosen for 0.4 m RGB and the log says
    why; a 40 m raster given the aerial model stops with the pixel-size line unless overridden."""
    from osgeo import gdal

    from lcmsr_qgis.settings import bundled_model_paths

    aerial = next(p for p in bundled_model_paths() if "rgb" in os.path.basename(p))
    fine = make_raster(tmp_path / "fine.tif", width=32, height=32, pixel=0.4)
    ds = gdal.Open(fine, gdal.GA_Update)
    for b, ci in zip((1, 2, 3), (gdal.GCI_RedBand, gdal.GCI_GreenBand, gdal.GCI_BlueBand)):
        ds.GetRasterBand(b).SetColorInterpretation(ci)
    ds = None
    feedback = RecordingFeedback()
    run("superresolve", fast({"INPUT": fine, "OUTPUT": str(tmp_path / "auto.tif")}), feedback=feedback)
    log = "\n".join(feedback.infos)
    assert f"chose {os.path.basename(aerial)} (aerial)" in log and "within its 0.2-0.8 m" in log, log
    coarse = make_raster(tmp_path / "coarse.tif", width=32, height=32, pixel=40.0)
    with pytest.raises(QgsProcessingException, match=r"input pixel 40 m, model made for 0\.2-0\.8 m"):
        run("superresolve", fast({"INPUT": coarse, "MODEL": aerial, "OUTPUT": str(tmp_path / "no.tif")}))
    assert not (tmp_path / "no.tif").exists()
    feedback = RecordingFeedback()
    run("superresolve", fast({"INPUT": coarse, "MODEL": aerial, "BANDS": [1, 2, 3], "IGNORE_DOMAIN": True,
                              "OUTPUT": str(tmp_path / "yes.tif")}), feedback=feedback)
    assert (tmp_path / "yes.tif").exists()
    assert any("overridden" in w for w in feedback.warnings), feedback.warnings


def test_the_plugin_repeats_no_backend_choice():
    """Scales, precisions, devices, output types, model sizes and samplers are read from lcmsr.choices
    (torch-free, shipped in the plugin zip): no list in the plugin's source restates two of them."""
    import ast

    from lcmsr import choices

    sets = {name: set(getattr(choices, name)) for name in
            ("SCALES", "PRECISIONS", "TRAIN_PRECISIONS", "OUTPUT_TYPES", "DEVICES", "CONFIG_NAMES", "SAMPLER_NAMES")}
    copies = []
    for path in plugin_sources(REPO / "lcmsr_qgis"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and all(isinstance(e, ast.Constant) for e in node.elts):
                values = {e.value for e in node.elts}
                copies += [f"{path.name}:{node.lineno} repeats {name}" for name, ref in sets.items()
                           if len(values & ref) >= 2]
    assert not copies, copies


def test_superresolve_creation_options_cog_and_overviews_reach_the_file(provider, tiny_model, tmp_path):
    from osgeo import gdal

    result = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OVERVIEWS": True,
                                       "CREATION_OPTIONS": "COMPRESS=LZW|BLOCKXSIZE=128|BLOCKYSIZE=128",
                                       "OUTPUT": str(tmp_path / "lzw.tif")}))
    ds = gdal.Open(result["OUTPUT"])
    assert ds.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "LZW"
    assert ds.GetRasterBand(1).GetBlockSize() == [128, 128] and ds.GetRasterBand(1).GetOverviewCount() == 1
    ds = None
    result = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "COG": True,
                                       "OUTPUT": str(tmp_path / "cog.tif")}))
    ds = gdal.Open(result["OUTPUT"])
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.GetRasterBand(1).GetOverviewCount() >= 1
    ds = None
    result = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "OUTPUT": str(tmp_path / "sr.img")}))
    ds = gdal.Open(result["OUTPUT"])
    assert ds.GetDriver().ShortName == "HFA" and ds.GetMetadataItem("LCMSR_MODEL") == "tiny_x4.safetensors"
    ds = None
    with pytest.raises(QgsProcessingException, match=r"creation option NOPE is not one the GTiff driver knows"):
        run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "CREATION_OPTIONS": "NOPE=1",
                                  "OUTPUT": str(tmp_path / "no.tif")}))
    assert not (tmp_path / "no.tif").exists()


def test_the_file_chooser_offers_the_formats_the_backend_writes(provider):
    algorithm = QgsApplication.processingRegistry().algorithmById("lcmsr:superresolve")
    output = algorithm.parameterDefinition("OUTPUT")
    extensions = output.supportedOutputRasterLayerExtensions()
    assert extensions[0] == "tif" and {"img", "gpkg", "png", "jpg"} <= set(extensions)
    assert "vrt" not in extensions   # a VRT would point at the removed temporary file
    assert "*.img" in output.createFileFilter() and output.defaultFileExtension() == "tif"


def test_bands_as_text_and_errors_in_the_dialogs_words(provider, tiny_model, tmp_path):
    from osgeo import gdal

    result = run("superresolve", fast({"INPUT": str(SAMPLE_LR), "MODEL": tiny_model, "BANDS": "3,2,1",
                                       "OUTPUT": str(tmp_path / "bgr.tif")}))
    ds = gdal.Open(result["OUTPUT"])
    assert ds.GetMetadataItem("LCMSR_INPUT_BANDS") == "3,2,1"
    assert [ds.GetRasterBand(b).GetColorInterpretation() for b in (1, 2, 3)] == \
        [gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand]
    ds = None
    five = make_raster(tmp_path / "five.tif", bands=5)   # five bands of unknown kinds for a 3-band model
    with pytest.raises(QgsProcessingException) as err:
        run("superresolve", fast({"INPUT": five, "MODEL": tiny_model, "OUTPUT": str(tmp_path / "x.tif")}))
    message = str(err.value)
    assert "choose 3 with 'Bands'" in message and "'Bands' = 1,2,3" in message and "--" not in message
    with pytest.raises(QgsProcessingException, match=r"BANDS: 'red' is not a band number"):
        run("superresolve", fast({"INPUT": five, "MODEL": tiny_model, "BANDS": "red", "OUTPUT": str(tmp_path / "x.tif")}))


def test_every_algorithm_reads_bands_the_same_way_from_a_list_or_qgis_process_text():
    """qgis_process hands BANDS over as text ('3,2,1'), which QGIS 3.22's parameterAsInts reads as [0]:
    superresolve, evaluate and the training algorithms all go through one parser instead."""
    from lcmsr_qgis.algorithms.base import parse_bands

    assert parse_bands("3,2,1") == parse_bands("3 2 1") == parse_bands([3, 2, 1]) == parse_bands(["3", "2", "1"]) \
        == [3, 2, 1]
    assert parse_bands("") is None and parse_bands(None) is None and parse_bands([]) is None
    assert parse_bands(2) == [2]
    for bad, word in (("3,x", "'x' is not a band number"), ("0,1", "band 0 does not exist")):
        with pytest.raises(QgsProcessingException, match=word):
            parse_bands(bad, "BANDS")


def test_files_named_after_the_output_nodata_per_band_and_the_grid_hold_in_qgis(provider, tiny_model, tmp_path):
    """Issue 25 through Processing: a format that writes files named after OUT is neither offered nor
    accepted (the input stays whole), bands with different nodata are refused into a GeoTIFF, evaluation
    refuses a reference elsewhere and a report whose picture would replace an input."""
    from osgeo import gdal

    algorithm = QgsApplication.processingRegistry().algorithmById("lcmsr:superresolve")
    assert not {"ers", "bil", "rst", "mpr"} & set(algorithm.parameterDefinition("OUTPUT")
                                                   .supportedOutputRasterLayerExtensions())
    src = make_raster(tmp_path / "in.tif")
    nd = tmp_path / "bands.img"
    gdal.Translate(str(nd), src, format="HFA")
    ds = gdal.Open(str(nd), gdal.GA_Update)
    for b, value in enumerate((0, 255, 7)):
        ds.GetRasterBand(b + 1).SetNoDataValue(value)
    ds = None
    far = make_raster(tmp_path / "far.tif", width=48, height=40, origin=(550000.0, 4600000.0), pixel=1.0)
    sr = make_raster(tmp_path / "sr.tif", width=48, height=40, pixel=1.0)
    picture = tmp_path / "rep_crop_reference.png"   # the name the report rep.html gives its reference crop
    gdal.Translate(str(picture), make_raster(tmp_path / "ref.tif", width=48, height=40, pixel=1.0), format="PNG")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(QgsProcessingException, match="ERS format"):
        run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "OUTPUT": src + ".ers", "IGNORE_DOMAIN": True}))
    with pytest.raises(QgsProcessingException, match="different nodata values"):
        run("superresolve", fast({"INPUT": str(nd), "MODEL": tiny_model, "OUTPUT": str(tmp_path / "o.tif"),
                                  "IGNORE_DOMAIN": True}))
    with pytest.raises(QgsProcessingException, match="do not overlap"):
        run("evaluate", {"REFERENCE": far, "SR": sr, "SCALE": 4, "DEVICE": 2, "LPIPS": False,
                         "OUTPUT_HTML": str(tmp_path / "r.html")})
    with pytest.raises(QgsProcessingException, match="destroy that input"):
        run("evaluate", {"REFERENCE": str(picture), "SR": sr, "SCALE": 4, "DEVICE": 2, "LPIPS": False,
                         "OUTPUT_HTML": str(tmp_path / "rep.html")})
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_band_roles_reach_the_backend_in_the_dialogs_words(provider, tiny_model, tmp_path):
    """BAND_ROLES is read by the backend: a word that is no role and a count that does not match the raster each
    stop with one line, the second naming the parameter by its label; nothing is written."""
    src = make_raster(tmp_path / "in.tif")
    with pytest.raises(QgsProcessingException, match="'infrared' is not one of"):
        run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "BAND_ROLES": "red,green,infrared",
                                  "OUTPUT": str(tmp_path / "a.tif")}))
    with pytest.raises(QgsProcessingException, match=r"'Band roles in band order.*' names 2 role\(s\) but in.tif has 3"):
        run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "BAND_ROLES": "red green",
                                  "OUTPUT": str(tmp_path / "b.tif")}))
    assert not list(tmp_path.glob("[ab].tif"))
    run("superresolve", fast({"INPUT": src, "MODEL": tiny_model, "BAND_ROLES": "red,green,blue",
                              "OUTPUT": str(tmp_path / "c.tif")}))
    assert (tmp_path / "c.tif").exists()
