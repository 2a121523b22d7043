"""The one output-path rule: an output may never be an input.

Every command and Processing algorithm names what it will write and what it reads before it starts;
:func:`check_outputs` refuses, in one line naming the file, an output that is one of the inputs (the
same path, a symbolic link to it, a hard link of it, any spelling that resolves to it) or another of
the job's outputs.  Nothing is written before the check, so a refused job changes nothing.

No torch, no GDAL: the CLI, the raster pipeline, evaluation, training and the plugin all call it.

Inputs are checked too: opening a named pipe (FIFO) for reading blocks until another process writes to
it, and a device such as /dev/zero never ends, so every input path that exists must be a regular file (a
folder too where a reader takes folders, as GDAL does for some formats) before it is opened
(:func:`check_regular`).
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable

# Files GDAL writes beside a raster (PAM metadata, external overviews and masks): writing a raster
# replaces or removes its own, so they count as outputs too (lcmsr.raster.io moves them with it).
RASTER_SIDE_CARS = (".aux.xml", ".ovr", ".msk")
# A training checkpoint's files (lcmsr.train.checkpoint): a checkpoint folder's writer deletes older ones.
_CHECKPOINT = re.compile(r"^step-\d{8,}\.(json|safetensors)$")


class OutputPathError(ValueError):
    """An output of a job is one of its inputs (or another output): refused before anything is written."""


def _resolved(path) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same file or folder: equal once symbolic links and ``..`` are
    resolved, or (where both exist) the same inode: a hard link, a case-insensitive spelling, a bind mount."""
    ra, rb = _resolved(a), _resolved(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(ra, rb)
    except OSError:   # one of them does not exist (yet): only the resolved names could tell
        return False


def _pairs(items) -> list[tuple[str, str]]:
    items = items.items() if isinstance(items, dict) else items
    return [(what, os.fspath(path)) for what, path in items if path]


def check_outputs(outputs: Iterable | dict, inputs: Iterable | dict) -> None:
    """Raise :class:`OutputPathError` when an output is an input or two outputs are one file.

    ``outputs`` and ``inputs``: ``(what, path)`` pairs (or a dict ``what -> path``); ``what`` says in the
    caller's words what the path is ("the model file", "--html"); empty paths are skipped.  An input may
    be a folder (of images, of checkpoints): an output that is that folder is refused as well.
    """
    outs, ins = _pairs(outputs), _pairs(inputs)
    for i, (what, path) in enumerate(outs):
        for other_what, other in ins + outs[:i]:
            if same_file(path, other):
                also = f"is also {other_what}" if path == other else f"is {other_what} {other} under another name"
                problem = "writing it would destroy that input" if (other_what, other) in ins else \
                    "one would overwrite the other"
                raise OutputPathError(f"{what} {path} {also}: {problem}; choose another output")


def raster_outputs(what: str, dst) -> list[tuple[str, str]]:
    """A raster output and the side-car files that writing it replaces or removes."""
    dst = os.fspath(dst)
    return [(what, dst)] + [(f"{what}'s side-car", dst + side) for side in RASTER_SIDE_CARS]


def check_file_output(path, what: str) -> None:
    """Refuse, before any work, a file output that cannot be written: an existing folder, a folder that is
    not one, a read-only folder (its parents are created where missing).  One line naming ``path``."""
    if not path:
        return
    path = os.fspath(path)
    full = _resolved(path)
    if os.path.isdir(full):
        raise OutputPathError(f"{what} {path} is a folder: give the name of a file to write (in it, say)")
    folder = os.path.dirname(full)
    while folder and not os.path.exists(folder):   # the nearest existing parent decides
        folder = os.path.dirname(folder) if os.path.dirname(folder) != folder else ""
    if folder and not os.path.isdir(folder):
        raise OutputPathError(f"{what} {path} cannot be written: {folder} is a file, not a folder")
    if folder and not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path} cannot be written: the folder {folder} is not writable")


