"""`lcmsr info MODEL` (what a model file holds) and `lcmsr info --diagnostics` (what would run here)."""
from __future__ import annotations

import math
import platform

from ..normalizers import NORMALIZERS
from ..domain import GSD_TOLERANCE, _safe  # torch-free: `lcmsr --help` stays fast


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="describe a model file, or the environment (--diagnostics)",
                              description="Print what a .safetensors model file holds, after the checks a run "
                                          "makes (a file described here also loads), or with --diagnostics "
                                          "the versions and the device 'auto' would use.")
    p.add_argument("model", nargs="?", help="model file (.safetensors)")
    p.add_argument("--diagnostics", action="store_true", help="print versions and which device would run")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.diagnostics:
        print(diagnostics())
        if not args.model:
            return 0
        print()
    if not args.model:
        from ..cli import CliError

        raise CliError("give a model file, or --diagnostics")
    print(describe_model(args.model))
    return 0


def _count_by_part(path) -> dict[str, int]:
    from ..weights import _read_header

    header, _ = _read_header(path)
    counts: dict[str, int] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        part = name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + math.prod(entry["shape"])
    return counts


def _range(r) -> str:
    if not r:
        return "unspecified"
    return f"{r[0]:g} m" if r[0] == r[1] else f"{r[0]:g}-{r[1]:g} m"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10_000 else str(n)


def describe_model(path) -> str:
    from pathlib import Path

    from ..weights import check_model

    path = Path(path)
    info = check_model(path)   # the loader's own validator: a crafted file is one line, never a traceback
    c = info.config
    counts = _count_by_part(path)
    norm = info.normalization
    lines = [
        f"model file      {path}",
        f"format version  {info.format_version}",
        f"scale           x{info.scale}",
        f"bands           {info.bands}: {_safe(', '.join(info.band_names))}",
        f"data type       {info.data_type}",
        "normalisation   " + "; ".join(f"{n}: {lo:g}..{hi:g}" for n, lo, hi in zip(info.band_names, norm.lo, norm.hi)),
        f"config          {c.name}: latent {c.latent_channels}ch at HR/8; "
        f"CondNet width {c.condnet.base_channels}x{c.condnet.channel_mults}; "
        f"UNet width {c.denoiser.base_channels}x{c.denoiser.channel_mults}, attention at levels "
        f"{c.denoiser.attention_levels}; decoder {len(c.decoder.level_widths)} groups x "
        f"{c.decoder.blocks_per_group} distillation blocks at {c.decoder.features}ch",
        f"diffusion       T={c.schedule.timesteps}, betas {c.schedule.beta_start}..{c.schedule.beta_end}, "
        f"sigma_data {c.consistency.sigma_data}, CT loss {c.consistency.loss}, gap {c.consistency.gap}",
        "parameters      " + ", ".join(f"{k} {_millions(counts[k])}" for k in ("condnet", "denoiser", "decoder")
                                        if k in counts) + f"; total {_millions(sum(counts.values()))}",
        f"LR multiple     {c.lr_multiple} (other sizes are padded)",
    ]
    d = info.domain
    if d.known:
        lines += [
            f"domain          {_safe(d.family)}: {_safe(d.sensor, 200)}",
            "band roles      " + (f"band-wise: any band, one at a time (trained on {', '.join(d.trained_roles)})"
                                  if d.bandwise else ", ".join(d.band_roles)),
            f"input types     {', '.join(d.data_types)}",
            "normalisation   " + NORMALIZERS[d.normalization].label,
            f"pixel size      input (LR) {_range(d.lr_gsd_m)}, output (HR) {_range(d.hr_gsd_m)}; the guard "
            f"stops inputs more than {GSD_TOLERANCE:g}x outside",
        ]
        if d.notes:
            lines.append(f"domain notes    {_safe(d.notes, 600)}")
    else:
        lines.append(f"domain          unknown (format {info.format_version} file): inputs are not checked "
                     "against it and it is never chosen automatically")
    ds = info.default_sampler
    if ds:
        steps = "" if ds["sampler"] == "faithful" else f", {ds['steps']} step{'s' if ds['steps'] > 1 else ''}"
        lines.append(f"default sampler {_safe(ds['sampler'])}{steps} (used when no sampler is given): "
                     f"{_safe(ds['why'], 600)}")
    else:
        lines.append("default sampler consistency, 1 step (the method's; the file names none)")
    if info.training:
        summary = ", ".join(f"{k}={_safe(v, 200)}" for k, v in info.training.items()
                            if not isinstance(v, (dict, list)))
        lines.append(f"training        {summary}")
        for ft in info.training.get("finetunes") or []:
            if isinstance(ft, dict):
                lines.append(f"fine-tuned      from {_safe(ft.get('base_model'), 200)} (sha256 "
                             f"{_safe(str(ft.get('base_sha256'))[:12])}): {_safe(ft.get('steps'))} steps, "
                             f"{_safe(ft.get('seconds'))} s on {_safe(ft.get('device'))}, data "
                             f"{_safe(', '.join(map(str, ft.get('data') or [])), 300)}")
    else:
        lines.append("training        (no training summary: untrained or hand-made model)")
    return "\n".join(lines)


def diagnostics() -> str:
    import numpy
    import torch

    from .. import __version__
    from ..runtime import resolve_device

    lines = [f"lcmsr           {__version__}",
             f"python          {platform.python_version()} ({platform.system()} {platform.machine()})",
             f"torch           {torch.__version__}",
             f"torch CUDA      {torch.version.cuda or 'none (CPU-only build)'}",
             f"numpy           {numpy.__version__}"]
    from ..raster import gdal_version

    lines.append(f"GDAL            {gdal_version() or 'not importable (needed only for raster input/output)'}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}           {props.name}, {props.total_memory / 2 ** 30:.1f} GiB")
    else:
        lines.append("GPU             none visible")
    choice = resolve_device("auto")
    lines.append(f"device (auto)   {choice.device}: {choice.reason}")
    lines.append(f"CPU threads     {torch.get_num_threads()}")
    return "\n".join(lines)
