"""The `lcmsr` command line: servers and GPUs without QGIS.

Each sub-command lives in ``lcmsr/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a handler
``func(args) -> int``, and, for a command that writes files, ``paths`` to
``paths(args) -> (outputs, inputs)``: before the handler runs, the output-path
rule (:func:`lcmsr.paths.check_outputs`) refuses an output that is an input, and
the folders written into are swept of what killed runs left there
(:func:`lcmsr.atomic.sweep_stale`).  SIGTERM and SIGHUP stop a command the way a
cancel does (its temporary files removed), say so in one line and exit with
128 + the signal's number; the training commands handle signals themselves.
Modules are imported only when listed here, and a command whose optional
dependency is missing (GDAL for raster commands) fails with a message rather
than breaking the others.
"""
from __future__ import annotations

import argparse
import importlib
import contextlib
import logging
import signal
import sys

from . import __version__
from .text import safe_text

# (module, what it provides) — order is the order of `lcmsr --help`.
COMMANDS = [
    "sr",            # super-resolve an image or a georeferenced raster
    "batch",         # many rasters into a folder: resumable, local or on a Dask cluster
    "degrade",       # make the LR raster of an HR raster (LR/HR pairs)
    "train",         # train-autoencoder, train-consistency, train-decoder
    "finetune",      # finetune: a finished model continued on the user's imagery
    "evaluate",      # eval: PSNR / SSIM / LPIPS / FID
    "info",          # info MODEL, diagnostics
    "domain",        # set-domain: what imagery a model is for
    "run_job",       # run-job: one job of lcmsr.jobs, events as JSON lines (the QGIS plugin's worker)
]


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Stopped(BaseException):
    """SIGTERM or SIGHUP arrived.  Raised in the main thread, it unwinds like Ctrl-C (every ``with`` and
    ``finally`` removes its temporary files); not an Exception, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def _stop_on_signals():
    """SIGTERM/SIGHUP raise :class:`Stopped` in the main thread meanwhile; the previous handlers return after."""
    def handler(signum, frame):
        for s in _STOP_SIGNALS:   # a second signal must not interrupt the clean-up the first one started
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in _STOP_SIGNALS}
    except ValueError:   # not the main thread (lcmsr.cli.main called from a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _prepare(args) -> None:
    """The output-path rule and the start-up sweep, for a command that declares its files."""
    from .atomic import sweep_stale
    from .paths import check_outputs, output_folders

    outputs, inputs = args.paths(args)
    check_outputs(outputs, inputs)
    for folder in output_folders(outputs):
        for entry in sweep_stale(folder):
            logging.info(safe_text(f"removed {entry}, left in {folder} by an interrupted lcmsr run"))


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

    signals = _stop_on_signals() if getattr(args, "stop_on_signals", True) else contextlib.nullcontext()
    try:
        with signals:
            if getattr(args, "paths", None):
                _prepare(args)
            return int(args.func(args) or 0)
    except Stopped as exc:
        print(f"lcmsr: {exc}; its temporary files were removed", file=sys.stderr)
        return 128 + exc.signum
    except Cancelled:
        print("lcmsr: cancelled", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("lcmsr: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, FileNotFoundError, PermissionError, RuntimeError, OSError, MemoryError) as exc:
        if args.verbose:
            raise
        # One line whatever the message holds: a path with a newline or an escape code is shown escaped.
        print(f"lcmsr: error: {safe_text(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
