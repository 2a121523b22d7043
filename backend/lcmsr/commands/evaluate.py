"""`lcmsr eval`: PSNR / SSIM / LPIPS (and FID) of SR results against HR references, and whether to trust them.

``--sr`` and ``--hr`` are two rasters, or two folders whose images are paired by
file name (the paper's protocol: per-image metrics averaged over the test set,
FID between the two folders).  ``--lr`` adds the LR input the SR was made from
(a raster, or a folder paired by name): LR-consistency (|degrade(SR) - LR|) and the
spectral angle to the bicubic-enlarged input; with ``--lr``, ``--hr`` is optional
(no reference: no PSNR / SSIM / LPIPS, and the output says so).  ``--uncertainty``
adds an uncertainty raster on the SR grid (its map, and with ``--hr`` its Spearman
correlation with the error per 16x16 block).  ``--model`` instead of ``--sr`` degrades
each HR raster by the model's scale, super-resolves it and scores the result
(:func:`lcmsr.metrics.evaluate.evaluate_model`, which the plugin runs too), next to
bicubic upsampling of the same LR (the ``bicubic`` rows and JSON key).  ``--html``
adds pictures: crops side by side, the error heat map, the uncertainty map (also
written as PNG files beside the report).
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
    p = subparsers.add_parser("eval", help="PSNR / SSIM / LPIPS / FID, LR-consistency and spectral angle of SR",
                              description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--sr", help="SR raster, or folder of SR images")
    given.add_argument("--model", metavar="M", help="model file: degrade each HR raster by its scale as in training, "
                                                    "super-resolve it with M and score that")
    p.add_argument("--hr", default=None, help="HR reference raster, or folder of HR images with the same file names "
                                              "(needed with --model; with --sr, --hr or --lr or both)")
    p.add_argument("--lr", default=None, help="with --sr: the LR input the SR was made from (raster, or folder with "
                                              "the same file names), for LR-consistency and the spectral angle to "
                                              "the input")
    p.add_argument("--uncertainty", default=None, metavar="U",
                   help="with --sr: uncertainty raster on the SR grid (`lcmsr sr --uncertainty`), or folder with the "
                        "same file names; its map goes into --html, its correlation with the error (needs --hr) "
                        "into the results")
    p.add_argument("--samples", type=int, default=0, metavar="K",
                   help="with --model: also draw K noise samples per tile (as `lcmsr sr --uncertainty --samples K`, "
                        "about K times the SR's time): the uncertainty map goes into --html, its correlation with the "
                        "error into the results (default: none)")
    p.add_argument("--scale", type=int, default=None,
                   help="SR factor = border crop in pixels for PSNR/SSIM (default: SR size / LR size with --lr, "
                        "else 4; with --model the model's)")
    p.add_argument("--bands", type=_bands, default=None,
                   help="1-based bands to compare, e.g. 1,2,3; with --model the HR bands in the model's order "
                        "(default: all but alpha bands)")
    p.add_argument("--lr-bands", type=_bands, default=None,
                   help="1-based bands of --lr in the SR's order (default: as --bands)")
    p.add_argument("--data-range", type=float, default=None,
                   help="peak value range (default: 255 for 8-bit, else the min-max range of HR's valid "
                        "values); nodata pixels of SR, HR, LR and uncertainty rasters are left out of every metric")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--fid", action="store_true", help="also FID between the two folders (needs fetch_weights --fid)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] for LPIPS/FID and --model's SR (default auto)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--html", default=None, help="write an HTML report with pictures to this file (the pictures are "
                                                "also written beside it as PNG files)")
    p.add_argument("--work-dir", default=None,
                   help="with --model: keep the LR and SR rasters here (default: a temporary folder, removed)")
    p.set_defaults(func=run, paths=io_paths)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli): the
    reports and the work folder against the rasters (every image of a folder) and the model."""
    from lcmsr.metrics.fid import list_images

    inputs = [("the model file (--model)", args.model)]
    for flag, given in (("--sr", args.sr), ("--hr", args.hr), ("--lr", args.lr), ("--uncertainty", args.uncertainty)):
        inputs.append((f"the {flag} {'folder' if given and Path(given).is_dir() else 'raster'}", given))
        if given and Path(given).is_dir():
            inputs += [(f"an image of the {flag} folder", p) for p in list_images(Path(given))]
    return [("--json", args.json), ("--html", args.html), ("--work-dir", args.work_dir)], inputs


