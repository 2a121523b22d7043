"""Fault-injection and fuzz suite of LCMSR; writes docs/RELIABILITY.md.

    python scripts/robustness.py [--quick] [--out docs/RELIABILITY.md] [--seed 0] [--keep DIR]

Exit status 0 when every case ended in a correct output or a clear error, 1 when
any crashed, hung, lost or left a file, or had the wrong outcome.  The full run
takes about 16 minutes on 2 cores; --quick (a few minutes) is what ``make test`` runs.
The cases live in tests/robustness/robustness_cases.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "robustness"))

FAMILIES = ("rasters", "weights", "train", "sr", "cancel", "paths", "modelfile", "corruption", "trainfolder",
            "outputs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small subset that runs inside make test")
    parser.add_argument("--out", default=str(REPO / "docs" / "RELIABILITY.md"), help="report to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill times, flips and cuts")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    parser.add_argument("--only", default=",".join(FAMILIES),
                        help=f"comma-separated families to run (default all: {','.join(FAMILIES)})")
    args = parser.parse_args(argv)
    families = [f for f in args.only.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import torch

    torch.set_num_threads(1)
    from robustness_cases import BAD, run_suite

    command = "python scripts/robustness.py" + (" --quick" if args.quick else "") + \
        (f" --seed {args.seed}" if args.seed else "") + (f" --only {args.only}" if args.only != ",".join(FAMILIES)
                                                         else "")
    suite = run_suite(args.quick, Path(args.out), Path(args.keep) if args.keep else None, args.seed, command,
                      families)
    bad = suite.bad()
    total = sum(len(f.results) for f in suite.families.values())
    print(f"{total} cases, {len(bad)} {'/'.join(BAD)}; report: {args.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
