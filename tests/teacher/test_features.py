from __future__ import annotations

import json

import numpy as np
import pytest

from captionless3d.errors import CacheError, DataError
from captionless3d.teacher.features import (
    ARRAY_NAMES,
    build_feature_store,
    ensure_feature_store,
    feature_store_key,
    load_feature_store,
)
from captionless3d.teacher.openclip import create_teacher


def test_build_shapes_dtypes_and_values(fake_collection, tiny_teacher, tmp_path, capsys):
    c = fake_collection
    store = build_feature_store(c, tiny_teacher, tmp_path / "fs", batch_size=8, progress=True)
    assert "images/s" in capsys.readouterr().out
    assert store.view_emb.shape == (c.n, c.v, 32) and store.view_emb.dtype == np.float16
    assert store.photo_emb.shape == store.photo_masked_emb.shape == (c.n, c.k, 32)
    assert store.prompt_emb.shape == (3, 32)
    assert store.landmark_emb.shape == (9, 32)
    assert store.landmark_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_allclose(np.linalg.norm(store.view_emb.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    # values equal direct teacher calls (fp16 rounding), views / photos / masked photos / prompts
    direct = tiny_teacher.encode_images(c.views[4]).numpy()
    np.testing.assert_allclose(store.view_emb[4].astype(np.float32), direct, atol=2e-3)
    masked = c.photos[5] * c.masks[5][..., None].astype(np.uint8)
    np.testing.assert_allclose(store.photo_masked_emb[5].astype(np.float32), tiny_teacher.encode_images(masked).numpy(),
                               atol=2e-3)
    assert not np.allclose(store.photo_masked_emb[5], store.photo_emb[5])
    prompts = tiny_teacher.encode_texts(["a point cloud model of a table"]).numpy()
    np.testing.assert_allclose(store.prompt_emb[1].astype(np.float32), prompts[0], atol=2e-3)
    manifest = json.loads((tmp_path / "fs" / "manifest.json").read_text())
    assert manifest["key"]["teacher_id"] == tiny_teacher.id
    assert manifest["key"]["collection_fingerprint"] == c.fingerprint
    assert manifest["key"]["prompt_template"] == "a point cloud model of a {}"
    assert "white" in manifest["key"]["background_policy"]
    assert manifest["version"] == 2 and manifest["layout"]["shard_size"] == 4096
    assert (set(manifest["files"])
            == {f"{a}.npy" for a in ARRAY_NAMES[3:]} | {f"{a}/shard-00000.npy" for a in ARRAY_NAMES[:3]})
    assert store.mean_view_emb().shape == (c.n, 32)
    assert store.landmarks_of(2).shape == (3, 32)


def test_ensure_reuses_and_rebuilds_when_stale(fake_collection, tiny_teacher, tmp_path, monkeypatch):
    c = fake_collection
    first = ensure_feature_store(c, tiny_teacher, tmp_path / "fs", progress=False)
    calls = []
    monkeypatch.setattr(tiny_teacher.__class__, "encode_images", lambda self, *a, **k: calls.append(1) or 1 / 0)
    again = ensure_feature_store(c, tiny_teacher, tmp_path / "fs", progress=False)  # reused: no encoding
    assert not calls
    np.testing.assert_array_equal(first.view_emb, again.view_emb)
    monkeypatch.undo()
    with pytest.raises(CacheError, match="prompt_template"):
        ensure_feature_store(c, tiny_teacher, tmp_path / "fs", prompt_template="a {}", rebuild_stale=False,
                             progress=False)
    rebuilt = ensure_feature_store(c, tiny_teacher, tmp_path / "fs", prompt_template="a {}", progress=False)
    assert rebuilt.key["prompt_template"] == "a {}"


def test_teacher_or_data_mismatch_names_both_values(fake_collection, tiny_teacher, tiny_config, tmp_path):
    c = fake_collection
    build_feature_store(c, tiny_teacher, tmp_path / "fs", progress=False)
    other = create_teacher("test-clip-micro", model_config=tiny_config, seed=7)
    with pytest.raises(CacheError) as err:
        load_feature_store(tmp_path / "fs", feature_store_key(c, other))
    assert tiny_teacher.id in str(err.value) and other.id in str(err.value) and "teacher_id" in str(err.value)
    with pytest.raises(CacheError, match="collection_fingerprint.*fake-12-3-2-32-0.*other-data"):
        load_feature_store(tmp_path / "fs", {"collection_fingerprint": "other-data"})


def test_corrupt_array_names_the_file(fake_collection, tiny_teacher, tmp_path):
    d = tmp_path / "fs"
    build_feature_store(fake_collection, tiny_teacher, d, progress=False)
    raw = bytearray((d / "photo_emb" / "shard-00000.npy").read_bytes())
    raw[-5] ^= 0xFF
    (d / "photo_emb" / "shard-00000.npy").write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="photo_emb/shard-00000.npy"):
        load_feature_store(d, feature_store_key(fake_collection, tiny_teacher))
    (d / "landmark_emb.npy").unlink()
    with pytest.raises(CacheError, match="landmark_emb.npy"):
        load_feature_store(d)


def test_collection_without_photos_and_explicit_landmarks(fake_collection, tiny_teacher, tmp_path):
    c = fake_collection
    c.photos = None
    c.masks = None
    store = build_feature_store(c, tiny_teacher, tmp_path / "fs", landmarks={"lamp": ["a desk lamp"]}, progress=False)
    assert store.photo_emb.shape == (c.n, 0, 32)
    assert store.landmark_labels.tolist() == [2]
    with pytest.raises(DataError, match="sofa"):
        build_feature_store(c, tiny_teacher, tmp_path / "fs2", landmarks={"sofa": ["x"]}, progress=False)
    with pytest.raises(DataError, match="placeholder"):
        build_feature_store(c, tiny_teacher, tmp_path / "fs3", prompt_template="no slot", progress=False)
