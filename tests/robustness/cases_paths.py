"""Robustness family `paths` (issue 16): outputs that are inputs, leftovers of killed and stopped runs,
long names, self-referencing VRTs — all through the `lcmsr` CLI as a user would meet them.

Three families: ``paths-loss`` (an output that is an input under some name must be refused with one line,
every file as before), ``paths-leftovers`` (kill -9 then any next command in the folder, SIGTERM/SIGHUP:
nothing left behind, an older output intact) and ``paths-messages`` (a 251-character output name works; a
VRT loop is named).  Quick mode: one case each.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from robustness_cases import (CLEAR, CLI_TIMEOUT, CORRECT, CRASH, HANG, LOST, OVERLAP, PY, TILE, WRONG,
                              check_sr_output, child_env, file_hash, leftovers, write_raster)


def _lcmsr(*args) -> list[str]:
    return [PY, "-m", "lcmsr", *map(str, args)]


def _run(cmd, timeout=CLI_TIMEOUT):
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired:
        return None, "", time.monotonic() - t0
    return proc.returncode, proc.stderr.strip(), time.monotonic() - t0


def _refusal(suite, fam, name, cmd, folder: Path, names: str | list[str], must_say: str = "") -> None:
    """The command must exit 2 with one 'lcmsr: error:' line naming a file of ``names`` (and saying
    ``must_say``), every file of ``folder`` unchanged and no new one."""
    before = {p.name: file_hash(p) for p in folder.iterdir()}
    rc, err, seconds = _run(cmd)
    after = {p.name: file_hash(p) for p in folder.iterdir()}
    last = err.splitlines()[-1] if err else ""
    names = [names] if isinstance(names, str) else names
    if rc is None:
        suite.record(fam, name, HANG, f"no exit within {CLI_TIMEOUT} s", seconds)
    elif any(after.get(k) != v for k, v in before.items()):
        suite.record(fam, name, LOST, f"changed: {[k for k, v in before.items() if after.get(k) != v]}")
    elif set(after) - set(before):
        suite.record(fam, name, LOST, f"left {sorted(set(after) - set(before))}")
    elif rc == 0:
        suite.record(fam, name, WRONG, "accepted: an output was one of its inputs")
    elif "Traceback" in err or rc != 2 or not last.startswith("lcmsr: error:"):
        suite.record(fam, name, CRASH, f"exit {rc}: {err[-500:]}")
    elif not any(n in last for n in names) or must_say not in last:
        suite.record(fam, name, CRASH, f"the message does not name the file and the problem: {last}")
    else:
        suite.record(fam, name, CLEAR, last, seconds)


def run_paths(suite) -> None:
    _loss(suite)
    _leftovers(suite)
    _messages(suite)


# ---------------------------------------------------------------- data loss

def _loss(suite) -> None:
    fam = suite.family("paths-loss", "an output that is an input (data loss)",
                       "the output given as the model, an input's hard link, symlink, side-car or another "
                       "spelling: sr, eval --json/--html/--model, degrade, set-domain, train-decoder, "
                       "train-consistency's checkpoint folder holding its stage-1 checkpoint")
    folder = suite.work / "paths-loss"
    folder.mkdir(parents=True, exist_ok=True)
    src = write_raster(folder / "scene.tif", 24, 24, 3)
    model = folder / "model.safetensors"
    model.write_bytes(suite.models.get(3, 2).read_bytes())
    os.link(model, folder / "model-link.tif")   # a hard link with a raster's extension: the writer would take it
    cases = [("sr: OUT is a hard link of --model", _lcmsr("sr", src, folder / "model-link.tif", "--model", model,
                                                           "--device", "cpu", "--quiet"), "model-link.tif")]
    if not suite.quick:
        os.symlink(src, folder / "hr-link.json")
        (folder / "scene.tif.ovr").write_bytes(src.read_bytes())
        ck = folder / "ck"
        ck.mkdir()
        (ck / "step-00000007.json").write_text("{}")
        cases += [
            ("eval --json is a symlink to --hr", _lcmsr("eval", "--sr", src, "--hr", src, "--no-lpips", "--json",
                                                        folder / "hr-link.json"), "hr-link.json"),
            ("eval --model: --html is the model", _lcmsr("eval", "--model", model, "--hr", src, "--no-lpips",
                                                         "--html", model), "model.safetensors"),
            ("degrade of X.tif.ovr into X.tif (its side-car)", _lcmsr("degrade", folder / "scene.tif.ovr", src,
                                                                     "--quiet"), "scene.tif"),
            ("set-domain OUT is IN spelled through ..", _lcmsr("set-domain", model, folder / ".." / folder.name /
                                                               model.name, "--preset", "aerial-rgb"),
             "model.safetensors"),
            ("train-decoder --out is a hard link of --model", _lcmsr("train-decoder", src, "--model", model, "--out",
                                                                     folder / "model-link.tif", "--iterations", 1),
             "model-link.tif"),
            ("train-consistency: checkpoint folder holds --stage1", _lcmsr(
                "train-consistency", src, "--stage1", ck / "step-00000007.json", "--checkpoint-dir", ck, "--out",
                folder / "new.safetensors", "--iterations", 1), ["ck", "step-00000007.json"]),
        ]
    for name, cmd, names in cases:
        _refusal(suite, fam, name, cmd, folder, names)


# ---------------------------------------------------------------- leftovers and signals

def _sr_cmd(src, dst, model):
    return _lcmsr("sr", src, dst, "--model", model, "--device", "cpu", "--tile", 16 + OVERLAP * 4, "--overlap",
                  OVERLAP, "--quiet")


def _start(cmd):
    """Start ``cmd``; the event is set once its tiles are announced (the temp file exists by then)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    started, lines = threading.Event(), []

    def pump():
        for line in p.stderr:
            lines.append(line)
            if "tile(s) of" in line:
                started.set()
        started.set()
        p.stderr.close()

    threading.Thread(target=pump, daemon=True).start()
    return p, started, lines


