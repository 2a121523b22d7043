#!/usr/bin/env python3
"""Each model's default sampler, chosen by one stated rule from its validation-split figures and
written into the model file (ModelInfo.default_sampler; `lcmsr info` shows it).

THE RULE: among the samplers measured on the model's validation split, the one with the highest PSNR
whose LPIPS is at most 0.6 x bicubic's (the project's perceptual gate); when none is, the one with the
lowest LPIPS.  Ties (within 0.005 dB) go to fewer model calls.

The figures are the evaluation files the model cards cite:

* ``scripts/eval_model.py --json`` (aerial: ``eval_validation.json``): ``mean`` per method;
* ``scripts/eval_domain.py --json`` (satellite: ``eval_satellite_validation.json``): a list of scenes with
  ``bicubic``, ``one step``, ``faithful`` (and ``N steps``), averaged over the scenes.

  .venv/bin/python scripts/choose_sampler.py --model resources/models/lcmsr_x4_rgb_small.safetensors \
      --eval resources/models/eval_validation.json [--write]

Without --write it only prints the table and the choice.  --write rewrites the model file in place
(atomically, its weights' storage kept), so rerun it after a model is retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

RULE = ("highest validation PSNR among the samplers whose LPIPS is at most 0.6x bicubic's; if none is, the "
        "lowest LPIPS (scripts/choose_sampler.py)")
LPIPS_CAP = 0.6
# eval_model.py's method names -> (sampler, steps)
_EVAL_MODEL = {"faithful (CondNet latent, no noise)": ("faithful", 1), "LCMSR, 1 step": ("consistency", 1)}


def _sampler_of(name: str):
    if name in _EVAL_MODEL:
        return _EVAL_MODEL[name]
    if name in ("one step",):
        return ("consistency", 1)
    if name == "faithful":
        return ("faithful", 1)
    m = re.fullmatch(r"(?:LCMSR, )?(\d)[- ]steps?(?: consistency)?", name)
    if m:
        return ("consistency", int(m.group(1)))
    return None


def measured(path: str) -> tuple[dict, dict]:
    """({(sampler, steps): {psnr, ssim, lpips}}, bicubic's) from an evaluation JSON of either script."""
    doc = json.loads(Path(path).read_text())
    if isinstance(doc, dict) and "mean" in doc:
        table = doc["mean"]
    elif isinstance(doc, list) and doc:
        names = {k for scene in doc for k, v in scene.items() if isinstance(v, dict) and "psnr" in v}
        table = {n: {m: sum(s[n][m] for s in doc) / len(doc) for m in ("psnr", "ssim", "lpips")}
                 for n in names if all(n in s for s in doc)}
    else:
        raise SystemExit(f"{path}: not an evaluation file of scripts/eval_model.py or scripts/eval_domain.py")
    if "bicubic" not in table:
        raise SystemExit(f"{path}: has no bicubic figures")
    out = {}
    for name, figures in table.items():
        key = _sampler_of(name)
        if key is not None:
            out[key] = figures
    if not out:
        raise SystemExit(f"{path}: names no sampler this script knows")
    return out, table["bicubic"]


def choose(figures: dict, bicubic: dict) -> tuple[tuple[str, int], str]:
    """The rule (module docstring): ((sampler, steps), one line saying why)."""
    cap = LPIPS_CAP * bicubic["lpips"]
    passing = [k for k, f in figures.items() if f["lpips"] <= cap]
    cost = lambda k: 0 if k[0] == "faithful" else k[1]   # noqa: E731  (model calls beyond CondNet)
    if passing:
        best = max(passing, key=lambda k: (round(figures[k]["psnr"] / 0.005), -cost(k)))
        why = f"the highest PSNR with LPIPS <= {LPIPS_CAP}x bicubic's ({cap:.4f})"
    else:
        best = min(figures, key=lambda k: (figures[k]["lpips"], cost(k)))
        why = f"no sampler has LPIPS <= {LPIPS_CAP}x bicubic's ({cap:.4f}): the lowest LPIPS"
    return best, why


def label(key) -> str:
    sampler, steps = key
    return "faithful" if sampler == "faithful" else f"{sampler}, {steps} step{'s' if steps > 1 else ''}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--eval", required=True, help="the model's validation evaluation JSON")
    p.add_argument("--write", action="store_true", help="write the choice into the model file")
    a = p.parse_args(argv)
    figures, bicubic = measured(a.eval)
    best, why = choose(figures, bicubic)
    print(f"| sampler | PSNR (dB) | vs bicubic | LPIPS | x bicubic | |\n|---|---:|---:|---:|---:|---|")
    print(f"| bicubic | {bicubic['psnr']:.2f} | | {bicubic['lpips']:.4f} | | |")
    for key, f in sorted(figures.items(), key=lambda kv: (kv[0][0] != "faithful", kv[0][1])):
        mark = "**default**" if key == best else ""
        print(f"| {label(key)} | {f['psnr']:.2f} | {f['psnr'] - bicubic['psnr']:+.2f} dB | {f['lpips']:.4f} | "
              f"{f['lpips'] / bicubic['lpips']:.2f} | {mark} |")
    summary = "; ".join(f"{label(k)} {f['psnr'] - bicubic['psnr']:+.2f} dB, LPIPS x{f['lpips'] / bicubic['lpips']:.2f}"
                        for k, f in sorted(figures.items()))
    reason = f"{why}, on {os.path.basename(a.eval)}: {summary}"
    print(f"\nchosen: {label(best)} -- {reason}")
    if a.write:
        from lcmsr.weights import update_info

        update_info(a.model, default_sampler={"sampler": best[0], "steps": best[1], "rule": RULE, "why": reason})
        print(f"{a.model}: default sampler {label(best)} written (weights kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
