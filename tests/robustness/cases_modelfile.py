"""Robustness family "modelfile": crafted model metadata and degenerate model values.

Every case is a copy of an intact tiny model whose description (the ``lcmsr`` JSON) or tensors were
edited and whose checksum was then recomputed, so only the validator can stand in the way: wrong JSON
types, zeros, 1e999, NaN, huge channel counts, shapes the config does not imply, a degenerate
latent_scale or normalisation, huge or non-finite weights, escape codes in the file's text.  Each
goes through the four faces a user has: ``lcmsr info FILE``, ``lcmsr sr IN OUT --model FILE`` (child
processes under a 4 GiB address-space limit, so an allocation the validator should have stopped is a
crash, not a swapped machine), the loader in-process (read_info / check_model / load_model) and the
plugin's add-model check in QGIS.  A refusal must be one line naming the file, with no traceback, no
control character and nothing left behind; a file with escape codes in its text must load and show
them escaped.
"""
from __future__ import annotations

import copy
import json
import resource
import subprocess
import time
from pathlib import Path

from robustness_cases import (CLEAR, CORRECT, CRASH, HANG, LOST, PY, QGIS_TIMEOUT, WRONG, check_sr_output,
                              child_env, file_hash, leftovers, one_line, write_raster)

CHILD_TIMEOUT = 120
MEMORY_LIMIT = 4 * 2 ** 30      # the tiny models need a fraction of this; a 16 GB allocation fails in it
ESC = "\x1b[2J\x1b[31m"         # clear the screen, then red


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _printable(text: str) -> bool:
    return all(ch.isprintable() for ch in text.replace("\n", ""))


