"""Model files: one .safetensors with the inference weights and a JSON description.

Tensors: ``decoder.*``, ``condnet.*``, ``denoiser.*`` (the EMA weights) and
``latent_scale``; metadata key ``lcmsr`` = JSON of :class:`~lcmsr.model.ModelInfo`.
Nothing here unpickles: a model file is data, never code.  Every problem raises
:class:`ModelFileError` with one sentence naming the file and what is wrong.

Integrity: metadata key ``lcmsr_sha256`` holds a SHA-256 over the ``lcmsr`` JSON and
every tensor (name, dtype, shape, bytes), so a bit flipped by a disk, a download or a
copy is refused instead of silently changing the weights.  Files written before the
checksum existed (no such key) still load.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from .atomic import AtomicPath
from .model import FORMAT_VERSION, LCMSR, ModelInfo

SUPPORTED_FORMAT_VERSIONS = (1, FORMAT_VERSION)  # 1: written before the domain existed (domain unknown)
METADATA_KEY = "lcmsr"
DIGEST_KEY = "lcmsr_sha256"
# Metadata a file without the checksum may carry ("format" is the safetensors convention); any other
# key there is most likely the checksum's own key damaged, so the file is refused rather than trusted.
_LEGACY_METADATA_KEYS = {METADATA_KEY, "format"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
SAVED_PREFIXES = ("decoder.", "condnet.", "denoiser.")
_SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


class ModelFileError(ValueError):
    """A model file is missing, unreadable, not a model or inconsistent; the message says which and why."""


STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def _inference_state(model: LCMSR, storage: str = "fp32") -> dict[str, torch.Tensor]:
    dtype = STORAGE_DTYPES[storage]
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(SAVED_PREFIXES) or name == "latent_scale":
            # latent_scale stays fp32 (one number); fp16 weights halve the file (the plugin zip's 25 MB limit)
            keep = torch.float32 if name == "latent_scale" or not tensor.is_floating_point() else dtype
            # contiguous + cloned: safetensors refuses shared or strided storage
            state[name] = tensor.detach().to("cpu", keep).contiguous().clone()
            if keep is not tensor.dtype and state[name].is_floating_point() and not bool(state[name].isfinite().all()):
                raise ValueError(f"tensor '{name}' has values beyond the {storage} range: store it as fp32")
    return state


def content_digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the model description and every tensor, independent of the file layout."""
    h = hashlib.sha256(meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(path, model: LCMSR, info: ModelInfo | None = None, storage: str = "fp32") -> Path:
    """Write the inference model atomically (temp file in the same folder, then ``os.replace``).

    ``storage="fp16"`` stores the weights as float16 (half the size; they load as float32)."""
    from safetensors.torch import save_file

    path = Path(path)
    info = info if info is not None else model.info
    if info.config.to_dict() != model.config.to_dict():
        raise ValueError(f"cannot save {path}: the model info's config differs from the model's config")
    info.validate()
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_DTYPES)}, got {storage!r}")
    meta = dict(info.to_dict(), format_version=FORMAT_VERSION)
    tensors = _inference_state(model, storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_json = json.dumps(meta)
    with AtomicPath(path, fsync=True) as tmp:
        save_file(tensors, tmp, metadata={METADATA_KEY: meta_json, DIGEST_KEY: content_digest(meta_json, tensors)})
    return path


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse and sanity-check the safetensors header ourselves, so every failure gets a clear sentence."""
    if not path.exists():
        raise ModelFileError(f"model file {path} was not found")
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a folder, not a .safetensors file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            f.seek(8)
            # A safetensors header is JSON right after the 8-byte length; only when that is absent do the
            # pickle/zip magic bytes mean anything (the length's low byte may itself be 0x80).
            looks_safetensors = len(head) == 9 and head[8:9] == b"{"
            head = head[:8]
            if not looks_safetensors and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):
                raise ModelFileError(f"model file {path} is a PyTorch pickle/zip checkpoint; pickles are refused "
                                     "because loading one can run arbitrary code — convert it to .safetensors")
            if len(head) < 8:
                raise ModelFileError(f"model file {path} is not a safetensors file: it is only {size} bytes long")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise ModelFileError(f"model file {path} is not a safetensors file: its header length "
                                     f"({n} bytes) is too large")
            if 8 + n > size:
                raise ModelFileError(f"model file {path} is truncated or not a safetensors file: the header "
                                     f"needs {n} bytes but the file has {size - 8}")
            raw = f.read(n)
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        raise ModelFileError(f"model file {path} is not a safetensors file: its header is garbled") from None
    data_len = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            ok = entry["dtype"] in _SAFETENSORS_DTYPES and 0 <= start <= end and isinstance(entry["shape"], list) \
                and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFileError(f"model file {path} is not a valid safetensors file: the entry of tensor "
                                 f"'{name}' is garbled")
        if end > data_len:
            raise ModelFileError(f"model file {path} is truncated: tensor '{name}' ends at byte {end} of the "
                                 f"data but only {data_len} bytes are present")
    return header, data_len


def _info_from_header(path: Path, header: dict) -> ModelInfo:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"model file {path} is not a valid safetensors file: its metadata is not a "
                             "table of strings")
    if METADATA_KEY not in meta:
        raise ModelFileError(f"model file {path} is a safetensors file but not an LCMSR model: it has no "
                             f"'{METADATA_KEY}' metadata")
    if DIGEST_KEY not in meta:
        unknown = sorted(set(meta) - _LEGACY_METADATA_KEYS)
        if unknown:
            raise ModelFileError(f"model file {path} is damaged: it has the unknown metadata key "
                                 f"'{unknown[0]}' and no '{DIGEST_KEY}' checksum")
    try:
        data = json.loads(meta[METADATA_KEY])
    except (ValueError, RecursionError):
        raise ModelFileError(f"model file {path} has garbled '{METADATA_KEY}' metadata (not JSON)") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"model file {path} has garbled '{METADATA_KEY}' metadata (not a JSON object)")
    version = data.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        supported = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
        raise ModelFileError(f"model file {path} has format version {version!r}, but this lcmsr "
                             f"supports format version {supported}")
    try:
        return ModelInfo.from_dict(data)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        raise ModelFileError(f"model file {path} has an invalid model description: {exc}") from None


def read_info(path) -> ModelInfo:
    """The model's description from the header only (fast: no tensor is read)."""
    path = Path(path)
    header, _ = _read_header(path)
    return _info_from_header(path, header)


def check_model(path) -> ModelInfo:
    """Everything :func:`load_model` checks (tensors, shapes, values, checksum), for dialogs that
    accept a model file: a file that passes here also loads for a run."""
    return load_model(path, device="cpu").info


def load_model(path, device="cpu") -> LCMSR:
    """Build the inference model (no encoder) from a model file, validate every tensor, eval mode."""
    from safetensors import safe_open

    path = Path(path)
    header, _ = _read_header(path)
    info = _info_from_header(path, header)
    model = LCMSR(info.config, info=info, with_encoder=False)
    expected = _inference_state(model)
    missing = [name for name in expected if name not in header]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(f"model file {path} is missing tensor '{missing[0]}'{more}")
    unexpected = [name for name in header if name != "__metadata__" and name not in expected]
    if unexpected:
        raise ModelFileError(f"model file {path} has unexpected tensor '{unexpected[0]}' that its config "
                             "does not describe")
    for name, tensor in expected.items():
        found = tuple(header[name]["shape"])
        if found != tuple(tensor.shape):
            raise ModelFileError(f"model file {path} has tensor '{name}' of shape {list(found)}, expected "
                                 f"{list(tensor.shape)}")
    state, stored = {}, {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in expected:
                t = f.get_tensor(name)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise ModelFileError(f"model file {path} has non-finite values (NaN or inf) in "
                                         f"tensor '{name}'")
                stored[name] = t
                state[name] = t.float()
    except ModelFileError:
        raise
    except Exception as exc:  # safetensors' own errors (SafetensorError) for anything we did not catch
        raise ModelFileError(f"model file {path} cannot be read as safetensors: {exc}") from None
    digest = header["__metadata__"].get(DIGEST_KEY)
    if digest is not None and digest != content_digest(header["__metadata__"][METADATA_KEY], stored):
        raise ModelFileError(f"model file {path} is damaged: its contents do not match the checksum written "
                             "with it (a corrupted copy or download?)")
    model.load_state_dict(state, strict=True)
    model.source_path = str(path.resolve())   # the output's provenance names the file the weights came from
    return model.to(device).eval()
