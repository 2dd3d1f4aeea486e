"""The on-disk manifests as typed formats: each one's round trip, the migration (or the refusal, with
the reason) of the files older versions wrote, and the refusal of a newer version naming the file."""
from __future__ import annotations

import json
from dataclasses import FrozenInstanceError, dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from rissole_trt.config import ModelConfig
from rissole_trt.distributed import MANIFEST as RUN_MANIFEST
from rissole_trt.distributed import RUN_FILE, DatasetRun, DatasetShards
from rissole_trt.errors import DatabaseError, EngineMismatchError, InvalidArgumentError, RissoleModelError
from rissole_trt.formats import Manifest
from rissole_trt.models import RissoleModel
from rissole_trt.models.rissole import CONFIG_FILE, ModelFile
from rissole_trt.outputs import DATABASE, DATASET_RUN, ENGINE, MODEL, kind_of
from rissole_trt.retrieval.database import Database, DatabaseManifest, DatabaseWriter
from rissole_trt.runtime.engine_build import MANIFEST as ENGINE_MANIFEST
from rissole_trt.runtime.engine_build import EngineManifest
from rissole_trt.runtime.engine_build.builder import _manifest_head


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    torch.manual_seed(0)
    return RissoleModel(ModelConfig())


def _written(tmp_path, manifest: Manifest, name: str):
    path = tmp_path / name
    manifest.write(path)
    return path


# ----------------------------------------------------------------------------- the base


@dataclass(frozen=True, kw_only=True)
class _Lifted(Manifest):
    """A manifest of three versions: 1 named its field "n", 2 added "unit", 3 is today's."""

    KIND: ClassVar[str] = "test"
    FORMAT_VERSION: ClassVar[int] = 3
    MIGRATIONS: ClassVar[dict] = {1: lambda d: dict(d, format_version=2, count=d.pop("n")),
                                  2: lambda d: dict(d, format_version=3, unit=d.get("unit", "images"))}

    format_version: int = 3
    count: int
    unit: str


def test_migrations_apply_in_order_and_a_newer_version_is_refused_naming_the_file(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format_version": 1, "n": 4}))
    assert _Lifted.read(old) == _Lifted(count=4, unit="images")
    new = tmp_path / "new.json"
    new.write_text(json.dumps({"format_version": 4, "count": 4, "unit": "images"}))
    with pytest.raises(Exception, match=f"{new}: format version 4 is not supported .*reads 3"):
        _Lifted.read(new)
    with pytest.raises(FrozenInstanceError):
        _Lifted(count=1, unit="x").count = 2


# ----------------------------------------------------------------------------- config.json


def test_model_file_round_trip_and_what_save_writes(model, tmp_path):
    saved = model.save(tmp_path / "model")
    doc = ModelFile.read(saved / CONFIG_FILE)
    assert ModelFile.from_json(doc.to_json()) == doc
    assert json.loads((saved / CONFIG_FILE).read_text()) == doc.to_dict()
    assert (doc.kind, doc.version, doc.sampling) == (MODEL, 1, {"overlap": model.default_overlap})


def test_a_model_saved_before_kinds_sampling_and_checksums_loads(model, tmp_path):
    saved = model.save(tmp_path / "model")
    doc = json.loads((saved / CONFIG_FILE).read_text())
    for key in ("kind", "sampling", "weights_sha256"):  # what the first saves lacked
        del doc[key]
    (saved / CONFIG_FILE).write_text(json.dumps(doc))
    old = ModelFile.read(saved / CONFIG_FILE)
    assert (old.kind, old.sampling, old.weights_sha256) == (MODEL, {}, None)
    assert RissoleModel.load(saved).default_overlap == "none"
    assert kind_of(saved) == MODEL


def test_a_newer_model_file_is_refused_naming_it(model, tmp_path):
    saved = model.save(tmp_path / "model")
    doc = json.loads((saved / CONFIG_FILE).read_text())
    (saved / CONFIG_FILE).write_text(json.dumps(dict(doc, version=2)))
    with pytest.raises(RissoleModelError, match=f"{saved / CONFIG_FILE}: format version 2 is not supported"):
        RissoleModel.load(saved)


# ----------------------------------------------------------------------------- engine manifest.json


def _engine_manifest(model) -> EngineManifest:
    head = _manifest_head(model, "cpu", "fp32", [1, 2], ("eager",))
    return head.replace(buckets=[{"batch_size": 1, "rows": head.rows_per_image, "chosen": "eager", "ms": 1.0}],
                        files={})


def test_engine_manifest_round_trip_in_the_order_written(model, tmp_path):
    manifest = _engine_manifest(model)
    assert EngineManifest.from_json(manifest.to_json()) == manifest
    (tmp_path / "engine").mkdir()
    manifest.write(tmp_path / "engine" / ENGINE_MANIFEST)
    assert EngineManifest.open(tmp_path / "engine") == manifest
    assert list(manifest.to_dict())[:3] == ["kind", "format_version", "model_fingerprint"]
    assert manifest.chosen == {"eager"} and kind_of(tmp_path / "engine") == ENGINE


@pytest.mark.parametrize("version", [5, 7])
def test_another_engine_format_is_refused_with_the_rebuild(model, tmp_path, version):
    doc = _engine_manifest(model).to_dict()
    if version < EngineManifest.FORMAT_VERSION:  # what version 5 wrote: no kind, no file records
        del doc["kind"], doc["files"]
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / ENGINE_MANIFEST).write_text(json.dumps(dict(doc, format_version=version)))
    with pytest.raises(EngineMismatchError, match=f"{engine} has engine format {version}, this rissole_trt reads 6; "
                                                  "rebuild it"):
        EngineManifest.open(engine)


