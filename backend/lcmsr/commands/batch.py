"""``lcmsr batch INPUT... --out-dir D``: many rasters, one resumable command, on this machine or a Dask cluster."""
from __future__ import annotations

import argparse

from ..choices import EXECUTORS
from ._args import positive as _positive
from .sr import add_sr_options, sr_options


def _unit_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of LR pixels, got '{text}'") from None
    if value != 0 and value < 64:
        raise argparse.ArgumentTypeError(f"a unit is at least 64 LR pixels a side (or 0: one per raster), got {value}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="super-resolve many rasters into a folder: resumable, on this machine or a Dask cluster",
        description="Super-resolve every INPUT into --out-dir: one output per raster (<name>_sr.tif, a Cloud "
                    "Optimized GeoTIFF by default), a VRT mosaic with overviews per CRS of the outputs "
                    "(mosaic.vrt), and a JSON-lines job log (lcmsr-batch.jsonl). INPUT is a raster file, a folder "
                    "(searched recursively for rasters), a text list (.txt: one path a line, # comments) or a STAC "
                    "ItemCollection (.json) of local assets, whose items' assets (--assets, or every data asset) "
                    "are stacked into one raster. Run it again after any interruption: finished work whose files "
                    "still match their logged SHA-256 is kept, the rest is done. A bad item (missing, unreadable, "
                    "outside every model's domain) is reported in one line; the others complete and the exit "
                    "status is 1.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raster files, folders, .txt lists, STAC .json")
    p.add_argument("--out-dir", required=True, metavar="D", help="output folder (created if missing)")
    p.add_argument("--executor", default="local", choices=EXECUTORS,
                   help="local: this machine (--workers processes); dask: a Dask cluster at --address, or a local "
                        "one of --workers workers (one per GPU on a CUDA machine) (default %(default)s)")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="local processes or local Dask workers, each with one thread (default %(default)s: "
                        "one, in this process, with all threads)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="the Dask scheduler to use, e.g. tcp://10.0.0.5:8786 (see the README's cluster recipes)")
    p.add_argument("--unit-size", type=_unit_size, default=0, metavar="PX",
                   help="split each raster into units of PX LR pixels a side (rounded up to a multiple of 256), run "
                        "as separate tasks and blended as one run would (0: one unit per raster; default %(default)s)")
    p.add_argument("--assets", default=None, metavar="A,B,...",
                   help="STAC inputs: the asset keys or band names to stack, in the model's order, e.g. "
                        "B04,B03,B02,B08 (default: every data asset)")
    add_sr_options(p, what="an input")
    p.add_argument("--no-cog", dest="cog", action="store_false",
                   help="plain tiled GeoTIFF outputs instead of Cloud Optimized GeoTIFFs")
    p.add_argument("--no-mosaic", dest="mosaic", action="store_false", help="no VRT mosaic of the outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, paths=io_paths, cog=True)


def io_paths(args):
    """(outputs, inputs): the output folder may not be an input; stale temporary files in it are swept."""
    return [("--out-dir", args.out_dir)], [("INPUT", path) for path in args.inputs]


def run(args) -> int:
    from ..cli import CliError
    from ..progress import TqdmProgress
    from ..sr.batch import BatchInputError, run_batch
    from ..sr.executors import ExecutorError

    if args.address and args.executor != "dask":
        raise CliError("--address names a Dask scheduler: use it with --executor dask")
    assets = [a.strip() for a in args.assets.split(",") if a.strip()] if args.assets else None
    try:
        options = sr_options(args)
    except ImportError as exc:
        if "osgeo" in str(exc) or "gdal" in str(exc).lower():
            raise CliError(f"'lcmsr batch' needs GDAL's Python bindings (osgeo), which are not installed: {exc}") \
                from None
        raise
    progress = TqdmProgress(desc="batch", disable=True if args.quiet else None)
    try:
        result = run_batch(args.inputs, args.out_dir, args.model, options, executor=args.executor,
                           workers=args.workers, address=args.address, unit_size=args.unit_size, assets=assets,
                           mosaic=args.mosaic, progress=progress)
    except (BatchInputError, ExecutorError) as exc:
        raise CliError(str(exc)) from None
    finally:
        progress.close()
    done = sum(r.status == "done" for r in result.items)
    skipped = sum(r.status == "skipped" for r in result.items)
    for r in result.failed:
        print(f"FAILED {r.origin}: {r.error}")
    print(f"{done} done, {skipped} done before, {len(result.failed)} failed, in {result.seconds:.1f} s "
          f"({result.executor}); log {result.log}")
    for m in result.mosaics:
        print(f"mosaic {m.path} ({len(m.members)} raster(s), {m.crs})")
    return result.exit_status
