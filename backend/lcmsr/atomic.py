"""The one atomic-write helper: a file is written under a temporary name beside its destination
and renamed over it with ``os.replace`` only when complete, so a reader never sees half a file,
an existing destination survives a failure untouched, and a failed write leaves nothing behind.

    with AtomicPath(dst) as tmp:
        write(tmp)           # any exception removes tmp; dst is unchanged

Temporary names are ``.NAME.partial-HOST-PID-RANDOM`` (plus an optional suffix for writers that
need an extension, e.g. ``np.save``).  The tag of the host and the process id let a later write
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


def temp_path(dst: str | os.PathLike, suffix: str = "") -> str:
    """A fresh, not yet existing temporary name for ``dst`` in ``dst``'s folder."""
    folder, name = os.path.split(os.path.abspath(os.fspath(dst)))
    while True:
        path = os.path.join(folder, f".{name}{_MARK}{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
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
    """Remove the temporary files in ``folder`` left by processes of this host that no longer exist
    (they can never be finished, and nobody else would delete them); -> the names removed."""
    prefix = f"{_MARK}{HOST_TAG}-"
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in entries:
        at = entry.find(prefix)
        if not entry.startswith(".") or at < 0:
            continue
        pid_text = entry[at + len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        path = os.path.join(folder, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)   # a folder a converted raster was being written in (lcmsr.raster.io)
            else:
                os.remove(path)
            removed.append(entry)
        except OSError:
            pass  # best effort: another process may be sweeping it at the same moment
    return removed


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
    survives a power loss (checkpoints, model files).  ``dst``'s folder must exist.
    """

    def __init__(self, dst: str | os.PathLike, suffix: str = "", fsync: bool = False):
        self.dst, self.fsync = os.path.abspath(os.fspath(dst)), fsync
        self.removed_stale = sweep_stale(os.path.dirname(self.dst))
        self.tmp = temp_path(self.dst, suffix)

    def __enter__(self) -> str:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
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