def _leftovers(suite) -> None:
    fam = suite.family("paths-leftovers", "leftovers of killed and stopped runs",
                       "kill -9 during `lcmsr sr`, then another command with another output name (or a failing "
                       "one) in that folder; SIGTERM / SIGHUP during `lcmsr sr`, over an older output")
    folder = suite.work / "paths-leftovers"
    folder.mkdir(parents=True, exist_ok=True)
    side = 480   # a few seconds of tiles: the signal lands while the temp file is written
    src = write_raster(folder / "input.tif", side, side, 3)
    model = suite.models.get(3, 2)
    trials = [("kill -9, then degrade to another name", signal.SIGKILL, "degrade")]
    if not suite.quick:
        trials += [("kill -9, then a failing eval --json into the folder", signal.SIGKILL, "eval"),
                   ("SIGTERM during sr", signal.SIGTERM, None), ("SIGHUP during sr over an older output",
                                                                  signal.SIGHUP, None)]
    for k, (name, sig, after) in enumerate(trials):
        out = folder / f"trial-{k}"
        out.mkdir(exist_ok=True)
        dst = out / "sr.tif"
        old = None
        if sig == signal.SIGHUP:
            dst.write_bytes(b"older output")
            old = file_hash(dst)
        p, started, lines = _start(_sr_cmd(src, dst, model))
        started.wait(timeout=CLI_TIMEOUT)
        time.sleep(suite.rng.uniform(0.05, 0.5))
        if p.poll() is not None:
            suite.record(fam, name, CORRECT if p.returncode == 0 else CRASH,
                         "finished before the signal" + (f": {''.join(lines)[-300:]}" if p.returncode else ""))
            continue
        p.send_signal(sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            suite.record(fam, name, HANG, f"still running 30 s after {sig.name}")
            continue
        time.sleep(0.2)   # the stderr pump reads the last line
        if file_hash(dst) != old:
            # Renamed into place just before the signal: then it must be the whole, correct output.
            problem = check_sr_output(src, dst, 2, False)
            suite.record(fam, name + " (output was already complete)", LOST if problem else CORRECT, problem)
            continue
        if sig != signal.SIGKILL:
            last = lines[-1].strip() if lines else ""
            rest = leftovers(out, keep=("sr.tif",))
            if rest:
                suite.record(fam, name, LOST, f"left {rest}")
            elif p.returncode not in (1, 128 + sig) or "stopped" not in last or "Traceback" in "".join(lines):
                suite.record(fam, name, CRASH, f"exit {p.returncode}: {''.join(lines)[-300:]}")
            else:
                suite.record(fam, name, CLEAR, last)
            continue
        stale = leftovers(out)
        if after == "degrade":
            rc, err, _ = _run(_lcmsr("degrade", src, out / "lr.tif", "--quiet"))
            keep = ("lr.tif",)
        else:
            rc, err, _ = _run(_lcmsr("eval", "--sr", src, "--hr", folder / "missing.tif", "--json", out / "r.json"))
            keep = ()
        rest = leftovers(out, keep=keep)
        if rc is None:
            suite.record(fam, name, HANG, "the next command did not end")
        elif rest:
            suite.record(fam, name, LOST, f"{rest} left after the next command (exit {rc})")
        elif (after == "degrade") != (rc == 0):
            suite.record(fam, name, CRASH, f"the next command: exit {rc}: {err[-300:]}")
        else:
            suite.record(fam, name, CLEAR, f"{len(stale)} temp(s) of the killed run removed by the next command")


# ---------------------------------------------------------------- messages

def _messages(suite) -> None:
    fam = suite.family("paths-messages", "long names and misleading messages",
                       "a valid 251-character output name (temp names over 255 bytes), multi-byte names, a VRT "
                       "that reads itself directly or through another VRT")
    folder = suite.work / "paths-messages"
    folder.mkdir(parents=True, exist_ok=True)
    src = write_raster(folder / "in.tif", 20, 20, 3)
    model = suite.models.get(3, 2)
    names = ["s" * 251 + ".tif"] + ([] if suite.quick else ["ü" * 125 + ".tif"])
    for n in names:
        out = folder / f"long-{len(n)}"
        out.mkdir(exist_ok=True)
        rc, err, seconds = _run(_lcmsr("sr", src, out / n, "--model", model, "--device", "cpu", "--tile", TILE,
                                       "--overlap", OVERLAP, "--quiet"))
        case = f"output name of {len(os.fsencode(n))} bytes"
        problem = check_sr_output(src, out / n, 2, False) if rc == 0 else f"exit {rc}: {err[-300:]}"
        rest = leftovers(out, keep=(n,))
        suite.record(fam, case, LOST if rest else (WRONG if problem else CORRECT),
                     f"left {rest}" if rest else problem, seconds)
    if suite.quick:
        return
    for name, pair in (("a VRT that reads itself", {"self.vrt": "self.vrt"}),
                       ("two VRTs that read each other", {"a.vrt": "b.vrt", "b.vrt": "a.vrt"})):
        for vrt, source in pair.items():
            (folder / vrt).write_text(
                '<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="Byte" band="1">'
                f'<ComplexSource><SourceFilename relativeToVRT="1">{source}</SourceFilename><SourceBand>1'
                '</SourceBand></ComplexSource></VRTRasterBand></VRTDataset>')
        first = next(iter(pair))
        _refusal(suite, fam, name, _lcmsr("sr", folder / first, folder / "vrt-out.tif", "--model",
                                          suite.models.get(1, 2), "--device", "cpu", "--quiet", "--ignore-domain"),
                 folder, first, must_say="refers to itself")
