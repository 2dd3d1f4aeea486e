"""The one way rissole_trt writes anything a user keeps: atomically, with the umask's mode.

``with atomic_file(path) as tmp:`` yields a temporary path beside ``path``; when the block ends
without an error the file gets the mode an ordinary ``open()`` would give it (0666 less the umask,
not ``mkstemp``'s 0600) and is renamed over ``path``; on an error (or Ctrl-C) it is removed and
``path`` is untouched. :func:`atomic_directory` does the same for a directory (0777 less the umask,
recursively for what is inside), replacing an existing one only when the caller says so.

Temporary names start with ``.`` and end with ``.tmp`` so that they are easy to recognise.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_file", "atomic_directory", "write_bytes", "write_text", "umask_mode", "probe_writable", "check_output"]


def umask_mode(directory: bool = False) -> int:
    """The mode ``open()`` / ``mkdir()`` would give a new file / directory under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = False) -> Iterator[Path]:
    """A temporary directory to fill; renamed to ``path`` on success.

    An existing ``path`` is replaced only with ``replace=True`` (the caller has checked that it is its
    own kind of output): it is moved aside, the new one renamed in, then the old one deleted, so a
    failure at any point leaves either the old or the new directory at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(Path(root) / d, umask_mode(directory=True))
            for f in files:
                os.chmod(Path(root) / f, umask_mode())
        os.chmod(tmp, umask_mode(directory=True))
        if path.exists() or path.is_symlink():
            if not replace:
                from .errors import OutputExistsError

                raise OutputExistsError(f"{path} appeared while it was being written; not replacing it")
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old.tmp", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe.tmp", dir=parent)
    os.close(fd)
    os.unlink(name)


def check_output(path: str | os.PathLike, *, overwrite: bool, kind: str, recognise, directory: bool = True,
                 inputs: tuple = ()) -> Path:
    """The one rule for outputs, checked before any work: where ``path`` may be written.

    * ``path`` must not be one of the command's ``inputs`` (nor inside one, nor hold one);
    * a new ``path`` must be creatable (see :func:`probe_writable`);
    * an existing ``path`` is replaced only with ``overwrite``, only if it has the right type (a
      folder for ``directory`` outputs, a file otherwise), and only if ``recognise(path)`` says it is
      this command's own kind of output (``kind``: "database", "saved model", ...) or it is an empty folder.
    """
    from .errors import OutputExistsError

    path = Path(path)
    target = path.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise OutputExistsError(f"{path} is (or holds, or lies inside) {item}, an input of this command; "
                                    "choose another output")
    if not path.exists() and not path.is_symlink():
        probe_writable(path)
        return path
    if directory and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is a file, not a {kind} folder; not replacing it")
    if not directory and path.is_dir():
        raise OutputExistsError(f"{path} is a folder; the {kind} is a file")
    if not overwrite:
        raise OutputExistsError(f"{path} already exists (overwrite replaces a {kind})")
    empty_folder = directory and not any(path.iterdir())
    if not empty_folder and not recognise(path):
        raise OutputExistsError(f"{path} exists and is not a {kind}; not replacing it")
    probe_writable(path)
    return path
