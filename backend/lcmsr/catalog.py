"""Where models are found when the user names none: the bundled ones and the registered ones.

Bundled: ``resources/models/*.safetensors`` beside the package (a checkout keeps them at the
repository's ``resources/models``, the plugin zip at ``lcmsr_qgis/resources/models``; both are
two folders above this package).  Registered: the files or folders listed in the environment
variable ``LCMSR_MODELS`` (``os.pathsep``-separated), and whatever the caller adds (the plugin's
models list).  Only headers are read: choosing costs milliseconds.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

ENV_VAR = "LCMSR_MODELS"
_SHA256: dict[tuple, str] = {}
_SHA256_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a model file's bytes (what ``sha256sum`` prints), read once per file version: the
    result is kept by (path, size, modification time), so a batch of outputs hashes its model once."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _SHA256_LOCK:
        if key not in _SHA256:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _SHA256[key] = h.hexdigest()
        return _SHA256[key]


def bundled_model_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "resources" / "models"


def _expand(entry: str | os.PathLike) -> list[str]:
    p = Path(entry)
    if p.is_dir():
        return [str(f) for f in sorted(p.glob("*.safetensors"))]
    return [str(p)] if p.is_file() else []


def model_paths(extra=()) -> list[str]:
    """Bundled models, then ``LCMSR_MODELS``, then ``extra``; each file once."""
    entries: list[str] = _expand(bundled_model_dir())
    for e in (os.environ.get(ENV_VAR) or "").split(os.pathsep):
        if e.strip():
            entries += _expand(e.strip())
    for e in extra:
        entries += _expand(e)
    seen, out = set(), []
    for e in entries:
        key = os.path.realpath(e)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def candidates(paths) -> tuple[list[tuple[str, object]], list[str]]:
    """(path, ModelInfo) of every readable model file, and one line for each that is not."""
    from .weights import ModelFileError, read_info

    good, bad = [], []
    for p in paths:
        try:
            good.append((p, read_info(p)))
        except ModelFileError as exc:
            bad.append(str(exc))
    return good, bad
