"""qgis_process runs the LCMSR algorithms headless, with the same parameters as the GUI and processing.run."""
import pytest

from conftest import REPO, qgis_process_json, run_qgis_process

pytestmark = pytest.mark.qgis_process

SAMPLE_LR = REPO / "resources" / "sample" / "neon_lr.tif"
SAMPLE_HR = REPO / "resources" / "sample" / "neon_hr.tif"


def raster_size(path):
    from osgeo import gdal

    ds = gdal.Open(str(path))
    try:
        return ds.RasterXSize, ds.RasterYSize, ds.RasterCount, ds.GetGeoTransform()
    finally:
        ds = None


def test_every_algorithm_is_listed_and_documented():
    listing = run_qgis_process(["list"]).stdout
    for name in ("superresolve", "superresolve_many", "degrade", "evaluate", "train_autoencoder", "train_consistency",
                 "train_decoder", "finetune"):
        assert f"lcmsr:{name}" in listing
    help_text = run_qgis_process(["help", "lcmsr:superresolve"]).stdout
    for key in ("INPUT", "MODEL", "DEVICE", "TILE", "OVERLAP", "STEPS", "OUTPUT"):
        assert key in help_text


def test_superresolve_runs_and_json_reports_the_output(tiny_model, tmp_path):
    out = tmp_path / "sr.tif"
    proc = run_qgis_process(["run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE_LR}", f"MODEL={tiny_model}",
                             "TILE=64", "OVERLAP=8", "DEVICE=2", f"OUTPUT={out}"])
    # The default precision is "auto": the log names what ran and why.
    import torch

    from lcmsr.runtime import resolve_precision

    precision, why = resolve_precision("auto", torch.device("cpu"))
    assert f"precision {precision} ({why})" in proc.stdout + proc.stderr
    width, height, bands, gt = raster_size(out)
    lr_width, lr_height, _, lr_gt = raster_size(SAMPLE_LR)
    assert (width, height, bands) == (4 * lr_width, 4 * lr_height, 3)
    assert gt[0] == lr_gt[0] and gt[3] == lr_gt[3] and gt[1] == pytest.approx(lr_gt[1] / 4)
    out_json = tmp_path / "sr_json.tif"
    doc = qgis_process_json(["run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE_LR}", f"MODEL={tiny_model}",
                             "TILE=64", "OVERLAP=8", "DEVICE=2", f"OUTPUT={out_json}"])
    assert doc["algorithm_details"]["id"] == "lcmsr:superresolve"
    assert doc["results"]["OUTPUT"] == str(out_json) and out_json.exists()


def test_superresolve_many_runs_a_folder_and_json_reports_the_mosaic(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(SAMPLE_LR, folder / name)
    out = tmp_path / "out"
    doc = qgis_process_json(["run", "lcmsr:superresolve_many", "--", f"FOLDER={folder}", f"MODEL={tiny_model}",
                             "TILE=64", "OVERLAP=8", "DEVICE=2", "EXECUTOR=0", f"OUTPUT_FOLDER={out}"])
    results = doc["results"]
    assert (results["DONE"], results["FAILED"]) == (2, 0)
    assert results["MOSAIC"] == str(out / "mosaic.vrt") and results["LOG"] == str(out / "lcmsr-batch.jsonl")
    assert raster_size(out / "a_sr.tif")[:3] == (512, 512, 3) and raster_size(out / "mosaic.vrt")[:2] == (512, 512)


def test_evaluate_reports_numbers_as_json(tiny_model, tmp_path):
    doc = qgis_process_json(["run", "lcmsr:evaluate", "--", f"REFERENCE={SAMPLE_HR}", f"MODEL={tiny_model}",
                             "LPIPS=false", "DEVICE=2", f"OUTPUT_HTML={tmp_path / 'report.html'}"])
    results = doc["results"]
    assert 5.0 < results["PSNR"] < 60.0 and -1.0 < results["SSIM"] <= 1.0
    # The untrained tiny model's decoder is bicubic upsampling, corrected by the default LR-consistency:
    # its SR raster is the bicubic upsampling of the same LR, back-projected (computed here by hand).
    import numpy as np
    import torch
    from osgeo import gdal

    from lcmsr.choices import SR_DEFAULTS
    from lcmsr.ops import downsample_bicubic, upsample_bicubic

    from lcmsr.metrics.evaluate import evaluate_arrays
    from lcmsr.raster.degrade import degrade

    assert results["BICUBIC_PSNR"] is not None
    degrade(str(SAMPLE_HR), str(tmp_path / "lr.tif"), 4)   # as the algorithm does (its own work folder is gone)
    lr = torch.from_numpy(gdal.Open(str(tmp_path / "lr.tif")).ReadAsArray().astype(np.float64))[None]
    y = upsample_bicubic(lr, 4)
    for _ in range(SR_DEFAULTS["lr_consistency"]):
        y = y + upsample_bicubic(lr - downsample_bicubic(y, 4), 4)
    lo, hi = lr.amin(dim=(2, 3), keepdim=True), lr.amax(dim=(2, 3), keepdim=True)   # the input's value range
    by_hand = torch.minimum(torch.maximum(y, lo), hi).round()[0].numpy()
    hr = gdal.Open(str(SAMPLE_HR)).ReadAsArray().astype(np.float64)
    assert results["PSNR"] == pytest.approx(evaluate_arrays(by_hand, hr, 4, 255.0, lpips=False)["psnr"], abs=0.01)
    assert "<th>bicubic</th>" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_a_bad_model_fails_with_its_name(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    proc = run_qgis_process(["run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE_LR}", f"MODEL={broken}",
                             f"OUTPUT={tmp_path / 'x.tif'}"], check=False)
    assert proc.returncode != 0
    assert "broken.safetensors" in proc.stdout + proc.stderr
    assert not (tmp_path / "x.tif").exists()


def test_bands_as_text_on_the_command_line(tiny_model, tmp_path):
    """qgis_process hands BANDS=3,2,1 over as text (QGIS 3.22's parameterAsInts made it [0])."""
    from osgeo import gdal

    out = tmp_path / "bgr.tif"
    run_qgis_process(["run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE_LR}", f"MODEL={tiny_model}", "BANDS=3,2,1",
                      "TILE=64", "OVERLAP=8", "DEVICE=2", f"OUTPUT={out}"])
    ds = gdal.Open(str(out))
    assert ds.GetMetadataItem("LCMSR_INPUT_BANDS") == "3,2,1"
    assert [ds.GetRasterBand(b).GetColorInterpretation() for b in (1, 2, 3)] == \
        [gdal.GCI_BlueBand, gdal.GCI_GreenBand, gdal.GCI_RedBand]
    lr = gdal.Open(str(SAMPLE_LR))
    # Band 1 of the output is the input's blue band super-resolved: its mean is blue's, not red's.
    means = [lr.GetRasterBand(b).ReadAsArray().mean() for b in (1, 2, 3)]
    got = ds.GetRasterBand(1).ReadAsArray().mean()
    assert abs(got - means[2]) < abs(got - means[0]), (got, means)
    ds = lr = None
    proc = run_qgis_process(["run", "lcmsr:superresolve", "--", f"INPUT={SAMPLE_LR}", f"MODEL={tiny_model}",
                             f"OUTPUT={tmp_path / 'sr.nope'}"], check=False)
    assert proc.returncode != 0 and "'.nope'" in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