# ----------------------------------------------------------------------------- database manifest.json


def _database(path):
    rng = np.random.default_rng(0)
    with DatabaseWriter(path, count=3, codebook=rng.standard_normal((8, 2)).astype(np.float32),
                        latent_shape=(2, 4, 4), block_factor=2, fingerprint="f" * 64) as writer:
        writer.add(rng.integers(0, 8, size=(3, 4, 4)))
    return path


def test_database_manifest_round_trip(tmp_path):
    db = Database.open(_database(tmp_path / "db"))
    assert DatabaseManifest.from_json(db.on_disk.to_json()) == db.on_disk
    assert json.loads((tmp_path / "db" / "manifest.json").read_text()) == db.manifest == db.on_disk.to_dict()
    assert (db.on_disk.kind, db.count, db.latent_shape) == (DATABASE, 3, (2, 4, 4))


def test_a_database_written_before_kinds_opens(tmp_path):
    path = _database(tmp_path / "db")
    doc = json.loads((path / "manifest.json").read_text())
    del doc["kind"]  # recognised by its "format" then
    (path / "manifest.json").write_text(json.dumps(doc))
    assert Database.open(path, verify="full").on_disk.kind == DATABASE
    assert kind_of(path) == DATABASE


def test_a_newer_database_is_refused_naming_it(tmp_path):
    path = _database(tmp_path / "db")
    doc = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(dict(doc, format_version=2)))
    with pytest.raises(DatabaseError, match=f"{path}: database format version 2 is unknown.*newer"):
        Database.open(path)


# ----------------------------------------------------------------------------- dataset run.json, manifest.json

RUN = dict(n=4, shard_size=2, batch_size=2, seed=0, sampler="ddim", steps=4, overlap="none", format="png",
           model_fingerprint="m" * 64)


def test_dataset_run_round_trip_and_resume_rule(tmp_path):
    run = DatasetRun(**RUN)
    assert DatasetRun.read(_written(tmp_path, run, RUN_FILE)) == run
    assert run.changed(run.to_dict()) is None
    assert run.changed(dict(run.to_dict(), seed=1)) == ["seed"]


def test_a_run_of_version_1_is_another_run_and_a_newer_one_is_refused(tmp_path):
    # what version 1 wrote: no database or engine fingerprint
    version_1 = dict(RUN, format_version=1)
    assert DatasetRun(**RUN).changed(version_1) == ["format_version"]  # both fingerprints None here
    assert DatasetRun(**RUN, database_fingerprint="d" * 64).changed(version_1) == ["database_fingerprint",
                                                                                   "format_version"]
    newer = tmp_path / RUN_FILE
    newer.write_text(json.dumps(dict(DatasetRun(**RUN).to_dict(), format_version=3)))
    with pytest.raises(InvalidArgumentError, match=f"{newer}: format version 3 is not supported"):
        DatasetRun.read(newer)


def test_dataset_shards_round_trip_and_the_unversioned_manifest_migrates(tmp_path):
    shards = DatasetShards(shards={"0": {"first": 0, "count": 2, "sha256": "s" * 64, "seconds": 1.0}},
                           updated="2026-12-07T00:00:00+0000")
    assert DatasetShards.read(_written(tmp_path, shards, RUN_MANIFEST)) == shards
    old = tmp_path / "old.json"  # as written before the version was recorded
    old.write_text(json.dumps({"kind": DATASET_RUN, "shards": shards.shards, "updated": shards.updated}))
    assert DatasetShards.read(old) == shards
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(dict(shards.to_dict(), format_version=2)))
    with pytest.raises(InvalidArgumentError, match=f"{newer}: format version 2 is not supported"):
        DatasetShards.read(newer)
