"""The one atomic-write helper: a file is written under a temporary name beside its destination
and renamed over it with ``os.replace`` only when complete, so a reader never sees half a file,
an existing destination survives a failure untouched, and a failed write leaves nothing behind.

    with AtomicPath(dst) as tmp:
        write(tmp)           # any exception removes tmp; dst is unchanged

Temporary names are ``.NAME.partial-HOST-PID-RANDOM`` (plus an optional suffix for writers that
need an extension, e.g. ``np.save``); a NAME too long for that to fit the file system's 255-byte
limit (with room for a GDAL side-car such as ``.aux.xml``) is cut and tagged with its hash.  The tag of the host and the process id let a later write
into the same folder remove what a killed process (kill -9, power loss) left behind, without
touching files that a live process, or a process on another machine sharing the folder over the
network, is still writing.  The file is not pre-created (unlike ``mkstemp``, whose 0600 mode
would stick to the output): the writer creates it with the user's umask.

No torch, no GDAL: the raster package, weights, checkpoints, metrics and scripts all use it.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket

# A short tag of the host (not its name: temp names are visible to whoever lists the folder).
HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_MARK = ".partial-"
NAME_MAX = 255          # bytes in one file name on the usual file systems (ext4, XFS, btrfs, NTFS, APFS)
_SIDE_CAR_ROOM = 16     # what GDAL may append to a temporary raster's name (".aux.xml", ".ovr", ".msk")


def _fit_name(name: str, room: int) -> str:
    """``name`` itself when its file-system bytes are at most ``room``, else its longest prefix that leaves
    room for ``~`` and 8 hex digits of its SHA-256 (two long names sharing a prefix stay apart); a character
    cut in half, or a byte that is not UTF-8, is dropped from the prefix."""
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    tag = "~" + hashlib.sha256(raw).hexdigest()[:8]
    return raw[:max(0, room - len(tag))].decode("utf-8", "ignore") + tag


def temp_path(dst: str | os.PathLike, suffix: str = "") -> str:
    """A fresh, not yet existing temporary name for ``dst`` in ``dst``'s folder, short enough for the
    file system whatever the length of ``dst``'s own name."""
    folder, name = os.path.split(os.path.abspath(os.fspath(dst)))
    while True:
        tail = f"{_MARK}{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"
        room = NAME_MAX - _SIDE_CAR_ROOM - 1 - len(os.fsencode(tail))
        path = os.path.join(folder, f".{_fit_name(name, room)}{tail}")
        if not os.path.lexists(path):
            return path


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process: alive, not ours to judge
    return True


def sweep_stale(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files and folders in ``folder`` left by processes of this host that no longer
    exist (they can never be finished, and nobody else would delete them); -> the names removed.
    Every lcmsr command sweeps the folders it writes into when it starts, whatever it writes there."""
    marks = (f"{_MARK}{HOST_TAG}-", f".lcmsr-blend-{HOST_TAG}-")   # the second: older blend folders
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in entries:
        pid_text = None
        for mark in marks:
            at = entry.rfind(mark)   # the last: an output's own name may hold the mark
            if entry.startswith(".") and at >= 0:
                pid_text = entry[at + len(mark):].split("-", 1)[0]
                break
        if not pid_text or not pid_text.isdigit() or int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        path = os.path.join(folder, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)   # a converted raster's or a blend's scratch folder (lcmsr.raster)
            else:
                os.remove(path)
            removed.append(entry)
        except OSError:
            pass  # best effort: another process may be sweeping it at the same moment
    return removed


def temp_folder(parent: str | os.PathLike, name: str) -> str:
    """Create and return a scratch folder in ``parent`` named like a temporary file for ``name``, so that
    :func:`sweep_stale` removes it once its process is gone (the caller removes it when done)."""
    while True:
        path = temp_path(os.path.join(os.fspath(parent), name))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


class AtomicPath:
    """``with AtomicPath(dst) as tmp:`` — write ``tmp``; on success it replaces ``dst``, on any
    exception (including KeyboardInterrupt) it is removed and ``dst`` is left as it was.

    ``fsync=True`` flushes the file before the rename and the folder after it, so the new file
    survives a power loss (checkpoints, model files).  ``umask_mode=True`` gives the file the mode a
    plain ``open()`` would (0666 less the umask) for writers that create it private (safetensors
    writes 0600).  ``dst``'s folder must exist.
    """

    def __init__(self, dst: str | os.PathLike, suffix: str = "", fsync: bool = False, umask_mode: bool = False):
        self.dst, self.fsync, self.umask_mode = os.path.abspath(os.fspath(dst)), fsync, umask_mode
        self.removed_stale = sweep_stale(os.path.dirname(self.dst))
        self.tmp = temp_path(self.dst, suffix)

    def __enter__(self) -> str:
        self.mode = None
        if self.umask_mode:
            # The mode a plain open() gives, learnt from the kernel by creating the file (no umask round trip,
            # which would race with other threads creating files); the writer then replaces its contents.
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            self.mode = os.fstat(fd).st_mode & 0o7777
            os.close(fd)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                if self.mode is not None:
                    os.chmod(self.tmp, self.mode)
                if self.fsync:
                    _fsync(self.tmp)
                os.replace(self.tmp, self.dst)
            except BaseException:
                self.discard()
                raise
            if self.fsync:
                _fsync(os.path.dirname(self.dst), directory=True)
        else:
            self.discard()
        return False

    def discard(self) -> None:
        try:
            os.remove(self.tmp)
        except OSError:
            pass  # never written, or already gone; the error being raised matters more
