"""Checks on paths given as inputs, before anything opens them (no torch, no GDAL).

Opening a named pipe (FIFO) for reading blocks until some other process writes to it, and a device
such as /dev/zero or /dev/urandom never ends: either hangs a job forever.  So every input path that
exists is checked to be a regular file (a folder too where a reader takes folders, as GDAL does for
some dataset formats) before it is opened.
"""
from __future__ import annotations

import os
import stat

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