def modelfile_cases(good: Path, folder: Path, quick: bool) -> list[tuple[str, Path, str]]:
    """(name, path, "refuse" | "load") for crafted copies of ``good``, each with a valid checksum."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from lcmsr.weights import DIGEST_KEY, METADATA_KEY, content_digest

    with safe_open(str(good), framework="pt") as f:
        base_meta = json.loads(f.metadata()[METADATA_KEY])
    cases = []

    def craft(name, edit_meta=None, edit_tensors=None, expect="refuse"):
        meta, tensors = copy.deepcopy(base_meta), load_file(str(good))
        if edit_meta:
            edit_meta(meta)
        if edit_tensors:
            edit_tensors(tensors)
        p = folder / f"{len(cases):03d}.safetensors"
        text = json.dumps(meta)   # NaN and inf become the JSON literals NaN / Infinity, as a crafted file may have
        save_file(tensors, str(p), metadata={METADATA_KEY: text, DIGEST_KEY: content_digest(text, tensors)})
        p.chmod(0o644)
        cases.append((name, p, expect))

    def config(path, value):
        def edit(m):
            target = m["config"]
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
        return edit

    def both(key, value):   # top-level and config (scale, bands)
        return lambda m: (m.__setitem__(key, value), m["config"].__setitem__(key, value))

    def scaled(name, factor):
        return lambda t: t.__setitem__(name, t[name] * factor)

    big = lambda t: t.__setitem__("decoder.tail.weight", torch.full_like(t["decoder.tail.weight"], 1e30))  # noqa: E731
    if quick:   # one case: a huge decoder claimed over small tensors (the 16 GB allocation)
        craft("decoder.features 3000 over the file's small tensors", config(["decoder", "features"], 3000))
        return cases
    # wrong JSON types
    craft("decoder.features \"8\" (a string)", config(["decoder", "features"], "8"))
    craft("decoder.features 8.0 (a float)", config(["decoder", "features"], 8.0))
    craft("decoder.blocks_per_group true (a boolean)", config(["decoder", "blocks_per_group"], True))
    craft("denoiser.channel_mults 2 (not a list)", config(["denoiser", "channel_mults"], 2))
    craft("decoder a list instead of a mapping", config(["decoder"], [1, 2]))
    craft("scale \"2\" (a string)", both("scale", "2"))
    craft("bands null", both("bands", None))
    craft("band_names a string", lambda m: m.__setitem__("band_names", "RGB"))
    craft("normalisation lo of strings", lambda m: m["normalization"].__setitem__("lo", ["0", "0", "0"]))
    craft("training a list", lambda m: m.__setitem__("training", [1, 2]))
    craft("data_type 7", lambda m: m.__setitem__("data_type", 7))
    craft("format_version true", lambda m: m.__setitem__("format_version", True))
    # zeros
    craft("decoder.norm_groups 0", config(["decoder", "norm_groups"], 0))
    craft("denoiser.head_channels 0", config(["denoiser", "head_channels"], 0))
    craft("schedule.timesteps 1", config(["schedule", "timesteps"], 1))
    craft("consistency.sigma_data 0", config(["consistency", "sigma_data"], 0))
    craft("decoder.cca_reduction 0", config(["decoder", "cca_reduction"], 0))
    craft("decoder.distill_rate 0", config(["decoder", "distill_rate"], 0))
    # 1e999, NaN, beyond float
    craft("consistency.timestep_scaling 1e999", config(["consistency", "timestep_scaling"], float("inf")))
    craft("decoder.distill_rate NaN", config(["decoder", "distill_rate"], float("nan")))
    craft("schedule.beta_end 1e999", config(["schedule", "beta_end"], float("inf")))
    craft("decoder.features 10**30", config(["decoder", "features"], 10 ** 30))
    craft("normalisation hi 10**400 (an integer beyond float)", lambda m: m["normalization"].__setitem__(
        "hi", [10 ** 400] * 3))
    craft("schedule with no signal left (beta_end 0.9)", config(["schedule", "beta_end"], 0.9))
    # huge networks, shapes the config does not imply
    craft("decoder.features 3000 over the file's small tensors", config(["decoder", "features"], 3000))
    craft("decoder 8 levels of 4096 channels, 32 blocks each", lambda m: m["config"]["decoder"].update(
        level_widths=[4096] * 8, features=4096, blocks_per_group=32))
    craft("decoder.level_widths 20 levels", config(["decoder", "level_widths"], [8] * 20))
    craft("bands 1000", both("bands", 1000))
    craft("denoiser one level more than its tensors", config(["denoiser", "channel_mults"], [1, 2, 2]))
    craft("a tensor one channel wider", edit_tensors=lambda t: t.__setitem__(
        "decoder.tail.bias", torch.zeros(t["decoder.tail.bias"].shape[0] + 1)))
    craft("a weight stored as int32", edit_tensors=lambda t: t.__setitem__(
        "decoder.tail.bias", t["decoder.tail.bias"].to(torch.int32)))
    # degenerate values
    for v in (0.0, 1e-38, -0.5, float("inf"), 1e30):
        craft(f"latent_scale {v:g}", edit_tensors=lambda t, v=v: t.__setitem__("latent_scale", torch.tensor(v)))
    for lo, hi in ((0.0, 1e-45), (-1e308, 1e308), (7.0, 7.0), (100.0, 100.0001)):
        craft(f"normalisation {lo:g}..{hi:g}", lambda m, lo=lo, hi=hi: m.__setitem__(
            "normalization", {"lo": [lo] * 3, "hi": [hi] * 3}))
    craft("Float32 normalisation 1e8..1e8+1 (below float32's resolution)", lambda m: m.update(
        data_type="Float32", normalization={"lo": [1e8] * 3, "hi": [1e8 + 1] * 3}))
    craft("weights 1e30 (finite)", edit_tensors=big)
    craft("weights x 1e5", edit_tensors=scaled("denoiser.conv_in.weight", 1e5))
    craft("a NaN weight", edit_tensors=lambda t: t["condnet.body.conv_in.bias"].view(-1).__setitem__(0, float("nan")))
    craft("an inf weight", edit_tensors=lambda t: t["decoder.head.weight"].view(-1).__setitem__(0, float("inf")))
    # text from the file: refused or loaded, never shown raw
    craft("unknown config key with escape codes", config(["decoder", ESC + "x"], 1))
    craft("band names with escape codes", lambda m: m.__setitem__(
        "band_names", [ESC + "red", "green\nLOADED OK", "blue\u202e"]), expect="load")
    craft("training record with escape codes", lambda m: m.__setitem__(
        "training", {ESC + "steps": 3, "note": "\x07\x1b]0;title\x07" + ESC}), expect="load")
    craft("domain sensor and notes with escape codes", lambda m: m.__setitem__("domain", {
        "family": "aerial", "sensor": ESC + "camera\r", "band_roles": ["red", "green", "blue"],
        "data_types": ["Byte"], "notes": "line one\nline two" + ESC}), expect="load")
    return cases


def run_modelfile(suite) -> None:
    fam = suite.family("modelfile", "crafted model metadata and degenerate model values (valid checksums) "
                                    "through `lcmsr info`, `lcmsr sr`, the loader and the add-model dialog",
                       "wrong JSON types, zeros, 1e999/NaN/10**400, huge channel counts and levels, shapes the "
                       "config does not imply, int weights, latent_scale 0/1e-38/-0.5/inf/1e30, normalisation "
                       "spans 1e-45/±1e308/0/float32-vanishing, weights 1e30 or NaN/inf, escape codes in "
                       "band names, training record, domain text and keys")
    folder = suite.work / "modelfile"
    folder.mkdir(parents=True, exist_ok=True)
    good = suite.models.get(3, 2)
    src = write_raster(folder / "in.tif", 13, 11, 3)
    for name, path, expect in modelfile_cases(good, folder, suite.quick):
        for face, outcome, detail, seconds in _faces(suite, src, path, expect):
            suite.record(fam, f"{name} ({face})", outcome, detail, seconds)


def _run(cmd: list[str]) -> tuple[int | None, str, str, float]:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=child_env(),
                              preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return None, "", "", time.monotonic() - t0
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0


def _refusal(message: str, path: Path, cli: bool = False) -> tuple[str, str]:
    """A refusal is clear when it is one line naming the file, with no traceback or control character
    (the CLI's: its last line, ``lcmsr: error: ...``, after any progress lines)."""
    lines = message.strip().splitlines()
    line = lines[-1] if lines else ""
    if "Traceback" in message or not line or (len(lines) != 1 and not cli) or \
            (cli and not line.startswith("lcmsr: error:")):
        return CRASH, f"not one clear line: {message[-600:]!r}"
    if path.name not in line:
        return CRASH, f"does not name the file: {line!r}"
    if not _printable(message):
        return WRONG, f"control characters reach the screen: {message!r}"
    return CLEAR, line


def _cli_refused(rc: int, err: str, path: Path, accepted: str) -> tuple[str, str]:
    """A command given a crafted file must exit 2 with one clear line (``accepted``: what exit 0 did)."""
    if rc == 0:
        return WRONG, accepted
    if rc != 2:
        return CRASH, f"exit {rc}: {err[-600:]}"
    return _refusal(err, path, cli=True)


def _faces(suite, src: Path, path: Path, expect: str):
    from lcmsr.weights import ModelFileError, check_model, load_model, read_info

    # lcmsr info
    rc, out, err, seconds = _run([PY, "-m", "lcmsr", "info", str(path)])
    if rc is None:
        yield "info", HANG, f"no exit within {CHILD_TIMEOUT} s", seconds
    elif expect == "load":
        ok = rc == 0 and _printable(out) and _printable(err)
        yield "info", CORRECT if ok else WRONG, "" if ok else f"exit {rc}, shown raw: {(out + err)[-400:]!r}", seconds
    else:
        yield ("info", *_cli_refused(rc, err, path, "described a crafted file as a model"), seconds)
    # lcmsr sr
    out_dir = path.parent / (path.stem + "-sr")
    out_dir.mkdir(exist_ok=True)
    dst = out_dir / "sr.tif"
    before = file_hash(src)
    rc, out, err, seconds = _run([PY, "-m", "lcmsr", "sr", str(src), str(dst), "--model", str(path), "--device",
                                  "cpu", "--tile", "32", "--overlap", "4", "--quiet"])
    extra = leftovers(out_dir, keep=("sr.tif", "sr.tif.aux.xml") if rc == 0 else ())
    if rc is None:
        yield "sr", HANG, f"no exit within {CHILD_TIMEOUT} s", seconds
    elif file_hash(src) != before or extra:
        yield "sr", LOST, f"input changed or left behind: {extra}", seconds
    elif expect == "load":
        problem = check_sr_output(src, dst, 2, False) if rc == 0 else f"exit {rc}: {err[-400:]}"
        yield "sr", (WRONG if problem else CORRECT), problem, seconds
    else:
        yield ("sr", *_cli_refused(rc, err, path, "super-resolved with a crafted model (exit 0)"), seconds)
    # the loader in-process: every entry point refuses with ModelFileError, or (text cases) shows clean text
    t0 = time.monotonic()
    try:
        info = read_info(path)
        texts = [*info.band_names, info.domain.sensor, info.domain.notes, json.dumps(info.training, allow_nan=True)]
        check_model(path)
        load_model(path)
        if expect != "load":
            yield "loader", WRONG, "load_model accepted a crafted file", time.monotonic() - t0
        elif not all(_printable(t) and "\n" not in t for t in texts):
            yield "loader", WRONG, f"control characters kept in the description: {texts!r:.300}", time.monotonic() - t0
        else:
            yield "loader", CORRECT, "", time.monotonic() - t0
    except ModelFileError as exc:
        if expect == "load":
            yield "loader", WRONG, f"refused a usable file: {exc}", time.monotonic() - t0
        else:
            yield ("loader", *_refusal(str(exc), path), time.monotonic() - t0)
    except BaseException as exc:  # anything else reaching a caller is a crash of the validator
        yield "loader", CRASH, one_line(f"{type(exc).__name__}: {exc}"), time.monotonic() - t0
    # the plugin's add-model check
    t0 = time.monotonic()
    reply = suite.qgis.call({"op": "add_model", "path": str(path)}, QGIS_TIMEOUT)
    seconds = time.monotonic() - t0
    if reply.get("status") in ("hang", "died"):
        yield "dialog", HANG if reply["status"] == "hang" else CRASH, reply.get("message", ""), seconds
    elif reply["status"] == "exception":
        yield "dialog", CRASH, reply.get("message", ""), seconds
    elif reply["accepted"] != (expect == "load"):
        yield "dialog", WRONG, ("accepted a crafted file" if reply["accepted"]
                                else f"refused a usable file: {reply['shown']}"), seconds
    elif reply["accepted"]:
        yield "dialog", CORRECT, "", seconds
    else:
        yield ("dialog", *_refusal(reply["shown"], path), seconds)
