"""A job: one backend command with its options and paths, as JSON (the boundary between the QGIS plugin
and the backend, docs/DESIGN.md "The job boundary").

The plugin's algorithms turn their parameters into a :class:`Job` and hand it to a runner: in the QGIS
process (:func:`run`, with the plugin's model cache) or in a worker process on an interpreter of the
user's choice (``lcmsr run-job JOB.json``, :mod:`lcmsr.commands.run_job`), which reports through
:class:`lcmsr.progress.JsonLinesProgress`.  Options travel as the fields of the backend's own option
dataclasses (:class:`~lcmsr.raster.pipeline.SROptions`, :class:`~lcmsr.train_options.TrainOptions`,
:class:`~lcmsr.metrics.protocol.EvalRequest`): a new field flows through without code here.

Importing this module needs neither torch nor GDAL (the QGIS process builds jobs without them); each
command imports what it runs.  Results are JSON objects of plain values.
"""
from __future__ import annotations

import dataclasses
import json
import os

from .choices import CLI_TERMS, Terms
from .progress import Progress, plain
from .text import safe_text

VERSION = 1
MAX_JOB_BYTES = 16 * 1024 * 1024


class JobError(ValueError):
    """A job description that cannot be run: one line naming what is wrong."""


@dataclasses.dataclass
class Job:
    """``command``: a name of :data:`COMMANDS`; ``args``: its arguments (plain JSON values; option
    dataclasses as dicts of their fields, see :func:`options_to_dict`)."""
    command: str
    args: dict = dataclasses.field(default_factory=dict)
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "command": self.command, "args": self.args}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Job":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise JobError(f"the job is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise JobError("the job must be a JSON object with 'command' and 'args'")
        unknown = sorted(set(data) - {"version", "command", "args"})
        if unknown:
            raise JobError(f"the job has unknown keys: {', '.join(map(safe_text, unknown))}")
        if data.get("version", VERSION) != VERSION:
            raise JobError(f"job version {safe_text(data.get('version'))} is not {VERSION} (plugin and backend "
                           "differ: reinstall the plugin)")
        command, args = data.get("command"), data.get("args", {})
        if command not in COMMANDS:
            raise JobError(f"unknown job command {safe_text(command)!s}; known: {', '.join(COMMANDS)}")
        if not isinstance(args, dict):
            raise JobError("the job's 'args' must be a JSON object")
        return cls(command, args)

    @classmethod
    def load(cls, path: str) -> "Job":
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_JOB_BYTES + 1)
        except OSError as exc:
            raise JobError(f"cannot read the job file {safe_text(path)}: {exc.strerror or exc}") from None
        if len(raw) > MAX_JOB_BYTES:
            raise JobError(f"the job file {safe_text(path)} is larger than {MAX_JOB_BYTES // 2**20} MiB")
        try:
            return cls.from_json(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise JobError(f"the job file {safe_text(path)} is not UTF-8 text") from None


# ---------------------------------------------------------------- option dataclasses <-> JSON
def options_to_dict(options) -> dict:
    """A dataclass of options as ``{field: value}``; nested :class:`Terms` and dataclasses as dicts."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, Terms):
            value = {"names": dict(value.names), "setting": value.setting}
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = options_to_dict(value)
        out[f.name] = value
    return out


def options_from_dict(cls, data, what: str):
    """``cls(**data)`` for a dict :func:`options_to_dict` made; JobError naming an unknown field."""
    from .config import dataclass_from_dict

    if not isinstance(data, dict):
        raise JobError(f"{what} must be a JSON object of option fields")
    values = dict(data)
    if "terms" in values and isinstance(values["terms"], dict) and "names" in values["terms"]:
        terms = values["terms"]
        if not isinstance(terms["names"], dict):
            raise JobError(f"{what}: terms.names must be an object")
        values["terms"] = Terms(dict(terms["names"]), str(terms.get("setting", CLI_TERMS.setting)))
    try:
        return dataclass_from_dict(cls, values, what)
    except (TypeError, ValueError) as exc:
        raise JobError(safe_text(exc)) from None


def _arg(args: dict, name: str, kinds, default=dataclasses.MISSING):
    """An argument of the job, of one of ``kinds`` (a type or a tuple), or its default."""
    if name not in args or args[name] is None:
        if default is dataclasses.MISSING:
            raise JobError(f"the job lacks '{name}'")
        return default
    value = args[name]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _as_tuple(kinds)):
        raise JobError(f"the job's '{name}' has the wrong type ({type(value).__name__})")
    return value


def _as_tuple(kinds) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _sr_options(args: dict):
    from .raster.pipeline import SROptions

    return options_from_dict(SROptions, args.get("sr", {}), "sr")


# ---------------------------------------------------------------- the commands
def _load_model_default(path: str, device: str):
    from .weights import load_model

    return load_model(path, device=device)


def _device(request: str, progress: Progress):
    """The resolved device; a GPU wanted but not usable is a warning, never silent."""
    from .runtime import resolve_device

    choice = resolve_device(request)
    if choice.fallback:
        progress.warn(f"Device 'auto' fell back to the CPU — {choice.reason}")
    return choice


def superresolve_job(args: dict, progress: Progress, load_model=_load_model_default) -> dict:
    """args: src, dst, model ('' = chosen by the input's domain), sr (SROptions fields)."""
    from .raster.pipeline import choose_model_for, superresolve

    src, dst = _arg(args, "src", str), _arg(args, "dst", str)
    model_path = _arg(args, "model", str, "")
    options = _sr_options(args)
    choice = _device(options.device, progress)
    if not model_path:
        model_path = choose_model_for(src, options, progress)
    progress.info(f"Model: {model_path}")
    # Loaded on the resolved device so that "auto" and "cpu" share one cached copy (the in-process runner).
    model = load_model(model_path, str(choice.device))
    superresolve(src, dst, model, options, progress)
    return {"output": dst, "uncertainty": options.uncertainty, "model": model_path, "scale": int(model.info.scale)}


def describe_model_job(args: dict, progress: Progress, load_model=None) -> dict:
    """What the 'Super-resolve active layer' action asks before its dialogs: the model for ``src`` (the given
    one, else chosen by its domain among the bundled and ``models``) and what it takes.  Torch runs here,
    not in QGIS.  args: src, model, bands, models, terms."""
    from .raster.pipeline import SROptions, choose_model_for
    from .weights import read_info

    src = _arg(args, "src", str)
    model_path = _arg(args, "model", str, "")
    if not model_path:
        options = options_from_dict(SROptions, {k: args[k] for k in ("bands", "models", "terms") if k in args},
                                    "describe_model")
        model_path = choose_model_for(src, options, progress)
    info = read_info(model_path)
    return {"model": model_path, "scale": int(info.scale), "bands": int(info.bands),
            "domain": info.domain.to_dict() if getattr(info, "domain", None) else None}


def degrade_job(args: dict, progress: Progress, load_model=None) -> dict:
    """args: src, dst, scale, bands."""
    from .raster.degrade import degrade

    dst = _arg(args, "dst", str)
    degrade(_arg(args, "src", str), dst, _arg(args, "scale", int), progress, bands=_arg(args, "bands", list, None))
    return {"output": dst}


def superresolve_many_job(args: dict, progress: Progress, load_model=None) -> dict:
    """args: inputs, out_dir, model, sr, executor, workers, address, unit_size."""
    from .sr.batch import run_batch

    result = run_batch(_arg(args, "inputs", list), _arg(args, "out_dir", str), _arg(args, "model", str, "") or None,
                       _sr_options(args), executor=_arg(args, "executor", str, "local"),
                       workers=_arg(args, "workers", int, 1), address=_arg(args, "address", str, "") or None,
                       unit_size=_arg(args, "unit_size", int, 0), progress=progress)
    return {"items": [{"origin": r.origin, "status": r.status, "dst": r.dst, "error": r.error} for r in result.items],
            "log": result.log,
            "mosaics": [{"path": m.path, "members": len(m.members)} for m in result.mosaics]}


TRAIN_STAGES = {"autoencoder": ("lcmsr.train.stage1", "train_autoencoder"),
                "consistency": ("lcmsr.train.stage2", "train_consistency"),
                "decoder": ("lcmsr.train.stage3", "train_decoder"),
                "finetune": ("lcmsr.train.finetune", "finetune")}


def train_job(args: dict, progress: Progress, load_model=None) -> dict:
    """args: stage (a TRAIN_STAGES name), options (TrainOptions fields)."""
    import importlib

    from .train_options import TrainOptions

    stage = _arg(args, "stage", str)
    if stage not in TRAIN_STAGES:
        raise JobError(f"unknown training stage {safe_text(stage)}; known: {', '.join(TRAIN_STAGES)}")
    options = options_from_dict(TrainOptions, args.get("options", {}), "options")
    module, name = TRAIN_STAGES[stage]
    result = getattr(importlib.import_module(module), name)(options, progress)
    return {"stage": result.stage, "steps": result.steps, "loss": result.loss, "val_psnr": result.val_psnr,
            "bicubic_psnr": result.bicubic_psnr, "checkpoint": result.checkpoint, "model_path": result.model_path,
            "seconds": float(result.seconds)}


def evaluate_job(args: dict, progress: Progress, load_model=_load_model_default) -> dict:
    """The evaluation `lcmsr eval` runs, with the report.  args: request (EvalRequest fields; its ``options``
    the SROptions fields of a model's run), title (``{scale}`` is filled in), names ({parameter: layer}
    for the output-path rule)."""
    from .metrics.evaluate import METRIC_KEYS, TRUST_KEYS, write_html_report
    from .metrics.protocol import EvalRequest, evaluate
    from .paths import check_outputs
    from .raster.pipeline import SROptions

    fields = dict(_arg(args, "request", dict))
    if fields.get("options") is not None:
        fields["options"] = options_from_dict(SROptions, fields["options"], "request.options")
    request = options_from_dict(EvalRequest, fields, "request")
    check_outputs(request.outputs(), [(what, path) for what, path in _arg(args, "inputs", list, [])])
    choice = _device(request.device, progress)
    model = None
    if request.model:
        model = load_model(request.model, str(choice.device))
    metrics = next(iter(evaluate(request, progress, pictures=True, model=model).details.values()))
    sr, scale = request.sr or metrics["sr"], metrics["scale"]
    bands = request.bands or metrics.get("bands") or []
    extra = dict(scale=scale, bands=", ".join(map(str, bands)))
    rows = {os.path.basename(sr): dict({k: metrics.get(k) for k in METRIC_KEYS + TRUST_KEYS}, **extra)}
    bicubic = metrics.get("bicubic") or {}
    if bicubic:
        rows["bicubic"] = dict(bicubic, **extra)
    title = _arg(args, "title", str, "LCMSR evaluation").replace("{scale}", str(scale))
    write_html_report(request.html, rows, f"LCMSR evaluation: {title}", pictures=metrics.get("pictures"),
                      notes=metrics["notes"], inputs=request.inputs())
    _say_metrics(metrics, bicubic, progress)
    numbers = {k: _number(metrics.get(k)) for k in METRIC_KEYS + TRUST_KEYS + ("lpips",)}
    return dict(numbers, sr=sr, scale=int(scale), html=request.html,
                bicubic={k: _number(v) for k, v in bicubic.items() if isinstance(v, (int, float)) or hasattr(v, "item")})


def _number(value):
    return None if value is None else float(value)


def _say_metrics(metrics: dict, bicubic: dict, progress: Progress) -> None:
    if metrics.get("psnr") is not None:
        lpips_text = "skipped" if metrics.get("lpips") is None else f"{metrics['lpips']:.4f}"
        progress.info(f"PSNR {metrics['psnr']:.3f} dB, SSIM {metrics['ssim']:.4f}, LPIPS {lpips_text}")
    if metrics.get("lr_mae") is not None:
        progress.info(f"LR-consistency: mean {metrics['lr_mae']:.3f}, RMS {metrics['lr_rmse']:.3f}, "
                      f"max {metrics['lr_max']:.3f} {metrics['unit']}")
    for key, what in (("sam_input", "to the input"), ("sam_reference", "to the reference")):
        if metrics.get(key) is not None:
            progress.info(f"spectral angle {what}: {metrics[key]:.3f} degrees")
    if metrics.get("uncertainty_spearman") is not None:
        progress.info(f"uncertainty/error Spearman correlation (16x16 blocks): {metrics['uncertainty_spearman']:.3f}")
    for note in metrics.get("notes", []):
        progress.info(note)
    if bicubic:
        progress.info(f"bicubic baseline: PSNR {bicubic['psnr']:.3f} dB, SSIM {bicubic['ssim']:.4f}")


def diagnostics_job(args: dict, progress: Progress, load_model=None) -> dict:
    """Lines for the plugin's Diagnostics view from the interpreter that runs the jobs: the backend, numpy,
    torch (and whether it is the plugin's own, ``plugin_torch_dir``), CUDA and the device ``device`` gets."""
    import sys

    import numpy
    import torch

    import lcmsr
    from .runtime import DeviceError, resolve_device

    request = _arg(args, "device", str, "auto")
    owned = _arg(args, "plugin_torch_dir", str, "")
    where = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    inside = bool(owned) and os.path.realpath(torch.__file__).startswith(os.path.realpath(owned) + os.sep)
    lines = [f"Backend Python: {sys.version.split()[0]} ({sys.executable})",
             f"lcmsr backend: {lcmsr.__version__} ({os.path.dirname(lcmsr.__file__)})",
             f"numpy: {numpy.__version__}", f"torch: {torch.__version__} (CUDA build: {torch.version.cuda}) from "
             f"{where}" + (" (the plugin-owned folder)" if inside else " (no install needed)"),
             f"CUDA available: {torch.cuda.is_available()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    try:
        choice = resolve_device(request)
        lines.append(f"Device for '{request}': {choice.device} — {choice.reason}")
    except DeviceError as exc:
        lines.append(f"Device for '{request}': unusable — {exc}")
    return {"lines": lines}


COMMANDS = {"superresolve": superresolve_job, "superresolve_many": superresolve_many_job, "degrade": degrade_job,
            "evaluate": evaluate_job, "train": train_job, "describe_model": describe_model_job, "diagnostics": diagnostics_job}


def run(job: Job, progress: Progress | None = None, load_model=None) -> dict:
    """Run ``job`` here; its result.  ``load_model(path, device)`` replaces the model loader (the plugin's
    in-process runner passes its cache).  Errors are the backend's own (one line each)."""
    progress = progress or Progress()
    handler = COMMANDS.get(job.command)
    if handler is None:
        raise JobError(f"unknown job command {safe_text(job.command)}; known: {', '.join(COMMANDS)}")
    if not isinstance(job.args, dict):
        raise JobError("the job's 'args' must be a JSON object")
    sweep(job, progress)
    result = handler(job.args, progress) if load_model is None else handler(job.args, progress, load_model=load_model)
    # Plain JSON values whichever runner asked (numpy scalars and paths become numbers and text).
    return json.loads(json.dumps(result, default=plain))


def sweep(job: Job, progress: Progress | None = None) -> list[str]:
    """Remove what killed runs (a worker killed mid-job, say) left in the folders ``job`` writes into, as
    every lcmsr command does when it starts; -> the paths removed."""
    from .atomic import sweep_stale
    from .paths import output_folders

    removed = []
    for folder in output_folders([("output", p) for p in output_paths(job)]):
        for entry in sweep_stale(folder):
            removed.append(os.path.join(folder, entry))
            if progress is not None:
                progress.info(f"removed {entry}, left in {folder} by an interrupted lcmsr run")
    return removed


def output_paths(job: Job) -> list[str]:
    """The files and folders ``job`` writes (where a killed worker may have left temporary files)."""
    a = job.args if isinstance(job.args, dict) else {}
    paths = [a.get("dst"), a.get("out_dir"), (a.get("sr") or {}).get("uncertainty") if isinstance(a.get("sr"), dict)
             else None]
    request, options = a.get("request"), a.get("options")
    if isinstance(request, dict):
        paths += [request.get("html"), request.get("json"), request.get("work_dir")]
    if isinstance(options, dict):
        paths += [options.get("out"), options.get("checkpoint_dir")]
    return [p for p in paths if isinstance(p, str) and p]

