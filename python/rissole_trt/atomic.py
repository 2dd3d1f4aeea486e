"""The one way rissole_trt writes anything a user keeps: atomically, durably, with the umask's mode.

``with atomic_file(path) as tmp:`` yields a temporary path beside ``path``; when the block ends
without an error the file gets the mode an ordinary ``open()`` would give it (0666 less the umask,
not ``mkstemp``'s 0600), is flushed to disk (fsync) and renamed over ``path``, and the rename is
made durable (fsync of the parent folder); on an error (or Ctrl-C) it is removed and ``path`` is
untouched. :func:`atomic_directory` does the same for a directory (0777 less the umask, recursively
for what is inside, every file and folder synced), replacing an existing one only when the caller
says so (after :func:`rissole_trt.outputs.check_output` decided it may).

Temporary names are ``.NAME.PID-HOST.XXXXXXXX.tmp``: the creating process and machine are in the
name, so that a writer killed without cleanup (``kill -9``, power loss) leaves nothing forever: the
next write into the same folder removes the temporaries of dead processes of this machine
(:func:`reap_temporaries`). Temporaries of another machine (a shared file system) are left alone.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_file", "atomic_directory", "AtomicDirectory", "write_bytes", "write_text", "umask_mode",
           "probe_writable", "reap_temporaries", "fsync_path"]

_STARTED = time.time()  # temporaries without a pid (older rissole_trt) older than this process are stale
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
#: ``.NAME.[PID-HOST.]XXXXXXXX[.old|.probe].tmp``, XXXXXXXX being tempfile's 8 random characters.
_TEMPORARY = re.compile(r"^\..+?(?:\.(?P<pid>\d+)-(?P<host>[0-9a-f]{8}))?\.[a-z0-9_]{8}(?:\.old|\.probe)?\.tmp$")


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file / directory under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def reap_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``parent`` left by dead writers of this machine; returns them.

    A temporary whose pid is dead (and not this process) is stale; one of an older rissole_trt (no
    pid in its name) is stale when it is older than this process. Live writers are never touched.
    """
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match:
            continue
        if match["pid"] is None:
            try:
                stale = entry.stat(follow_symlinks=False).st_mtime < _STARTED
            except OSError:
                continue
        else:
            pid = int(match["pid"])
            stale = match["host"] == _HOST and pid != os.getpid() and not _pid_alive(pid)
        if stale:
            target = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            removed.append(target)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; synced and renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicDirectory:
    """A temporary directory ``tmp`` beside ``path`` to fill, then :meth:`commit` or :meth:`discard`.

    For writers that outlive one ``with`` block (the database's streaming writer); otherwise use
    :func:`atomic_directory`. An existing ``path`` is replaced only with ``replace=True``: it is moved
    aside, the new one renamed in, then the old one deleted, so a failure at any point leaves either
    the old or the new directory at ``path``.
    """

    def __init__(self, path: str | os.PathLike, *, replace: bool = False) -> None:
        self.path, self.replace = Path(path), replace
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reap_temporaries(self.path.parent)
        self.tmp = Path(tempfile.mkdtemp(prefix=_prefix(self.path), suffix=".tmp", dir=self.path.parent))

    def commit(self) -> Path:
        """Set the modes, sync every file and folder, rename into place and sync the parent."""
        path, tmp = self.path, self.tmp
        try:
            for root, dirs, files in os.walk(tmp, topdown=False):
                for name in files:
                    os.chmod(Path(root) / name, umask_mode())
                    fsync_path(Path(root) / name)
                for name in dirs:
                    os.chmod(Path(root) / name, umask_mode(directory=True))
                    fsync_path(Path(root) / name)
            os.chmod(tmp, umask_mode(directory=True))
            fsync_path(tmp)
            if path.exists() or path.is_symlink():
                if not self.replace:
                    from .errors import OutputExistsError

                    raise OutputExistsError(f"{path} appeared while it was being written; not replacing it")
                old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old.tmp", dir=path.parent))
                os.replace(path, old / path.name)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
            fsync_path(path.parent)
        finally:
            self.discard()
        return path

    def discard(self) -> None:
        """Remove the temporary directory (nothing of it is left; ``path`` is untouched)."""
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A temporary directory to fill; renamed to ``path`` on success (see :class:`AtomicDirectory`)."""
    target = AtomicDirectory(path, replace=replace)
    try:
        yield target.tmp
        target.commit()
    finally:
        target.discard()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def probe_writable(path: str | os.PathLike) -> None:
    """Fail now, before any work, if a file cannot be created where ``path`` will be written.

    Creates the missing parent folders and a real temporary file there (permission bits alone say
    nothing for root, read-only mounts or full disks).
    """
    from .errors import OutputExistsError

    path = Path(path)
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise OutputExistsError(f"cannot write {path}: {parent} is a file, not a folder")
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_prefix(path), suffix=".probe.tmp", dir=parent)
    os.close(fd)
    os.unlink(name)
