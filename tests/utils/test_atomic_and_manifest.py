import json

import numpy as np
import pytest

from captionless3d.errors import CacheError
from captionless3d.utils import atomic
from captionless3d.utils.manifest import load_manifest, stable_hash, write_manifest


def test_atomic_save_roundtrip(tmp_path):
    path = tmp_path / "a.npy"
    atomic.atomic_save_npy(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(np.load(path), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]  # no temp file left behind


def test_failed_write_keeps_old_artefact_and_names_file(tmp_path, monkeypatch):
    path = tmp_path / "a.npy"
    atomic.atomic_save_npy(path, np.zeros(4))

    def exploding_save(handle, array, allow_pickle=False):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.np, "save", exploding_save)
    with pytest.raises(CacheError, match=r"a\.npy.*No space left"):
        atomic.atomic_save_npy(path, np.ones(4))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.zeros(4))
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def _make_cache(tmp_path, key):
    atomic.atomic_save_npy(tmp_path / "x.npy", np.arange(3))
    write_manifest(tmp_path, kind="test", version=1, key=key, files=["x.npy"])


def test_manifest_roundtrip(tmp_path):
    _make_cache(tmp_path, {"teacher": "t1", "data": "d1"})
    manifest = load_manifest(tmp_path, kind="test", version=1, key={"teacher": "t1", "data": "d1"})
    assert manifest["key"]["teacher"] == "t1"


def test_manifest_mismatch_names_field(tmp_path):
    _make_cache(tmp_path, {"teacher": "t1", "data": "d1"})
    with pytest.raises(CacheError, match=r"stale cache.*teacher: cache has 't1', run expects 't2'"):
        load_manifest(tmp_path, kind="test", version=1, key={"teacher": "t2", "data": "d1"})


def test_manifest_version_and_missing(tmp_path):
    with pytest.raises(CacheError, match="no manifest.json"):
        load_manifest(tmp_path, kind="test", version=1)
    _make_cache(tmp_path, {"a": 1})
    with pytest.raises(CacheError, match="format version 1"):
        load_manifest(tmp_path, kind="test", version=2)


def test_corrupt_payload_detected(tmp_path):
    _make_cache(tmp_path, {"a": 1})
    (tmp_path / "x.npy").write_bytes(b"garbage")
    with pytest.raises(CacheError, match=r"x\.npy: checksum mismatch"):
        load_manifest(tmp_path, kind="test", version=1)


def test_unreadable_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable manifest"):
        load_manifest(tmp_path, kind="test", version=1)


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
    json.dumps(stable_hash({"a": 1}))