def check_checkpoint_folder(folder, inputs: Iterable | dict) -> None:
    """A training run deletes older checkpoints in its checkpoint folder: it may not be an input folder, nor
    hold an input named like a checkpoint (a stage-1 checkpoint read by stage 2, say)."""
    if not folder:
        return
    check_outputs([("the checkpoint folder", folder)], inputs)
    for what, path in _pairs(inputs):
        if _CHECKPOINT.match(os.path.basename(path)) and same_file(os.path.dirname(_resolved(path)), folder):
            raise OutputPathError(f"the checkpoint folder {folder} holds {what} {path}: the run would delete it "
                                  f"with its own older checkpoints; choose another checkpoint folder")


def output_folders(outputs: Iterable | dict) -> list[str]:
    """The folders the outputs are written into (where a killed run's temporary files would be): each
    output's folder, and the output itself where it is a folder (a checkpoint or work folder)."""
    seen: list[str] = []
    for _, path in _pairs(outputs):
        resolved = _resolved(path)
        for folder in ([resolved] if os.path.isdir(resolved) else []) + [os.path.dirname(resolved)]:
            if folder not in seen:
                seen.append(folder)
    return seen


def training_paths(opts, stage: str) -> tuple[list, list, str]:
    """(outputs, inputs, checkpoint folder) of a training run with :class:`lcmsr.train_options.TrainOptions`
    ``opts`` at ``stage``; the folder is the loop's default (``checkpoints/<stage>``) when none is given.
    A resume checkpoint is no input here: it is meant to lie in the checkpoint folder."""
    outputs = []
    if opts.out:
        out = os.fspath(opts.out)
        if stage == "autoencoder":   # a checkpoint pair (lcmsr.train.checkpoint.write_checkpoint's naming)
            st = out if out.endswith(".safetensors") else out + ".safetensors"
            outputs += [("the final checkpoint (--out)", st), ("the final checkpoint (--out)", st[:-12] + ".json")]
        else:
            outputs.append(("the model file to write (--out)", out))
    inputs = [(f"training source {i + 1}", s) for i, s in enumerate(opts.sources) if isinstance(s, (str, os.PathLike))]
    inputs += [(f"validation source {i + 1}", s) for i, s in enumerate(opts.val_sources)
               if isinstance(s, (str, os.PathLike))]
    if stage == "consistency" and opts.stage1:
        s1 = os.fspath(opts.stage1)
        inputs.append(("the stage-1 checkpoint (--stage1)", s1))
        if not os.path.isdir(s1):
            base = s1[:-12] if s1.endswith(".safetensors") else s1[:-5] if s1.endswith(".json") else s1
            inputs += [("the stage-1 checkpoint (--stage1)", base + ext) for ext in (".json", ".safetensors")]
    if stage == "decoder" and opts.base_model:
        inputs.append(("the model file to start from (--model)", opts.base_model))
    if stage == "finetune":
        if opts.base_model:
            inputs.append(("the model to start from (--from)", opts.base_model))
        inputs += [(f"LR raster {i + 1}", s) for i, s in enumerate(getattr(opts, "lr_sources", []))
                   if isinstance(s, (str, os.PathLike))]
        # Beside the new model (as the plugin's training algorithms keep theirs): rerunning the same
        # command with --resume finds it.
        if not opts.checkpoint_dir and opts.out:
            return outputs, inputs, os.path.splitext(os.fspath(opts.out))[0] + "_checkpoints"
    return outputs, inputs, os.fspath(opts.checkpoint_dir or os.path.join("checkpoints", stage))


def check_training(opts, stage: str) -> None:
    """The output-path rule for a training run: its product and checkpoint folder against its inputs."""
    outputs, inputs, folder = training_paths(opts, stage)
    check_outputs(outputs, inputs)
    check_checkpoint_folder(folder, inputs)


_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class NotARegularFile(ValueError):
    """An input path is a pipe, device, socket or (where not allowed) a folder."""


def check_regular(path: str | os.PathLike, what: str = "input", folders: bool = False) -> None:
    """Raise :class:`NotARegularFile` (one line naming ``path``) when ``path`` exists and is not a regular
    file (``folders``: a folder is accepted).  Paths that do not exist, or that are not file-system paths
    (GDAL's /vsi... names), are left to the opener, which says what is wrong with them."""
    try:
        mode = os.stat(path).st_mode  # follows symbolic links: a link to a FIFO is a FIFO
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode) or (folders and stat.S_ISDIR(mode)):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise NotARegularFile(f"{what} {os.fspath(path)} is {kind}, not a regular file")
