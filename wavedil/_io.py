"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then renamed."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_open"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing so that readers only ever see the old or the whole new file.

    A crash or an exception inside the ``with`` block leaves any previous file untouched and no
    temporary file behind. A file replaced keeps its permission bits; a new one gets the usual
    ``0666`` less the umask.
    """
    path = Path(path)
    if path.is_symlink():  # write through the link, as ``>`` does, instead of replacing it by a file
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:  # a file replaced keeps its permissions (a private 0600 file stays private), as cp and > keep them
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:  # a new file: mkstemp makes 0600; give it the usual permissions
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
