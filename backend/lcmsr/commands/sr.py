"""``lcmsr sr IN OUT --model M``: super-resolve an image or a georeferenced raster."""
from __future__ import annotations

from ..choices import OUTPUT_TYPES, PRECISIONS, SAMPLER_ALIASES, SAMPLER_NAMES, SR_DEFAULTS
from ._args import bands as _bands
from ._args import positive as _positive


def _natural(text: str) -> int:
    """A tile or batch: a positive integer, or 0 for the automatic choice."""
    return 0 if text.strip() == "0" else _positive(text)


def _gigabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e6:
        import argparse

        raise argparse.ArgumentTypeError(f"'{text}' is not a positive number of GB")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sr", help="super-resolve an image or a georeferenced raster",
        description="Super-resolve IN (any raster GDAL reads: GeoTIFF, PNG, JPEG, ...) into OUT, in the format its "
                    "extension names (.tif GeoTIFF, .img Erdas Imagine, .gpkg GeoPackage, .png, .jpg 8-bit, or any "
                    "other GDAL raster driver that writes nothing but OUT and its .aux.xml/.ovr/.msk side-cars: "
                    "drivers that write files named after OUT, such as .ers, .bil, .rst, are refused before any "
                    "work). An existing GeoPackage OUT is replaced only when it holds nothing but one raster table "
                    "(a former output); one with other layers is refused: write to a new .gpkg file. Nodata is kept "
                    "per band; where the format keeps one nodata value per file (GeoTIFF, GeoPackage) and IN's bands "
                    "differ, a float32 OUT gets NaN as nodata in every band and an integer one is refused (write "
                    ".img). The output keeps the CRS, metadata, nodata, band "
                    "descriptions and colour interpretation of IN (not its band statistics) and records the model "
                    "file, its SHA-256, scale, sampler, steps and seed as LCMSR_* metadata; its pixels are SCALE "
                    "times smaller.")
    p.add_argument("input", metavar="IN", help="input raster or image")
    p.add_argument("output", metavar="OUT", help="output raster; its extension names the format (written atomically)")
    add_sr_options(p)
    d = SR_DEFAULTS
    p.add_argument("--uncertainty", default=None, metavar="UNC",
                   help="also write UNC: one Float32 band on OUT's grid, the per-pixel standard deviation of "
                        "--samples samples drawn with different noise (root-mean-square over the bands, in OUT's "
                        "units), nodata where IN is; OUT stays the first sample, identical to a run without it. "
                        "Costs about K model calls per tile; not with the faithful sampler (it draws no noise)")
    p.add_argument("--samples", type=_positive, default=d["samples"], metavar="K",
                   help="samples for --uncertainty (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.epilog = ("Several processes, GPUs or machines: run the raster as units, "
                "lcmsr batch IN --out-dir DIR --unit-size 2048 --executor dask [--workers N | --address ADDR].")
    p.set_defaults(func=run, paths=io_paths)


