"""`lcmsr eval`: PSNR / SSIM / LPIPS (and FID) of SR results against HR references.

``--sr`` and ``--hr`` are two rasters, or two folders whose images are paired by
file name (the paper's protocol: per-image metrics averaged over the test set,
FID between the two folders).  ``--model`` instead of ``--sr`` degrades each HR
raster by the model's scale, super-resolves it and scores the result
(:func:`lcmsr.metrics.evaluate.evaluate_model`, which the plugin runs too), next to
bicubic upsampling of the same LR (the ``bicubic`` rows and JSON key).
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

from .. import atomic
from ._args import bands as _bands


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="PSNR / SSIM / LPIPS / FID of SR against HR",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--sr", help="SR raster, or folder of SR images")
    given.add_argument("--model", metavar="M", help="model file: degrade each HR raster by its scale as in training, "
                                                    "super-resolve it with M and score that")
    p.add_argument("--hr", required=True, help="HR raster, or folder of HR images with the same file names")
    p.add_argument("--scale", type=int, default=4,
                   help="SR factor = border crop in pixels for PSNR/SSIM (default 4; with --model the model's)")
    p.add_argument("--bands", type=_bands, default=None,
                   help="1-based bands to compare, e.g. 1,2,3; with --model the HR bands in the model's order "
                        "(default: all but alpha bands)")
    p.add_argument("--data-range", type=float, default=None,
                   help="peak value range (default: 255 for 8-bit, else the min-max range of HR's valid "
                        "values); nodata pixels of SR or HR rasters are left out of every metric")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--fid", action="store_true", help="also FID between the two folders (needs fetch_weights --fid)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] for LPIPS/FID and --model's SR (default auto)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--html", default=None, help="write a small HTML report to this file")
    p.add_argument("--work-dir", default=None,
                   help="with --model: keep the LR and SR rasters here (default: a temporary folder, removed)")
    p.set_defaults(func=run, paths=io_paths)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli): the
    reports and the work folder against the rasters (every image of a folder) and the model."""
    from lcmsr.metrics.fid import list_images

    inputs = [("the model file (--model)", args.model)]
    for flag, given in (("--sr", args.sr), ("--hr", args.hr)):
        inputs.append((f"the {flag} {'folder' if given and Path(given).is_dir() else 'raster'}", given))
        if given and Path(given).is_dir():
            inputs += [(f"an image of the {flag} folder", p) for p in list_images(Path(given))]
    return [("--json", args.json), ("--html", args.html), ("--work-dir", args.work_dir)], inputs


def _pairs(sr_dir: Path, hr_dir: Path) -> list[tuple[Path, Path]]:
    from lcmsr.metrics.fid import list_images

    sr = {p.stem: p for p in list_images(sr_dir)}
    hr = {p.stem: p for p in list_images(hr_dir)}
    common = sorted(sr.keys() & hr.keys())
    if not common:
        raise ValueError(f"no image in {sr_dir} has a namesake in {hr_dir}")
    missing = sorted(hr.keys() - sr.keys())
    if missing:
        raise ValueError(f"{len(missing)} HR image(s) have no SR result in {sr_dir}, e.g. {missing[0]}")
    return [(hr[k], sr[k]) for k in common]


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _finite(obj):
    # Strict JSON has no Infinity: the PSNR of identical images is written as null.
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def run(args) -> int:
    from lcmsr.device import resolve_device
    from lcmsr.metrics.evaluate import METRIC_KEYS, evaluate_model, evaluate_pair, write_html_report
    from lcmsr.metrics.fid import list_images

    device = resolve_device(args.device).device
    bands = args.bands
    hr = Path(args.hr)
    sr = Path(args.sr) if args.sr else None
    for p, what in ((sr, "--sr"), (hr, "--hr"), (args.model and Path(args.model), "--model")):
        if p and not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    if sr is not None and sr.is_dir() != hr.is_dir():
        raise ValueError("--sr and --hr must both be rasters or both be folders")
    if args.fid and (sr is None or not sr.is_dir()):
        raise ValueError("--fid compares two sets of images: give folders for --sr and --hr")
    kw = dict(bands=bands, data_range=args.data_range, lpips=not args.no_lpips, device=device)

    rows, baseline, scale = {}, {}, args.scale
    if args.model:
        from lcmsr.raster.pipeline import SROptions
        from lcmsr.weights import load_model

        model, options = load_model(args.model, device=str(device)), SROptions(device=args.device)
        # Named like lcmsr.atomic's temporary files: a killed run's folder is swept by the next command.
        scratch = None
        if not args.work_dir:
            atomic.sweep_stale(tempfile.gettempdir())   # what killed runs left there
            scratch = atomic.temp_folder(tempfile.gettempdir(), "lcmsr-eval")
        try:
            for h in list_images(hr) if hr.is_dir() else [hr]:
                r = evaluate_model(model, h, Path(args.work_dir or scratch) / h.stem, bands, options=options,
                                   lpips=kw["lpips"], device=device)
                name = h.stem if hr.is_dir() else h.name
                rows[name], baseline[name], scale = {k: r[k] for k in METRIC_KEYS}, r["bicubic"], r["scale"]
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
    else:
        for h, s in _pairs(sr, hr) if sr.is_dir() else [(hr, sr)]:
            r = evaluate_pair(s, h, scale, **kw)
            rows[h.stem if hr.is_dir() else s.name] = {k: r[k] for k in METRIC_KEYS}
    if hr.is_dir():
        for table in (rows, baseline) if baseline else (rows,):
            first = next(iter(table.values()))
            table["mean"] = {k: (sum(r[k] for r in table.values()) / len(table) if first[k] is not None else None)
                             for k in METRIC_KEYS}
        if args.fid:
            from lcmsr.metrics.fid import fid

            rows["mean"]["fid"] = fid(sr, hr, data_range=args.data_range or 255.0, device=device)
    # One table: the model's rows, then the bicubic baseline's.
    shown = dict(rows, **{f"bicubic: {name}": r for name, r in baseline.items()})

    for name, r in shown.items():
        print(f"{name}: " + "  ".join(f"{k.upper()} {_show(v)}" for k, v in r.items()))
    out = {"sr": str(sr) if sr else None, "model": args.model, "hr": str(hr), "scale": scale, "bands": bands,
           "results": rows}
    if args.model:
        out["bicubic"] = baseline
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_finite(out), indent=2, allow_nan=False) + "\n"
        with atomic.AtomicPath(args.json) as tmp:   # an older report stays whole if this run is stopped
            Path(tmp).write_text(text)
    if args.html:
        what = f"{Path(args.model).name} on {hr.name}" if args.model else f"{sr.name} vs {hr.name}"
        write_html_report(args.html, shown, f"LCMSR evaluation: {what}")
    return 0
