"""Training checkpoints: tensors in ``.safetensors``, everything else in JSON; nothing pickled.

A checkpoint of step N is two files, ``step-000000N.safetensors`` and
``step-000000N.json``.  Each is written to a temporary name, fsynced and moved
into place with ``os.replace``; the JSON goes last and records the size and
SHA-256 of the tensor file, so a checkpoint exists only once both are complete
and consistent.  Older checkpoints are deleted only after that, so a ``kill -9``
at any instant leaves at least one loadable checkpoint.

Optimiser states are flattened: every tensor of ``optimizer.state_dict()`` goes
into the safetensors file under ``<prefix>.state.<param>.<key>``, the rest
(param groups, scalar state) into the JSON.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import AtomicPath

FORMAT = "lcmsr-train-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})\.json$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not fit this run; the message says which and why."""


@dataclass
class Checkpoint:
    step: int
    tensors: dict[str, torch.Tensor]
    state: dict
    path: Path           # the JSON file


def _atomic_write(path: Path, write) -> None:
    with AtomicPath(path, fsync=True, umask_mode=True) as tmp:
        write(tmp)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- optimiser states -------------------------------------------------------------------------

def flatten_optimizer(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalar_state": scalars}


def restore_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    state: dict[int, dict] = {}
    head = prefix + ".state."
    for name, value in tensors.items():
        if name.startswith(head):
            pid, key = name[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[key] = value
    for pid, st in meta["scalar_state"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON turned the tuple into a list
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    # Optimizer.load_state_dict casts state tensors to each parameter's device and dtype.
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- RNG states -------------------------------------------------------------------------------
# Generator states are byte tensors; they go into the JSON as base64 so that each rank's
# state can travel through ``all_gather_object`` to rank 0, which alone writes files.

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """Global torch (CPU, CUDA) and explicit generator states, JSON-able."""
    out = {"torch_cpu": _b64(torch.get_rng_state()), "generators": {}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = [_b64(torch.cuda.get_rng_state(i)) for i in range(torch.cuda.device_count())]
    for name, gen in generators.items():
        out["generators"][name] = _b64(gen.get_state())
    return out


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if torch.cuda.is_available():
        for i, s in enumerate(state.get("torch_cuda", [])[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_unb64(s), i)
    for name, gen in generators.items():
        if name not in state["generators"]:
            raise CheckpointError(f"the checkpoint has no state for the random generator '{name}'")
        gen.set_state(_unb64(state["generators"][name]))


# --- files ------------------------------------------------------------------------------------

def checkpoint_paths(directory: str | os.PathLike, step: int) -> tuple[Path, Path]:
    d = Path(directory)
    return d / f"step-{step:08d}.safetensors", d / f"step-{step:08d}.json"


def write_checkpoint(st_path: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    """Write one checkpoint pair ``X.safetensors`` + ``X.json`` atomically; returns the JSON path.

    Also the form of the finished stage-1 autoencoder that ``train-consistency`` reads.
    """
    st_path = Path(st_path)
    if st_path.suffix != ".safetensors":
        st_path = st_path.with_name(st_path.name + ".safetensors")
    js_path = st_path.with_suffix(".json")
    st_path.parent.mkdir(parents=True, exist_ok=True)
    # A copy of every tensor: safetensors refuses tensors that share storage (tied weights,
    # views), and the copy also decouples the file from parameters the next step changes.
    cpu = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    _atomic_write(st_path, lambda tmp: save_file(cpu, tmp, metadata={"format": FORMAT}))
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step,
           "tensors": {"file": st_path.name, "bytes": st_path.stat().st_size, "sha256": _sha256(st_path)},
           "state": state}
    text = json.dumps(doc, indent=1, allow_nan=False)
    _atomic_write(js_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return js_path


def save_checkpoint(directory: str | os.PathLike, step: int, tensors: dict[str, torch.Tensor], state: dict,
                    keep: int = 1) -> Path:
    """Write checkpoint ``step`` into ``directory``, then delete all but the newest ``keep`` complete ones."""
    d = Path(directory)
    js_path = write_checkpoint(checkpoint_paths(d, step)[0], step, tensors, state)
    for old in list_checkpoints(d)[:-keep] if keep > 0 else []:
        _remove(old)
    _remove_orphans(d)
    return js_path


def _remove(step_json: Path) -> None:
    st = step_json.with_suffix(".safetensors")
    step_json.unlink(missing_ok=True)  # the JSON first: without it the pair no longer counts
    st.unlink(missing_ok=True)


def _remove_orphans(d: Path) -> None:
    """Tensor files whose JSON never got written (a run killed mid-save) and stale temp files."""
    for f in d.iterdir():
        if f.suffix == ".safetensors" and f.name.startswith("step-") and not f.with_suffix(".json").exists():
            f.unlink(missing_ok=True)
        elif f.suffix == ".tmp" and f.name.startswith("step-"):
            f.unlink(missing_ok=True)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """JSON files of the checkpoints in ``directory``, oldest first (no validation)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), f) for f in d.iterdir() if (m := _NAME.match(f.name))]
    return [f for _, f in sorted(found)]


def load_checkpoint(path: str | os.PathLike, verify: bool = True, warn=None, check=None) -> Checkpoint:
    """Load a checkpoint from its JSON file, or the newest valid one when ``path`` is a directory
    (``warn`` is told of the newer ones skipped as damaged or incomplete).  ``check(state)`` says what
    is wrong with a state the caller needs ('' when sound), e.g. a resume's keys."""
    p = Path(path)
    if p.is_dir():
        candidates = list_checkpoints(p)
        if not candidates:
            raise CheckpointError(f"no checkpoint in {p}")
        errors = []
        for js in reversed(candidates):
            try:
                ck = load_checkpoint(js, verify, check=check)
            except CheckpointError as exc:  # a damaged or incomplete newer one: fall back to the previous
                errors.append(str(exc))
                continue
            if errors and warn is not None:
                warn(f"skipped {len(errors)} damaged checkpoint(s), resuming from the newest good one "
                     f"{js.name}: " + "; ".join(errors))
            return ck
        raise CheckpointError(f"no valid checkpoint in {p}: " + "; ".join(errors))
    given = p
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        if given != p and given.is_file():
            # A model file (what training writes last, what sr reads) is no checkpoint: say so about the file
            # given, not about a .json the user never named.
            raise CheckpointError(f"{given} is not a training checkpoint (no {p.name} beside it): "
                                  + ("it is an LCMSR model file; a checkpoint is the step-NNNNNNNN.json (with its "
                                     ".safetensors) that training writes into its checkpoint folder"
                                     if _is_model_file(given) else
                                     "a checkpoint is a step-NNNNNNNN.json with its .safetensors"))
        raise CheckpointError(f"checkpoint {given} does not exist")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {p} is not readable JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not an LCMSR training checkpoint")
    problem = _shape_problem(doc) or (check(doc["state"]) if check else "")
    if problem:
        raise CheckpointError(f"checkpoint {p} is damaged: {problem}")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {p} has format version {doc['format_version']}; this lcmsr "
                              f"reads up to {FORMAT_VERSION}")
    st = p.parent / doc["tensors"]["file"]
    if not st.exists():
        raise CheckpointError(f"checkpoint {p}: its tensor file {st.name} is missing")
    if st.stat().st_size != doc["tensors"]["bytes"] or (verify and _sha256(st) != doc["tensors"]["sha256"]):
        raise CheckpointError(f"checkpoint {p}: its tensor file {st.name} is incomplete or was modified")
    try:
        tensors = load_file(str(st))
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p}: cannot read {st.name}: {exc}") from None
    return Checkpoint(int(doc["step"]), tensors, doc["state"], p)


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` is an LCMSR model file (its safetensors header carries the model's description)."""
    try:
        from ..weights import read_info

        read_info(path)
        return True
    except Exception:   # any reason it is not one: the caller only chooses its wording
        return False


def _shape_problem(doc: dict) -> str:
    """What is missing or of the wrong type in a checkpoint JSON ('' when its structure is sound)."""
    t = doc.get("tensors")
    if not isinstance(doc.get("format_version", 0), int) or isinstance(doc.get("format_version", 0), bool):
        return "format_version is not an integer"
    if not isinstance(doc.get("step"), int) or isinstance(doc["step"], bool) or doc["step"] < 0:
        return "its step is not a non-negative integer"
    if not (isinstance(t, dict) and isinstance(t.get("file"), str) and isinstance(t.get("bytes"), int)
            and isinstance(t.get("sha256"), str)) or os.path.basename(t["file"]) != t["file"]:
        return "its tensor file record is missing or malformed"
    if not isinstance(doc.get("state"), dict):
        return "its state is missing or malformed"
    return ""


class FolderLock:
    """One training per checkpoint folder: an exclusive ``flock`` on ``.lcmsr-train.lock`` in it, held
    while the training runs and released by the kernel however it ends (kill -9 too).  A second
    training on the folder is refused in one line naming the folder and the process that holds it.
    Also refuses a folder that is a file, before any work.  (No lock where ``fcntl`` is missing: Windows.)"""

    NAME = ".lcmsr-train.lock"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._f = None

    def __enter__(self):
        if self.folder.exists() and not self.folder.is_dir():
            raise CheckpointError(f"the checkpoint folder {self.folder} is a file, not a folder: give a folder "
                                  f"(it is made if missing)")
        try:
            import fcntl
        except ImportError:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / self.NAME, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise CheckpointError(f"the checkpoint folder {self.folder} is in use by another training "
                                  f"({holder}): wait for it to end or use another checkpoint folder") from None
        f.truncate(0)
        f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            self._f.close()  # closing releases the lock
            self._f = None


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def load_module(prefix: str, module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str = "") -> None:
    head = prefix + "."
    sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {where}: the '{prefix}' weights do not fit this model "
                              f"(missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}); "
                              f"was it made with another config?")