def add_sr_options(p, what: str = "IN") -> None:
    """The options of a super-resolution run, shared by `lcmsr sr` and `lcmsr batch` (one definition)."""
    d = SR_DEFAULTS
    p.add_argument("--model", default=None, metavar="M",
                   help="model file (.safetensors); default: the bundled or registered (LCMSR_MODELS) model "
                        f"whose domain fits {what} (bands by role, data type, pixel size), said in the log")
    p.add_argument("--ignore-domain", action="store_true",
                   help=f"run even when {what} is outside the model's domain (pixel size, data type); it still warns")
    p.add_argument("--bands", type=_bands, default=None,
                   help="1-based input bands in the model's band order, e.g. 3,2,1 (default: all but alpha)")
    p.add_argument("--band-roles", default=None, metavar="ROLES",
                   help="what each band of the input is, in band order, e.g. red,green,blue,nir ('?' for a band "
                        "whose role is unknown): used over the file's band names and colour interpretation, and "
                        "needed for a model that takes bands in a fixed order (the joint R,G,B,NIR one) when the "
                        "file does not say; roles only guessed from a sensor's usual stack order choose the "
                        "band-wise model")
    p.add_argument("--tile", type=_natural, default=d["tile"],
                   help="LR pixels per tile side (default: chosen on the CPU to fit --memory-budget, 256 on CUDA)")
    p.add_argument("--overlap", type=int, default=d["overlap"],
                   help="LR pixels shared by neighbouring tiles (default %(default)s)")
    p.add_argument("--batch", type=_natural, default=d["batch"],
                   help="tiles per model call (default: chosen on the CPU to fit --memory-budget, 8 on CUDA)")
    p.add_argument("--memory-budget", type=_gigabytes, default=d["memory_budget"], metavar="GB",
                   help="CPU: memory the job may add to the process (the model's working memory, tiles in "
                        "flight, blending), at most half of what the system has available; the default tile and "
                        "batch are chosen to fit it (default %(default)s GB, which keeps the command under 1.5 GB)")
    p.add_argument("--device", default=d["device"], help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                   help="auto: bf16 on a CPU with native bf16 (AVX512-BF16/AMX, about 2x fp32), fp32 elsewhere "
                        "and on CUDA; bf16: bf16 autocast on CUDA or a CPU with native bf16, else fp32 with a "
                        "warning (default %(default)s)")
    p.add_argument("--steps", type=_positive, default=None,
                   help=f"sampling steps (default: the model's default sampler's, else {d['steps']}: the method's "
                        f"single step)")
    p.add_argument("--sampler", default=None, choices=SAMPLER_NAMES + tuple(SAMPLER_ALIASES),
                   help="consistency (the method: 1-4 steps), faithful (the CondNet regression latent, no noise: "
                        "never invents detail), or the ddim/ddpm multi-step baselines; condnet = faithful "
                        f"(default: the one the model file names as measuring best on its validation "
                        f"split, `lcmsr info` shows it; else {d['sampler']})")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="noise seed: the same seed gives the same output (default %(default)s)")
    p.add_argument("--output-type", default=d["output_type"], choices=OUTPUT_TYPES,
                   help="data type of OUT: the input's (rounded, clipped) or float32 (default %(default)s)")
    p.add_argument("--cog", action="store_true", default=d["cog"],
                   help="write a Cloud Optimized GeoTIFF with overviews (OUT must be .tif)")
    p.add_argument("--overviews", action="store_true", default=d["overviews"],
                   help="build overviews (average of 2x2, 4x4 ... down to one 256-pixel block) into OUT, "
                        "or into a .ovr beside it where the format cannot hold them")
    p.add_argument("--co", action="append", default=[], metavar="NAME=VALUE", dest="creation_options",
                   help="a creation option of OUT's GDAL driver (repeatable), e.g. --co COMPRESS=ZSTD; it replaces "
                        "the default of the same name (GeoTIFF: tiled 256, DEFLATE with predictor)")
    p.add_argument("--lr-consistency", type=int, default=d["lr_consistency"], metavar="N",
                   help="back-projection iterations that make OUT, degraded again with the project's antialiased "
                        "bicubic, give back IN (0 = off; default %(default)s)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks (first call compiles; falls back to eager, saying so)")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA: replay each tile shape as a CUDA graph")


def sr_options(args, **extra):
    """SROptions from the shared options (``extra``: what only one command has, e.g. the uncertainty raster)."""
    from ..raster.pipeline import SROptions

    return SROptions(bands=args.bands, band_roles=args.band_roles, tile=args.tile, overlap=args.overlap, batch=args.batch,
                     memory_budget=args.memory_budget,
                     device=args.device, precision=args.precision,
                     # None: not given (the pipeline then runs the model file's default sampler)
                     steps=args.steps, sampler=args.sampler,
                     seed=args.seed, output_type=args.output_type, cog=args.cog, overviews=args.overviews,
                     creation_options=args.creation_options,
                     compile=args.compile, cuda_graphs=args.cuda_graphs, ignore_domain=args.ignore_domain,
                     lr_consistency=args.lr_consistency, **extra)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli)."""
    from ..paths import raster_outputs

    outputs = raster_outputs("OUT", args.output)
    if args.uncertainty:
        outputs += raster_outputs("--uncertainty", args.uncertainty)
    return outputs, [("IN", args.input), ("the model file (--model)", args.model)]


def run(args) -> int:
    from ..cli import CliError
    from ..progress import TqdmProgress

    try:
        from ..raster.pipeline import superresolve
    except ImportError as exc:
        if "osgeo" in str(exc) or "gdal" in str(exc).lower():
            raise CliError(f"'lcmsr sr' needs GDAL's Python bindings (osgeo), which are not installed: {exc}") from None
        raise
    from ..runtime import world_from_env

    if world_from_env() is not None:
        # Sharding one raster over torchrun ranks (rank 0 reading and writing everything) is retired:
        # units of a scene run by an executor read and write their own parts (docs/DESIGN.md, "Scenes").
        raise CliError("'lcmsr sr' runs in one process; for several GPUs or machines run the raster as units: "
                       "lcmsr batch IN --out-dir DIR --executor dask [--workers N | --address ADDR]")
    options = sr_options(args, uncertainty=args.uncertainty, samples=args.samples)
    progress = TqdmProgress(desc="sr", disable=True if args.quiet else None)
    try:
        result = superresolve(args.input, args.output, args.model, options, progress)
    finally:
        progress.close()
    print(f"{result.path}: {result.width}x{result.height}, {result.tiles} tile(s) "
          f"({result.skipped_tiles} skipped as nodata), {result.device} {result.precision}, "
          f"{result.seconds:.1f} s")
    if result.uncertainty:
        print(f"{result.uncertainty}: uncertainty (spread of {args.samples} samples)")
    return 0
