"""What an output location may be, decided in one place: every writer calls :func:`check_output`.

Every folder rissole_trt writes names its kind in its manifest (``"kind"``): a saved model
(``config.json``), a retrieval database, an engine (``manifest.json``) and a generate-dataset run
(``manifest.json`` beside ``run.json``). Folders written before kinds were recorded are recognised
by the keys that told them apart then (:func:`kind_of`, the only place that infers a kind).

The rule: an existing folder is replaced (``--overwrite``, ``--rebuild``, ``overwrite=True``) only
when it holds the same kind of output, or is empty, and is none of the command's inputs (an input
inside it counts). Anything else (another kind, a folder of other files, a file, a symbolic link) is
refused with the reason and nothing is deleted; a refusal never suggests a flag that would destroy
another kind of output.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .atomic import probe_writable
from .errors import OutputExistsError

__all__ = ["MODEL", "DATABASE", "ENGINE", "DATASET_RUN", "KINDS", "kind_of", "check_output"]

MODEL, DATABASE, ENGINE, DATASET_RUN = "rissole-model", "rissole-database", "rissole-engine", "rissole-dataset-run"
#: Each kind as a message names it.
KINDS = {MODEL: "saved model", DATABASE: "retrieval database", ENGINE: "engine", DATASET_RUN: "generate-dataset run"}
_MANIFESTS = ("manifest.json", "config.json")  # where a folder's kind is recorded


def _read_json(file: Path) -> dict | None:
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _legacy_kind(path: Path, docs: dict[str, dict | None]) -> str | None:
    """The kind of a folder written before kinds were recorded, from what set each kind apart then."""
    manifest, config = docs["manifest.json"], docs["config.json"]
    if manifest is not None and manifest.get("format") == "rissole-trt-database":
        return DATABASE
    if manifest is not None and "model_fingerprint" in manifest and "buckets" in manifest:
        return ENGINE
    if (path / "run.json").is_file() and (manifest is None or "shards" in manifest):
        return DATASET_RUN
    if config is not None and config.get("format") == "rissole_trt.model" and (path / "model.safetensors").is_file():
        return MODEL
    if manifest is None and (path / "onnx" / "denoiser.onnx").is_file():
        return ENGINE  # the ONNX export a CUDA build without a GPU leaves, to finish on a GPU machine
    return None


def kind_of(path: str | os.PathLike) -> str | None:
    """The kind of output the folder ``path`` holds (one of :data:`KINDS`), or None."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    docs = {name: _read_json(path / name) for name in _MANIFESTS}
    for doc in docs.values():
        if doc is not None and doc.get("kind") in KINDS:
            return doc["kind"]
    return _legacy_kind(path, docs)


def _a(label: str) -> str:
    return f"{'an' if label[0] in 'aeiou' else 'a'} {label}"


def _describe(path: Path) -> str:
    """What ``path`` is, for a refusal."""
    if path.is_symlink():
        return "a symbolic link"
    if not path.is_dir():
        return "a file"
    kind = kind_of(path)
    return _a(KINDS[kind]) if kind else "a folder of other files"


def _check_inputs(path: Path, inputs: tuple) -> None:
    target = path.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if target == source or source in target.parents or target in source.parents:
            raise OutputExistsError(f"{path} is (or holds, or lies inside) {item}, an input of this command; "
                                    "choose another output")


def check_output(path: str | os.PathLike, *, kind: str, overwrite: bool, inputs: tuple = (),
                 flag: str | None = "--overwrite", recognise: Callable[[Path], bool] | None = None,
                 directory: bool = True) -> Path:
    """The one rule for outputs, checked before any work: may ``path`` be written? Returns it.

    ``kind``: one of :data:`KINDS` (a folder with a manifest), or, with ``recognise``, a label for
    another output (a ``.png`` file, a folder of generated images) that ``recognise(path)`` tells.
    ``overwrite``: the caller may replace an output of its own kind; ``flag`` is how the user says
    so (None: there is no such flag). ``inputs``: the command's input paths, never written.
    """
    path = Path(path)
    label = KINDS.get(kind, kind)
    _check_inputs(path, inputs)
    if not path.exists() and not path.is_symlink():
        probe_writable(path)
        return path
    if directory and (path.is_symlink() or not path.is_dir()):
        raise OutputExistsError(f"{path} is {_describe(path)}, not {_a(label)}; choose another output folder")
    if not directory and path.is_dir():
        raise OutputExistsError(f"{path} is a folder; the {label} is a file")
    own = recognise(path) if recognise is not None else kind_of(path) == kind
    empty = directory and not any(path.iterdir())
    if not (own or empty):
        raise OutputExistsError(f"{path} is {_describe(path)}, not {_a(label)}; choose another output "
                                + ("folder" if directory else "file"))
    if not overwrite:
        advice = f"{flag} replaces it" if flag else "choose another output"
        raise OutputExistsError(f"{path} already holds {'nothing (an empty folder)' if empty else _a(label)}"
                                f" ({advice})")
    probe_writable(path)
    return path
