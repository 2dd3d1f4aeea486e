"""A full disk, reported as one line: the one translator every writer uses.

A disk that fills while writing surfaces as ``OSError(ENOSPC)`` (or ``EDQUOT``), as numpy's short
write (``OSError("10240 requested and 5088 written")``, no errno), or wrapped by a library:
safetensors' ``SafetensorError``, torch's zip writer (``RuntimeError`` from ``inline_container``),
Ray (a task error whose cause is one of these). :func:`translate_disk_full` turns any of them into
:class:`OutOfSpaceError` naming the path and the bytes needed where known; the writers underneath
are atomic, so nothing half-written is left. :func:`check_free_space` refuses an output that cannot
fit before the work that produces it.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutOfSpaceError

__all__ = ["check_free_space", "free_bytes", "is_disk_full", "translate_disk_full"]

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# How the libraries word a full disk when the errno is lost on the way.
_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|\d+ requested and \d+ written|"
                        r"file write failed|unexpected pos \d+ vs \d+", re.IGNORECASE)
# Our own error in the text of a Ray task error (Ray passes the worker's traceback as text).
_WORKER_LINE = re.compile(r"OutOfSpaceError: (?:\[Errno \d+\] )?([^\n]+)")
# Room left beyond an output's estimated size (file system metadata, the temporary beside the target).
MARGIN = 1.05


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and Ray's wrapped ``cause``, each once."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause = getattr(e, "cause", None)  # Ray's task errors keep the worker's error here
        todo += [e.__cause__, e.__context__] + ([cause] if isinstance(cause, BaseException) else [])


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps) means the disk or the user's quota is full."""
    for e in _chain(error):
        if isinstance(e, OutOfSpaceError) or (isinstance(e, OSError) and e.errno in _FULL_ERRNOS):
            return True
        if _FULL_TEXT.search(str(e)):
            return True
    return False


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the file system that ``path`` is (or will be) on."""
    return shutil.disk_usage(_existing(Path(path))).free


def _size(n: int) -> str:
    unit, scale = ("GiB", 2**30) if n >= 2**30 else ("MiB", 2**20)
    return f"{n / scale:.1f} {unit} ({n:,} bytes)"


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse now, before any work, when ``what`` (about ``needed`` bytes) cannot fit at ``path``."""
    free = free_bytes(path)
    if needed * MARGIN > free:
        raise OutOfSpaceError(errno.ENOSPC, f"{path}: {what} needs about {_size(needed)} and the disk has "
                                            f"{_size(free)} free; free some space or write elsewhere")


@contextmanager
def translate_disk_full(path: str | os.PathLike, needed: int | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into one :class:`OutOfSpaceError` naming ``path`` and the
    bytes ``needed`` (where known); every other error passes unchanged."""
    try:
        yield
    except OutOfSpaceError:
        raise
    except Exception as error:
        if not is_disk_full(error):
            raise
        for e in _chain(error):  # a worker's own translation, wrapped by Ray (as text): keep its line
            worker = _WORKER_LINE.search(str(e))
            if worker:
                raise OutOfSpaceError(errno.ENOSPC, worker.group(1)) from error
        need = f"; it needs {_size(needed)}" if needed else ""
        raise OutOfSpaceError(errno.ENOSPC, f"{path}: no space left on device (ENOSPC) while writing{need}, "
                                            f"{_size(free_bytes(path))} free; nothing half-written was "
                                            "kept: free some space or write elsewhere, then rerun") from error
