"""The engine directory's manifest (``manifest.json``): :class:`EngineManifest`, and the records of
the files beside it (size and sha256, :func:`check_files`). The directory's layout is described in
:mod:`rissole_trt.runtime.engine_build`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ...errors import EngineMismatchError, MissingFileError
from ...formats import Manifest, file_record, file_sha256
from ...outputs import ENGINE, kind_of
from ..backend import ONNX_FILE, TRT_PLAN

__all__ = ["FORMAT_VERSION", "MANIFEST", "TACTICS", "EngineManifest", "read_manifest", "is_engine_dir",
           "check_files", "file_records", "tolerance_of", "rebuild_advice", "inside"]


#: 2: tactic tables hold residual blocks (fused GroupNorm + SiLU) and Winograd candidates.
#: 3: and the one-group norms as layers, and dense-map convolutions.
#: 4: the manifest gives each layer's choice per bucket and why (``tactics.layers``).
#: 5: rows per image and the overlap they follow.
FORMAT_VERSION = 6  # 6: the kind, and every file's size and sha256 (``files``), checked at load
MANIFEST = "manifest.json"
TACTICS = "tactics.json"


def tolerance_of(precision: str) -> str:
    """The tolerance (:mod:`rissole_trt.tolerances`) an engine of ``precision`` is checked within."""
    return {"fp32": "engine_fp32", "bf16": "bf16_eps", "fp16": "fp16_eps"}[precision]


@dataclass(frozen=True, kw_only=True)
class EngineManifest(Manifest):
    """``manifest.json``: what a build was (the head, compared for a cache hit) and what it chose.

    Older versions are refused (rebuild): their tactic tables or records differ, and there is no
    checksum of their files to migrate from."""

    KIND: ClassVar[str] = ENGINE
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    ERROR: ClassVar[type[Exception]] = EngineMismatchError
    UNREADABLE: ClassVar[str] = "{where}/" + MANIFEST + " cannot be read: {error}; rebuild the engine"

    kind: str = ENGINE
    format_version: int = FORMAT_VERSION
    model_fingerprint: str
    model_config: dict
    device: dict  # platform.device_fingerprint
    versions: dict  # platform.versions
    precision: str
    batch_sizes: list  # the buckets, in images
    block_positions: int
    overlap: str
    rows_per_image: int
    candidates_requested: list
    tolerance: str
    buckets: list | None = None  # per bucket: every candidate's record and the one chosen
    tactics: dict | None = None  # the tactic table's file, wins, per-layer decisions
    onnx: str | None = None
    build_s: float | None = None
    built: str | None = None
    files: dict | None = None  # relative path -> {"bytes", "sha256"}, every file but the manifest

    #: What a cache hit compares: the same model, machine, versions and settings.
    BUILD_KEY: ClassVar[tuple[str, ...]] = ("format_version", "model_fingerprint", "device", "versions", "precision",
                                            "batch_sizes", "rows_per_image", "candidates_requested")

    @classmethod
    def refusal(cls, where: object, version: object) -> Exception:
        return EngineMismatchError(f"{where} has engine format {version}, this rissole_trt reads "
                                   f"{FORMAT_VERSION}; rebuild it with rissole-trt build-engine --rebuild")

    @classmethod
    def open(cls, path: str | os.PathLike) -> "EngineManifest":
        """The manifest of the engine directory ``path``, refused with the reason when it has none."""
        path = Path(path)
        file = path / MANIFEST
        if not file.is_file():
            if (path / ONNX_FILE).is_file():
                raise MissingFileError(f"{path} holds only the ONNX export of an engine that was not built (no GPU "
                                       f"where it ran); run rissole-trt build-engine --device cuda on a GPU machine")
            raise MissingFileError(f"{path} is not an engine directory (no {MANIFEST}); make one with "
                                   "rissole-trt build-engine")
        try:
            text = file.read_text()
        except (OSError, ValueError) as error:
            raise EngineMismatchError(cls.UNREADABLE.format(where=path, error=error)) from error
        return cls.from_json(text, path)

    def build_key(self) -> dict:
        return {k: getattr(self, k) for k in self.BUILD_KEY}

    @property
    def chosen(self) -> set[str]:
        """The candidates that run a bucket."""
        return {b["chosen"] for b in self.buckets or ()}


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the engine directory ``path`` as written (a dict, for reports and callers)."""
    return EngineManifest.open(path).to_dict()


def is_engine_dir(path: Path) -> bool:
    return kind_of(path) == ENGINE


def file_records(root: Path) -> dict[str, dict]:
    """Size and sha256 of every file of the engine directory ``root`` but its manifest, by relative path."""
    return {file.relative_to(root).as_posix(): file_record(file)
            for file in sorted(root.rglob("*")) if file.is_file() and file.name != MANIFEST}


def rebuild_advice(path: Path) -> str:
    return f"rebuild it with rissole-trt build-engine -o {path} --rebuild"


def inside(path: Path, name: object) -> Path:
    """The file ``name`` of the manifest, which must be a relative path inside the engine folder."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise EngineMismatchError(f"engine {path}: its manifest names the file {name!r}, not a path inside the "
                                  f"engine folder; {rebuild_advice(path)}")
    file = path / name
    if not file.resolve().is_relative_to(path.resolve()):  # '..' or a symbolic link out of the folder
        raise EngineMismatchError(f"engine {path}: {name} lies outside the engine folder; {rebuild_advice(path)}")
    return file


def _required_files(manifest: EngineManifest) -> set[str]:
    """The files the chosen candidates read at load."""
    chosen = manifest.chosen
    required = {manifest.tactics.get("file")} if isinstance(manifest.tactics, dict) else set()
    if chosen & {"onnxruntime", "openvino"}:
        required.add(ONNX_FILE.as_posix())
    if "tensorrt" in chosen:
        required.add(TRT_PLAN.as_posix())
    return required


def check_files(path: Path, manifest: EngineManifest) -> None:
    """Every file the engine's manifest records is inside the folder, present, of its size and
    sha256, and the chosen candidates' files are among them; EngineMismatchError names the first that is not."""
    files = manifest.files
    if not isinstance(files, dict):
        raise EngineMismatchError(f"engine {path}: its manifest records no checksums of its files; "
                                  f"{rebuild_advice(path)}")
    required = _required_files(manifest)
    for name in required:
        inside(path, name)
    missing = sorted(str(name) for name in required if name not in files)
    if missing:
        raise EngineMismatchError(f"engine {path}: its manifest records no size and sha256 of {missing[0]}, which "
                                  f"it needs; {rebuild_advice(path)}")
    for name, record in files.items():
        file = inside(path, name)
        if not file.is_file():
            raise EngineMismatchError(f"engine {path} lacks {name}; {rebuild_advice(path)}")
        if (not isinstance(record, dict) or file.stat().st_size != record.get("bytes")
                or file_sha256(file) != record.get("sha256")):
            raise EngineMismatchError(f"engine {path}: {name} was changed since the build (its size or sha256 "
                                      f"differs from the manifest's); {rebuild_advice(path)}")
