"""Model files: one .safetensors with the inference weights and a JSON description.

Tensors: ``decoder.*``, ``condnet.*``, ``denoiser.*`` (the EMA weights) and
``latent_scale``; metadata key ``lcmsr`` = JSON of :class:`~lcmsr.model.ModelInfo`.
Nothing here unpickles: a model file is data, never code.  Every problem raises
:class:`ModelFileError` with one sentence naming the file and what is wrong.

Integrity: metadata key ``lcmsr_sha256`` holds a SHA-256 over the ``lcmsr`` JSON and
every tensor (name, dtype, shape, bytes), so a bit flipped by a disk, a download or a
copy is refused instead of silently changing the weights.  Files written before the
checksum existed (no such key) still load.

A model file is untrusted input, and a valid checksum proves nothing about its values, so one
validator (:func:`_validate`) stands before every use -- :func:`read_info`, :func:`check_model`,
:func:`load_model`, ``lcmsr info`` and the plugin's add-model check -- and nothing is allocated
before it has passed:

1. the safetensors header: every entry's dtype, shape and byte range, the ranges tiling the data;
2. the description: every config value's type and bounds (:mod:`lcmsr.config`), the normalisation
   sane for the data type (:meth:`Normalization.check_range`), every string cleaned of control
   characters (:mod:`lcmsr.text`);
3. the tensors the config implies, built on the ``meta`` device (no memory): the parameter bytes
   against :data:`MAX_MODEL_BYTES` and the file's data, then every name, shape and dtype;
4. ``latent_scale`` finite and in [:data:`MIN_LATENT_SCALE`, :data:`MAX_LATENT_SCALE`];
5. (check_model, load_model) every weight finite and within :data:`MAX_ABS_WEIGHT`; the checksum.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import torch

from .paths import NotARegularFile, check_regular
from .atomic import AtomicPath
from .model import FORMAT_VERSION, LCMSR, ModelInfo
from .text import clean, safe_text

SUPPORTED_FORMAT_VERSIONS = (1, FORMAT_VERSION)  # 1: written before the domain existed (domain unknown)
METADATA_KEY = "lcmsr"
DIGEST_KEY = "lcmsr_sha256"
# Metadata a file without the checksum may carry ("format" is the safetensors convention); any other
# key there is most likely the checksum's own key damaged, so the file is refused rather than trusted.
_LEGACY_METADATA_KEYS = {METADATA_KEY, "format"}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
SAVED_PREFIXES = ("decoder.", "condnet.", "denoiser.")
_SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                       "BOOL": 1}   # name -> bytes per value
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Sane limits of a model's values.  The shipped models: 5 M parameters (20 MB as float32), latent_scale
# 0.75 and 1.08, no weight beyond 1.3 in magnitude; the paper config: 31 M parameters (124 MB).
MAX_MODEL_BYTES = 2 * 1024 ** 3          # float32 bytes of the loaded network
MIN_LATENT_SCALE, MAX_LATENT_SCALE = 1e-4, 1e4   # 1/std of the stage-1 latent
MAX_ABS_WEIGHT = 1e4                     # beyond this a float32 forward pass overflows within a few layers


class ModelFileError(ValueError):
    """A model file is missing, unreadable, not a model or inconsistent; the message says which and why.

    The message is cleaned of control characters (it may quote the file's own text, or name a file
    whose name holds escape codes)."""

    def __init__(self, message: str):
        super().__init__(safe_text(message))


STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.float16}
# int8 storage: every weight of at least QUANT_MIN_VALUES values (convolutions, linear layers) as int8 with one
# float32 scale per output channel in a companion tensor "<name>.qscale" (value = int8 x scale); the rest fp16.
# A quarter of fp32's bytes; measured on the shipped aerial model: outputs within 2 grey levels of fp16's
# (57 dB between them), 0.001 dB against HR (the plugin zip's 25 MB holds three models so).
QSCALE_SUFFIX = ".qscale"
QUANT_MIN_VALUES = 256


def _quantize(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel (dim 0): (int8 values, float32 scale per channel)."""
    flat = t.detach().float().reshape(t.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = (flat / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q.reshape(t.shape).contiguous(), scale.contiguous()


def _dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float().reshape(-1, *([1] * (q.ndim - 1)))


def _quantized(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.ndim >= 2 and t.numel() >= QUANT_MIN_VALUES


def _saved(model: LCMSR) -> dict[str, torch.Tensor]:
    """The tensors a model file holds (a meta-device model gives their names and shapes only)."""
    return {name: t for name, t in model.state_dict().items()
            if name.startswith(SAVED_PREFIXES) or name == "latent_scale"}


def _inference_state(model: LCMSR, storage: str = "fp32") -> dict[str, torch.Tensor]:
    dtype = STORAGE_DTYPES[storage]
    state = {}
    for name, tensor in _saved(model).items():
        if storage == "int8" and name != "latent_scale" and _quantized(tensor):
            state[name], state[name + QSCALE_SUFFIX] = _quantize(tensor)
            continue
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

    ``storage="fp16"`` stores the weights as float16 (half the size; they load as float32); ``"int8"`` the
    larger ones as int8 with a scale per output channel (a quarter; :data:`QSCALE_SUFFIX`)."""
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
    for name, t in _values(tensors).items():   # never write a file the reader refuses
        problem = _value_problem(name, t)
        if problem:
            raise ValueError(f"cannot save {path}: the model has {problem}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_json = json.dumps(meta)
    with AtomicPath(path, fsync=True, umask_mode=True) as tmp:
        save_file(tensors, tmp, metadata={METADATA_KEY: meta_json, DIGEST_KEY: content_digest(meta_json, tensors)})
    return path


def _read_header(path: Path) -> tuple[dict, int]:
    """Parse and sanity-check the safetensors header ourselves, so every failure gets a clear sentence."""
    if not path.exists():
        raise ModelFileError(f"model file {path} was not found")
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a folder, not a .safetensors file")
    try:
        check_regular(path, "model file")   # a FIFO would block the read below for ever
    except NotARegularFile as exc:
        raise ModelFileError(str(exc)) from None
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
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            shape = entry["shape"]
            ok = entry["dtype"] in _SAFETENSORS_DTYPES and isinstance(shape, list) and len(shape) <= 8 \
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2 ** 40 for d in shape) \
                and all(isinstance(o, int) and not isinstance(o, bool) for o in (start, end)) and 0 <= start <= end \
                and end - start == math.prod(shape) * _SAFETENSORS_DTYPES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelFileError(f"model file {path} is not a valid safetensors file: the entry of tensor "
                                 f"'{name}' is garbled")
        if end > data_len:
            raise ModelFileError(f"model file {path} is truncated: tensor '{name}' ends at byte {end} of the "
                                 f"data but only {data_len} bytes are present")
        ranges.append((start, end, name))
    # safetensors' own rule: the tensors' bytes follow each other and fill the data exactly, so the
    # file's size bounds what its tensors hold (no two tensors share bytes).
    covered = 0
    for start, end, name in sorted(ranges):
        if start != covered:
            raise ModelFileError(f"model file {path} is not a valid safetensors file: tensor '{name}' starts "
                                 f"at byte {start} of the data, expected {covered}")
        covered = end
    if covered != data_len:
        raise ModelFileError(f"model file {path} is not a valid safetensors file: its tensors cover "
                             f"{covered} of its {data_len} data bytes")
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
    if type(version) is not int or version not in SUPPORTED_FORMAT_VERSIONS:   # not True, 2.0 or "2"
        supported = ", ".join(map(str, SUPPORTED_FORMAT_VERSIONS))
        raise ModelFileError(f"model file {path} has format version {version!r:.40}, but this lcmsr "
                             f"supports format version {supported}")
    try:
        # clean(): every string of the description (band names, sensor, notes, training record) free of
        # control characters before anything shows it.
        return ModelInfo.from_dict(clean(data))
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
        raise ModelFileError(f"model file {path} has an invalid model description: {exc}") from None


def _expected_tensors(path: Path, info: ModelInfo, header: dict, data_len: int) -> dict[str, torch.Tensor]:
    """The tensors ``info.config`` implies, built on the meta device (shapes, no memory), checked against
    the memory budget, the file's size and the header's names, shapes and dtypes."""
    try:
        with torch.device("meta"):
            expected = _saved(LCMSR(info.config, info=info, with_encoder=False))
    except (ValueError, RuntimeError) as exc:   # e.g. attention heads that do not divide the width
        raise ModelFileError(f"model file {path} has a config no network can be built from: {exc}") from None
    params = sum(t.numel() for t in expected.values())
    if 4 * params > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file {path} describes a network of {params / 1e6:.0f} M parameters "
                             f"({4 * params / 2 ** 30:.1f} GiB), more than the {MAX_MODEL_BYTES / 2 ** 30:g} GiB "
                             "this lcmsr loads")
    if params > data_len:   # even at 1 byte a value (int8) the tensors would not fit in the file
        raise ModelFileError(f"model file {path} describes a network of {params} parameters, but its "
                             f"{data_len} bytes of tensor data cannot hold them")
    missing = [name for name in expected if name not in header]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(f"model file {path} is missing tensor '{missing[0]}'{more}")
    # An int8 weight has its scale beside it, and only an int8 weight has one.
    scales = {name[:-len(QSCALE_SUFFIX)] for name in header if name.endswith(QSCALE_SUFFIX)}
    unexpected = [name for name in header if name != "__metadata__" and name not in expected
                  and not (name.endswith(QSCALE_SUFFIX) and name[:-len(QSCALE_SUFFIX)] in expected)]
    if unexpected:
        raise ModelFileError(f"model file {path} has unexpected tensor '{unexpected[0]}' that its config "
                             "does not describe")
    for name, tensor in expected.items():
        found = tuple(header[name]["shape"])
        if found != tuple(tensor.shape):
            raise ModelFileError(f"model file {path} has tensor '{name}' of shape {list(found)}, expected "
                                 f"{list(tensor.shape)}")
        dtype = header[name]["dtype"]
        if dtype == "I8" and name != "latent_scale" and tensor.ndim >= 2:
            scale = header.get(name + QSCALE_SUFFIX)
            if scale is None:
                raise ModelFileError(f"model file {path} has tensor '{name}' stored as int8 without its scale "
                                     f"'{name}{QSCALE_SUFFIX}'")
            if scale["dtype"] not in _FLOAT_DTYPES or tuple(scale["shape"]) != (tensor.shape[0],):
                raise ModelFileError(f"model file {path} has scale '{name}{QSCALE_SUFFIX}' of {scale['dtype']} "
                                     f"{list(scale['shape'])}, expected one float per output channel "
                                     f"[{tensor.shape[0]}]")
        elif dtype not in _FLOAT_DTYPES:
            raise ModelFileError(f"model file {path} has tensor '{name}' stored as {dtype}; weights are floating "
                                 f"point ({', '.join(_FLOAT_DTYPES)}) or int8 with a scale per output channel")
        elif name in scales:
            raise ModelFileError(f"model file {path} has a scale for tensor '{name}', which is not stored as int8")
    return expected


def _values(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights' values: int8 tensors times their scales; the scales themselves are not weights."""
    return {name: (_dequantize(t, stored[name + QSCALE_SUFFIX]) if t.dtype == torch.int8 else t)
            for name, t in stored.items() if not name.endswith(QSCALE_SUFFIX)}


def _value_problem(name: str, t: torch.Tensor) -> str | None:
    """What is degenerate about a stored tensor's values (None: nothing): a non-finite value, a weight
    beyond :data:`MAX_ABS_WEIGHT`, a latent_scale outside its sane range (cheap: one pass each)."""
    if not bool(torch.isfinite(t).all()):
        return f"non-finite values (NaN or inf) in tensor '{name}'"
    if name == "latent_scale":
        v = float(t)
        if not MIN_LATENT_SCALE <= v <= MAX_LATENT_SCALE:
            return (f"latent_scale {v:g}, outside the sane {MIN_LATENT_SCALE:g}..{MAX_LATENT_SCALE:g} "
                    "(1/std of the latent)")
    elif t.numel() and float(t.abs().max()) > MAX_ABS_WEIGHT:
        return f"weights of magnitude {float(t.abs().max()):.3g} in tensor '{name}', beyond the sane {MAX_ABS_WEIGHT:g}"
    return None


def _read_tensors(path: Path, names) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(``names`` as stored, with an int8 weight's scale beside it; their values, each checked by
    :func:`_value_problem`: an int8 weight dequantized once, here)."""
    from safetensors import safe_open

    stored, values = {}, {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in names:
                stored[name] = values[name] = f.get_tensor(name)
                if stored[name].dtype == torch.int8:
                    scale = stored[name + QSCALE_SUFFIX] = f.get_tensor(name + QSCALE_SUFFIX)
                    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
                        raise ModelFileError(f"model file {path} has a scale of tensor '{name}' that is not a "
                                             f"positive finite number")
                    values[name] = _dequantize(stored[name], scale)
                problem = _value_problem(name, values[name])
                if problem:
                    raise ModelFileError(f"model file {path} has {problem}")
    except ModelFileError:
        raise
    except Exception as exc:  # safetensors' own errors (SafetensorError) for anything we did not catch
        raise ModelFileError(f"model file {path} cannot be read as safetensors: {exc}") from None
    return stored, values


def _validate(path, values: bool) -> tuple[Path, ModelInfo, dict, dict]:
    """The one validator (module docstring): (path, info, expected tensors, their values).  With
    ``values=False`` only latent_scale is read (header checks only: fast, for lists and dialogs)."""
    path = Path(path)
    header, data_len = _read_header(path)
    info = _info_from_header(path, header)
    expected = _expected_tensors(path, info, header, data_len)
    stored, weights = _read_tensors(path, expected if values else ["latent_scale"])
    if values:
        digest = header["__metadata__"].get(DIGEST_KEY)
        if digest is not None and digest != content_digest(header["__metadata__"][METADATA_KEY], stored):
            raise ModelFileError(f"model file {path} is damaged: its contents do not match the checksum "
                                 "written with it (a corrupted copy or download?)")
    return path, info, expected, weights


def read_info(path) -> ModelInfo:
    """The model's description, validated from the header (no weight is read: fast)."""
    return _validate(path, values=False)[1]


def check_model(path) -> ModelInfo:
    """Everything :func:`load_model` checks (description, shapes, values, checksum) without building
    the network, for dialogs that accept a model file: a file that passes here also loads for a run."""
    return _validate(path, values=True)[1]


def load_model(path, device="cpu") -> LCMSR:
    """Build the inference model (no encoder) from a model file that passed the validator, eval mode."""
    path, info, _, weights = _validate(path, values=True)
    model = LCMSR(info.config, info=info, with_encoder=False)
    model.load_state_dict({name: t.float() for name, t in weights.items()}, strict=True)
    model.source_path = str(path.resolve())   # the output's provenance names the file the weights came from
    return model.to(device).eval()


def update_info(path, **fields) -> ModelInfo:
    """Rewrite a model file with some of its info's fields changed (a default sampler, measured working memory),
    its weights and their storage (fp16/fp32) kept; written atomically, checked before it is written."""
    model = load_model(path)
    info = model.info
    for name, value in fields.items():
        if not hasattr(info, name):
            raise AttributeError(f"model info has no field {name!r}")
        setattr(info, name, value)
    info.validate()
    storage = info.training.get("storage") if info.training.get("storage") in STORAGE_DTYPES else "fp32"
    save_model(path, model, info, storage=storage)
    return info
