"""``lcmsr set-domain IN OUT --preset NAME``: write what imagery a model is for into its file.

The recipes of the shipped models end with it (scripts/train_*.sh): training knows the data, the
recipe knows what the data stands for (sensor, band roles, pixel sizes).  ``--storage int8`` stores the
larger weights as int8 with a scale per output channel, a quarter of float32 (the plugin zip's 25 MB limit
holds every shipped model so); ``--fp16`` (``--storage fp16``) halves it.
"""
from __future__ import annotations

import json


def register(subparsers) -> None:
    from ..domain import PRESETS

    p = subparsers.add_parser("set-domain", help="write a model's domain (what imagery it is for) into its file",
                              description="Copy model file IN to OUT with the given domain: sensor family, "
                                          "band roles, data types, normalisation and pixel-size range.")
    p.add_argument("input", metavar="IN", help="model file (.safetensors)")
    p.add_argument("output", metavar="OUT", help="model file to write (atomically; may not be IN)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=sorted(PRESETS), help="a shipped model's domain")
    g.add_argument("--json", metavar="FILE", help="a domain as JSON (the keys of `lcmsr info --json`'s domain)")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--storage", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="how the weights are stored: fp32; fp16 (half the size); int8 with a scale per output "
                        "channel for the larger weights, fp16 for the rest (a quarter; the shipped models' "
                        "outputs move by at most 2 grey levels) (default %(default)s)")
    s.add_argument("--fp16", dest="storage", action="store_const", const="fp16", help="the same as --storage fp16")
    p.set_defaults(func=run, paths=io_paths)


def io_paths(args):
    """(outputs, inputs) for the output-path rule (lcmsr.paths) and the start-up sweep (lcmsr.cli)."""
    return [("OUT", args.output)], [("IN", args.input), ("the domain file (--json)", args.json)]


def run(args) -> int:
    import copy

    from ..domain import PRESETS, Domain
    from ..weights import load_model, save_model

    if args.preset:
        domain = copy.deepcopy(PRESETS[args.preset])
    else:
        with open(args.json, encoding="utf-8") as f:
            domain = Domain.from_dict(json.load(f))
    model = load_model(args.input)
    info = copy.deepcopy(model.info)
    info.domain = domain
    info.training = dict(info.training, storage=args.storage)
    info.validate()
    save_model(args.output, model, info, storage=args.storage)
    print(f"{args.output}: {domain.summary()}")
    return 0
