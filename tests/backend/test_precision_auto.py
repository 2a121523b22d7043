"""The "auto" precision (the default): chosen per device by lcmsr.runtime.resolve_precision; on a CPU with
native bf16 its output stays within bf16 rounding of fp32's on real pixels with the shipped models, and on
any other CPU it is fp32's output exactly."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lcmsr import runtime as device_mod
from lcmsr.choices import SR_DEFAULTS
from lcmsr.runtime import cpu_native_bf16, resolve_precision

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "sample"
MODELS = REPO / "resources" / "models"

# Tolerance of the auto default against plain fp32 on the NEON sample, output in grey levels of 255:
# PSNR(auto, fp32) >= 55 dB (RMS difference <= 0.45 grey level; measured 66.5 dB RGB, 68.4 dB satellite),
# and the PSNR against the HR reference moves by at most 0.01 dB (measured < 1e-4 dB).
MIN_PSNR_VS_FP32 = 55.0
MAX_HR_PSNR_CHANGE = 0.01


def test_auto_is_the_default_and_is_decided_by_the_device(monkeypatch):
    assert SR_DEFAULTS["precision"] == "auto"
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(device_mod, "cpu_native_bf16", lambda: (True, "the CPU has native bf16 (amx_bf16)"))
    assert resolve_precision("auto", cpu) == ("bf16", "auto: the CPU has native bf16 (amx_bf16), bf16 runs "
                                                      "about 2x fp32")
    monkeypatch.setattr(device_mod, "cpu_native_bf16", lambda: (False, "the CPU has no native bf16"))
    precision, why = resolve_precision("auto", cpu)
    assert precision == "fp32" and "no native bf16" in why
    precision, why = resolve_precision("bf16", cpu)
    assert precision == "fp32" and why.startswith("bf16 requested but the CPU has no native bf16")
    # Explicit choices are kept; auto on CUDA is bf16 (measured on an H200: docs/PERFORMANCE.md).
    assert resolve_precision("fp32", cpu)[0] == "fp32"
    assert resolve_precision("auto", cuda)[0] == "bf16" and resolve_precision("bf16", cuda)[0] == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", cpu)


def _psnr(a, b):
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("model, bands", [("lcmsr_x4_rgb_small", None), ("lcmsr_x4_satellite_bandwise", [2])])
def test_auto_default_stays_within_bf16_rounding_of_fp32_on_real_pixels(tmp_path, model, bands):
    native, _ = cpu_native_bf16()
    gdal = pytest.importorskip("osgeo.gdal")
    from lcmsr.raster.pipeline import SROptions, superresolve

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for precision in ("fp32", "auto"):
            # ignore_domain: the satellite model is made for 10-120 m pixels; the sample is 0.4 m (speed and
            # rounding do not depend on the domain).  Float32 output: rounding to bytes would hide differences.
            res = superresolve(SAMPLE / "neon_lr.tif", tmp_path / f"{precision}.tif", MODELS / f"{model}.safetensors",
                               SROptions(precision=precision, bands=bands, ignore_domain=True, output_type="float32",
                                         device="cpu"))
            out[precision] = res.precision, gdal.Open(res.path).ReadAsArray().astype(np.float64)
    finally:
        torch.set_num_threads(n)
    (ran_auto, auto), (_, fp32) = out["auto"], out["fp32"]
    if not native:
        # Elsewhere auto must be exactly fp32: bf16 would be emulated there, slower and no better.
        assert ran_auto == "fp32" and np.array_equal(auto, fp32), "auto did not run fp32 without native bf16"
        return
    assert ran_auto == "bf16", "auto must run bf16 on a CPU with native bf16"
    hr = gdal.Open(str(SAMPLE / "neon_hr.tif")).ReadAsArray().astype(np.float64)
    if bands:
        hr = hr[[b - 1 for b in bands]]
    auto, fp32 = auto.reshape(hr.shape), fp32.reshape(hr.shape)
    assert np.abs(auto - fp32).max() > 0, "auto gave fp32's exact output: bf16 did not run"
    assert _psnr(auto, fp32) >= MIN_PSNR_VS_FP32
    assert abs(_psnr(auto, hr) - _psnr(fp32, hr)) <= MAX_HR_PSNR_CHANGE


def test_channels_last_is_the_default_layout_on_the_cpu_only():
    """Measured: NHWC is 1.3x on oneDNN, 4-7 % slower on cuDNN (H200); an explicit choice still wins."""
    from lcmsr.inference import Inference, InferenceOptions

    assert Inference(object(), "cpu").channels_last is True
    assert Inference(object(), "cuda").channels_last is False     # nothing runs: the layout is only decided
    assert Inference(object(), "cuda", InferenceOptions(channels_last=True)).channels_last is True
