"""``lcmsr degrade IN OUT --scale 4``: the LR raster of an HR raster (for LR/HR pairs)."""
from __future__ import annotations

from ..choices import SCALES
from ._args import bands as _bands


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "degrade", help="make the LR raster of an HR raster (antialiased bicubic)",
        description="Downsample IN by SCALE with antialiased bicubic resampling, exactly as the training "
                    "pairs are made, into OUT (pixel size times SCALE, nodata kept per band), in the format its "
                    "extension names, under the rules of `lcmsr sr` (formats that write files named after OUT and "
                    "GeoPackages with other layers are refused).")
    p.add_argument("input", metavar="IN", help="HR raster")
    p.add_argument("output", metavar="OUT", help="LR raster to write (atomically); .tif for a GeoTIFF")
    p.add_argument("--scale", type=int, default=4, choices=SCALES, help="downsampling factor (default 4)")
    p.add_argument("--bands", type=_bands, default=None, help="1-based bands to keep (default: all but alpha)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, paths=io_paths)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli)."""
    from ..paths import raster_outputs

    return raster_outputs("OUT", args.output), [("IN", args.input)]


def run(args) -> int:
    from ..cli import CliError
    from ..progress import TqdmProgress

    try:
        from ..raster.degrade import degrade
    except ImportError as exc:
        if "osgeo" in str(exc) or "gdal" in str(exc).lower():
            raise CliError(f"'lcmsr degrade' needs GDAL's Python bindings (osgeo), which are not installed: "
                           f"{exc}") from None
        raise
    progress = TqdmProgress(desc="degrade", disable=True if args.quiet else None)
    try:
        result = degrade(args.input, args.output, args.scale, progress, bands=args.bands)
    finally:
        progress.close()
    print(f"{result.path}: {result.width}x{result.height}, {result.seconds:.1f} s")
    return 0
