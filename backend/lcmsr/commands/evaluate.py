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

import math

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
    p.add_argument("--html", default=None, help="write an HTML report with pictures to this file; the pictures are "
                                                "also written beside it as REPORT_<image>_<picture>.png (REPORT: "
                                                "the file's name without .html; <image> only for folders), and "
                                                "none of these may be an input")
    p.add_argument("--work-dir", default=None,
                   help="with --model: keep the LR and SR rasters here (default: a temporary folder, removed)")
    p.set_defaults(func=run, paths=io_paths)


def request_from(args):
    """The command line as an :class:`~lcmsr.metrics.protocol.EvalRequest` (the protocol's checks, outputs and
    scoring are the library's, shared with the plugin)."""
    from lcmsr.metrics.protocol import EvalRequest

    return EvalRequest(sr=args.sr, model=args.model, hr=args.hr, lr=args.lr, uncertainty=args.uncertainty,
                       samples=args.samples, scale=args.scale, bands=args.bands, lr_bands=args.lr_bands,
                       data_range=args.data_range, lpips=not args.no_lpips, fid=args.fid, device=args.device,
                       json=args.json, html=args.html, work_dir=args.work_dir)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli): the
    reports, their pictures and the work folder against the rasters (every image of a folder) and the model."""
    request = request_from(args)
    return request.outputs(), request.inputs()


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(args) -> int:
    from lcmsr.metrics.protocol import evaluate, shown_rows, write_reports

    request = request_from(args)
    checked = request.check()    # everything that can be checked before the computation
    result = evaluate(request, checked=checked)
    for name, r in shown_rows(result).items():
        print(f"{name}: " + "  ".join(f"{k.upper()} {_show(v)}" for k, v in r.items()))
    for note in result.notes:
        print(f"note: {note}")
    write_reports(request, result)
    return 0
