"""The base of every on-disk manifest: a frozen, versioned dataclass read and written in one way.

A manifest class names its ``KIND`` (:mod:`rissole_trt.outputs`), its ``FORMAT_VERSION``, the key
that records the version (``VERSION_KEY``), the error a file it cannot read raises (``ERROR``) and
``MIGRATIONS``: ``{old_version: function(dict) -> dict}``, each lifting a document one version up,
applied in order by :meth:`Manifest.from_dict`; a version without a migration (older ones that were
never readable, or newer ones) is refused with the file, the version found and the one read. The
fields are the document's keys, written in their order by :meth:`Manifest.to_json`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

from .atomic import write_text
from .errors import RissoleError

__all__ = ["Manifest", "file_sha256", "file_record"]

M = TypeVar("M", bound="Manifest")
_HASH_CHUNK = 8 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in chunks (the digest every manifest records)."""
    digest = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> dict:
    """What a manifest records of a file it lists: its size and sha256."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


@dataclasses.dataclass(frozen=True)
class Manifest:
    KIND: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]
    VERSION_KEY: ClassVar[str] = "format_version"
    ERROR: ClassVar[type[Exception]] = RissoleError
    MIGRATIONS: ClassVar[dict[int, Callable[[dict], dict]]] = {}
    INDENT: ClassVar[int] = 1  # what each writer has always used
    #: The refusal of a file that is not JSON (or not an object), as each reader has always said it.
    UNREADABLE: ClassVar[str] = "{where} cannot be read: {error}"

    @classmethod
    def refusal(cls, where: object, version: object) -> Exception:
        """The error for a document of a version this rissole_trt cannot read."""
        return cls.ERROR(f"{where}: format version {version!r} is not supported (this rissole_trt reads "
                         f"{cls.FORMAT_VERSION})")

    @classmethod
    def migrate(cls, doc: dict, where: object) -> dict:
        """``doc`` lifted to :attr:`FORMAT_VERSION` through :attr:`MIGRATIONS`, or the refusal."""
        version = doc.get(cls.VERSION_KEY)
        while version != cls.FORMAT_VERSION and version in cls.MIGRATIONS:
            doc = cls.MIGRATIONS[version](dict(doc))
            version = doc.get(cls.VERSION_KEY)
        if version != cls.FORMAT_VERSION:
            raise cls.refusal(where, version)
        return doc

    @classmethod
    def from_dict(cls: type[M], doc: dict, where: object = "the manifest") -> M:
        if not isinstance(doc, dict):
            raise cls.ERROR(cls.UNREADABLE.format(where=where, error="expected a JSON object"))
        doc = cls.migrate(doc, where)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in doc and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise cls.ERROR(f"{where}: no {', '.join(json.dumps(m) for m in missing)} entry")
        return cls(**{k: v for k, v in doc.items() if k in names})

    @classmethod
    def from_json(cls: type[M], text: str, where: object = "the manifest") -> M:
        try:
            doc = json.loads(text)
        except ValueError as error:
            raise cls.ERROR(cls.UNREADABLE.format(where=where, error=error)) from error
        return cls.from_dict(doc, where)

    def to_dict(self) -> dict[str, Any]:
        """The document, keys in field order, ``kind`` and the version included."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=self.INDENT)

    @classmethod
    def read(cls: type[M], path: str | os.PathLike) -> M:
        """The manifest in the file ``path``; unreadable JSON raises :attr:`ERROR` naming the file."""
        path = Path(path)
        try:
            text = path.read_text()
        except (OSError, ValueError) as error:  # ValueError: not UTF-8
            raise cls.ERROR(cls.UNREADABLE.format(where=path, error=error)) from error
        return cls.from_json(text, path)

    def write(self, path: str | os.PathLike) -> Path:
        return write_text(path, self.to_json())

    def replace(self: M, **changes: Any) -> M:
        return dataclasses.replace(self, **changes)