def _pairs(sr_dir: Path, others: dict) -> list[tuple[str, Path, dict]]:
    """(name, SR image, {flag: image}) for each SR image with a namesake in the first of ``others``
    (--hr, else --lr); every other folder given must hold that name too."""
    from lcmsr.metrics.fid import list_images

    sr = {p.stem: p for p in list_images(sr_dir)}
    found = {flag: {p.stem: p for p in list_images(d)} for flag, d in others.items()}
    first, ref = next(iter(others.items()))
    common = sorted(sr.keys() & found[first].keys())
    if not common:
        raise ValueError(f"no image in {sr_dir} has a namesake in {ref}")
    missing = sorted(found[first].keys() - sr.keys())
    if missing:
        raise ValueError(f"{len(missing)} {first[2:].upper()} image(s) have no SR result in {sr_dir}, "
                         f"e.g. {missing[0]}")
    for flag, images in found.items():
        lacking = [k for k in common if k not in images]
        if lacking:
            raise ValueError(f"the {flag} folder {others[flag]} has no image named {lacking[0]} (as in {sr_dir})")
    return [(k, sr[k], {flag: images[k] for flag, images in found.items()}) for k in common]


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
    from lcmsr.runtime import resolve_device
    from lcmsr.metrics.evaluate import METRIC_KEYS, TRUST_KEYS, evaluate_model, evaluate_pair, write_html_report
    from lcmsr.metrics.fid import list_images

    device = resolve_device(args.device).device
    bands = args.bands
    keys = METRIC_KEYS + TRUST_KEYS
    hr, lr, unc = (Path(p) if p else None for p in (args.hr, args.lr, args.uncertainty))
    sr = Path(args.sr) if args.sr else None
    for p, what in ((sr, "--sr"), (hr, "--hr"), (lr, "--lr"), (unc, "--uncertainty"),
                    (args.model and Path(args.model), "--model")):
        if p and not p.exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    if args.model and (hr is None or lr or unc):
        raise ValueError("--model needs --hr (the reference it degrades) and takes no --lr or --uncertainty "
                         "(--samples K makes the uncertainty raster)")
    if args.samples and not args.model:
        raise ValueError("--samples is for --model (the SR it runs); with --sr give its --uncertainty raster")
    if args.samples and args.samples < 2:
        raise ValueError(f"--samples must be at least 2 (a spread needs two draws), got {args.samples}")
    if sr is not None and hr is None and lr is None:
        raise ValueError("--sr needs --hr (the reference), --lr (the input it was made from), or both")
    base = hr if hr is not None else lr
    for p, flag in ((sr, "--sr"), (lr, "--lr"), (unc, "--uncertainty")):
        if p is not None and p.is_dir() != base.is_dir():
            raise ValueError(f"{flag} and {'--hr' if hr is not None else '--lr'} must both be rasters or both be "
                             "folders")
    if args.fid and (sr is None or not sr.is_dir() or hr is None):
        raise ValueError("--fid compares two sets of images: give folders for --sr and --hr")
    kw = dict(bands=bands, data_range=args.data_range, lpips=not args.no_lpips, device=device)
    pictures = bool(args.html)

    rows, baseline, scale, pics, notes, unit = {}, {}, args.scale, {}, [], None
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
                                   lpips=kw["lpips"], pictures=pictures, device=device, samples=args.samples)
                name = h.stem if hr.is_dir() else h.name
                rows[name], baseline[name], scale = {k: r[k] for k in keys}, r["bicubic"], r["scale"]
                pics[name], unit = r.get("pictures"), r["unit"]
                notes += r["notes"]
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
    else:
        others = {flag: p for flag, p in (("--hr", hr), ("--lr", lr), ("--uncertainty", unc)) if p is not None}
        if sr.is_dir():
            todo = _pairs(sr, others)
        else:
            todo = [(sr.name, sr, others)]
        for name, s, found in todo:
            r = evaluate_pair(s, found.get("--hr"), scale if scale or "--lr" in found else 4, lr=found.get("--lr"),
                              lr_bands=args.lr_bands, uncertainty=found.get("--uncertainty"), pictures=pictures, **kw)
            rows[name], pics[name], unit = {k: r[k] for k in keys}, r.get("pictures"), r["unit"]
            notes += r["notes"]
            scale = scale or r["scale"]
    if base.is_dir():
        for table in (rows, baseline) if baseline else (rows,):
            n = len(table)
            table["mean"] = {k: (sum(r[k] for r in table.values()) / n
                                 if all(r[k] is not None for r in table.values()) else None) for k in keys}
        if args.fid:
            from lcmsr.metrics.fid import fid

            rows["mean"]["fid"] = fid(sr, hr, data_range=args.data_range or 255.0, device=device)
    # One table: the model's rows, then the bicubic baseline's.
    shown = dict(rows, **{f"bicubic: {name}": r for name, r in baseline.items()})
    notes = list(dict.fromkeys(notes))

    for name, r in shown.items():
        print(f"{name}: " + "  ".join(f"{k.upper()} {_show(v)}" for k, v in r.items()))
    for note in notes:
        print(f"note: {note}")
    out = {"sr": str(sr) if sr else None, "model": args.model, "hr": str(hr) if hr else None,
           "lr": str(lr) if lr else None, "uncertainty": str(unc) if unc else None, "scale": scale, "bands": bands,
           "lr_unit": unit, "results": rows, "notes": notes}
    if args.model:
        out["bicubic"] = baseline
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(_finite(out), indent=2, allow_nan=False) + "\n"
        with atomic.AtomicPath(args.json) as tmp:   # an older report stays whole if this run is stopped
            Path(tmp).write_text(text)
    if args.html:
        what = f"{Path(args.model).name} on {hr.name}" if args.model else \
            f"{sr.name} vs {base.name}" if hr is not None else f"{sr.name} (no reference; its input {lr.name})"
        sections = pics if base.is_dir() else {"": next(iter(pics.values()))}
        write_html_report(args.html, shown, f"LCMSR evaluation: {what}", pictures=sections, notes=notes)
    return 0
