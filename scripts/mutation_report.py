"""Summarise a mutmut 3 run made by scripts/mutation.sh: totals per file and one row per mutant
that was not killed (its one-line change, and the family and reason found for it in a families file).

Usage (mutmut must be importable: PYTHONPATH=<OUT>/mutmut-pkgs):
    python scripts/mutation_report.py OUT/run [--families docs/mutation_families.tsv] [--totals] [--merge BASE/run]

``--merge``: a mutant this run did not check takes its verdict from BASE, an earlier run of the same
code (for a rerun of only the survivors after tests were added: what BASE's tests killed stays killed).
``--killed-by OTHER``: a mutant that OTHER killed counts as killed; OTHER is a run folder (the same code judged
by more test files) or a text file of ``name exit-status`` lines from running a test with the mutant switched on
(``MUTANT_UNDER_TEST=name pytest ...`` inside OTHER/run/mutants; status 1: the test failed, so the mutant is killed;
status 0, or survived in OTHER, turns a timeout or "no tests" into survived: the tests ran and passed).

The families file has one rule per line, ``glob<TAB>regex<TAB>family<TAB>reason``; the first rule whose glob
matches a mutant's name (e.g. ``lcmsr.train.stage2.*finish*``) and whose regex is found in its change
(``old → new``; empty matches all) classifies it.
"""
from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import re
import sys
from pathlib import Path

STATUS = {0: "survived", 1: "killed", 3: "killed", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", None: "not checked"}
SHOWN = ("survived", "no tests", "timeout", "suspicious", "not checked")


def load_rules(path):
    rules = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            glob, pattern, family, reason = (line.split("\t") + ["", "", ""])[:4]
            rules.append((glob.strip(), re.compile(pattern.strip()), family.strip(), reason.strip()))
    return rules


def change(name, path):
    """The mutated line(s) as 'old → new' from mutmut's diff of the function."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=path).splitlines()[2:]
    old = " ".join(x[1:].strip() for x in diff if x.startswith("-"))
    new = " ".join(x[1:].strip() for x in diff if x.startswith("+"))
    return f"`{old}` → `{new}`".replace("|", "\\|")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="the scratch folder mutmut ran in (OUT/run)")
    ap.add_argument("--families", help="TSV of glob, family, reason")
    ap.add_argument("--totals", action="store_true", help="only the totals per file")
    ap.add_argument("--merge", help="an earlier run of the same code whose verdicts fill the unchecked ones")
    ap.add_argument("--killed-by", action="append", default=[], help="a run with more tests: its kills count")
    args = ap.parse_args()
    rules = load_rules(args.families) if args.families else []
    def verdicts(run):
        out = {}
        for meta in Path(run, "mutants").rglob("*.meta"):
            out.update(json.loads(meta.read_text())["exit_code_by_key"])
        return out

    base = verdicts(args.merge) if args.merge else {}
    def kills(other):
        if Path(other).is_file():
            rows = (line.split() for line in Path(other).read_text().splitlines() if line.strip())
            return {r[0] for r in rows if r[1:] == ["1"]}
        return {k for k, c in verdicts(other).items() if c == 1}

    def passes(other):
        if not Path(other).is_file():
            return {k for k, c in verdicts(other).items() if c == 0}
        rows = (line.split() for line in Path(other).read_text().splitlines() if line.strip())
        return {r[0] for r in rows if r[1:] == ["0"]}

    killed_elsewhere = set().union(*(kills(o) for o in args.killed_by))
    passed_elsewhere = set().union(*(passes(o) for o in args.killed_by)) - killed_elsewhere
    os.chdir(args.run)
    sys.path.insert(0, os.getcwd())
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.utils.file_utils import walk_mutatable_files

    totals, rows = {}, []
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        if not data.exit_code_by_key:
            continue
        codes = {k: 1 if k in killed_elsewhere else base.get(k) if c is None else c
                 for k, c in data.exit_code_by_key.items()}
        codes = {k: 0 if k in passed_elsewhere and STATUS.get(c) in ("timeout", "no tests") else c
                 for k, c in codes.items()}
        totals[str(path)] = collections.Counter(STATUS.get(c, f"exit {c}") for c in codes.values())
        for name, code in codes.items():
            status = STATUS.get(code, f"exit {code}")
            if status in SHOWN and not args.totals:
                short, diff = name.replace("\u01c1", "."), change(name, path)
                family, reason = next(((f, r) for g, rx, f, r in rules
                                       if fnmatch.fnmatchcase(short, g) and rx.search(diff)), ("?", ""))
                if status == "timeout":
                    family, reason = "timeout", "not decided: the tests ran past mutmut's CPU-time limit on the loaded machine"
                rows.append((short, status, diff, family, reason))
    cols = ["killed", "survived", "no tests", "timeout"]
    print("| file | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    total = sum(totals.values(), collections.Counter())
    for f, c in list(totals.items()) + [("**all**", total)]:
        print(f"| {f} | " + " | ".join(str(c.get(k, 0)) for k in cols) + " |")
    other = set(total) - set(cols)
    if other:
        print("\nother states: " + ", ".join(f"{k} {total[k]}" for k in sorted(other)))
    if rows:
        print("\n| mutant | status | change | family | why |\n|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
