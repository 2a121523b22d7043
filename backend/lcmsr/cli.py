"""The `lcmsr` command line: servers and GPUs without QGIS.

Each sub-command lives in ``lcmsr/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a handler
``func(args) -> int``.  Modules are imported only when listed here, and a
command whose optional dependency is missing (GDAL for raster commands) fails
with a message rather than breaking the others.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# (module, what it provides) — order is the order of `lcmsr --help`.
COMMANDS = [
    "sr",            # super-resolve an image or a georeferenced raster
    "degrade",       # make the LR raster of an HR raster (LR/HR pairs)
    "train",         # train-autoencoder, train-consistency, train-decoder
    "evaluate",      # eval: PSNR / SSIM / LPIPS / FID
    "info",          # info MODEL, diagnostics
    "domain",        # set-domain: what imagery a model is for
]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcmsr", description="Single-step latent consistency super-resolution of remote-sensing imagery.")
    parser.add_argument("--version", action="version", version=f"lcmsr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"lcmsr.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("lcmsr.commands"):
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .progress import Cancelled

    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("lcmsr: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("lcmsr: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, PermissionError, RuntimeError, OSError) as exc:
        if args.verbose:
            raise
        print(f"lcmsr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
