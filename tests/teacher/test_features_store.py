"""Feature store format v2: shards, manifest fields, v1 staleness, resume, error messages, consumers."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import captionless3d
from captionless3d.data.readers.base import LazyArray
from captionless3d.errors import CacheError, DataError
from captionless3d.teacher import extract
from captionless3d.teacher.features import (
    FeatureStore,
    build_feature_store,
    ensure_feature_store,
    feature_store_key,
    load_feature_store,
)
from captionless3d.teacher.sharded import ShardedArray
from captionless3d.teacher.store_format import BACKGROUND_POLICY, StorePlan, shard_file
from captionless3d.utils.manifest import write_manifest
from captionless3d.utils.threads import torch_threads


def _build(c, teacher, d, **kw):
    return build_feature_store(c, teacher, d, shard_size=5, batch_size=8, progress=False, num_threads=1, **kw)


def _stat(path):
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_layout_manifest_and_sharded_arrays(fake_collection, tiny_teacher, tmp_path):
    c = fake_collection
    store = _build(c, tiny_teacher, tmp_path / "fs")
    d = tmp_path / "fs"
    assert (sorted(p.name for p in (d / "view_emb").iterdir())
            == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"])
    assert [np.load(d / shard_file("photo_emb", k)).shape for k in range(3)] == [(5, 2, 32), (5, 2, 32), (2, 2, 32)]
    assert not (d / "progress").exists() and not list(d.rglob("*.tmp"))
    m = json.loads((d / "manifest.json").read_text())
    assert m["version"] == 2 and m["layout"]["shard_size"] == 5 and m["layout"]["num_shards"] == 3
    assert len(m["files"]) == 3 * 3 + 3 and all(len(v) == 64 for v in m["files"].values())  # SHA-256 per shard
    prov = m["provenance"]
    assert prov["teacher_id"] == tiny_teacher.id and prov["preprocessing"] == tiny_teacher.preprocess_id
    assert prov["background_policy"] == BACKGROUND_POLICY and "white" in prov["background_policy_reason"]
    assert prov["view_angles"] == [list(a) for a in c.view_angles] and prov["collection_fingerprint"] == c.fingerprint
    assert prov["code_version"] == captionless3d.__version__
    assert isinstance(store.view_emb, ShardedArray) and store.view_emb.shape == (12, 3, 32)
    # every row equals a direct teacher call, across shard boundaries
    direct = tiny_teacher.encode_images(np.ascontiguousarray(c.views[[4, 5, 11]].reshape(-1, 32, 32, 3))).numpy()
    np.testing.assert_allclose(store.view_emb[np.array([4, 5, 11])].reshape(-1, 32).astype(np.float32), direct,
                               atol=2e-3)
    np.testing.assert_allclose(store.mean_view_emb(), store.mean_view_emb(np.arange(12)), atol=1e-6)


def test_view_angles_null_when_the_collection_has_none(fake_collection, tiny_teacher, tmp_path):
    fake_collection.view_angles = []
    _build(fake_collection, tiny_teacher, tmp_path / "fs")
    assert json.loads((tmp_path / "fs" / "manifest.json").read_text())["provenance"]["view_angles"] is None


def test_v1_store_is_stale_and_rebuilt(fake_collection, tiny_teacher, tmp_path, caplog):
    d = tmp_path / "fs"
    d.mkdir()
    key = feature_store_key(fake_collection, tiny_teacher)
    for name in ("view_emb", "photo_emb", "photo_masked_emb", "prompt_emb", "landmark_emb", "landmark_labels"):
        np.save(d / f"{name}.npy", np.zeros((2, 2), np.float16))
    write_manifest(d, kind="feature_store", version=1, key=key, files=[p.name for p in d.glob("*.npy")])
    with pytest.raises(CacheError, match="format version 1, this code reads version 2"):
        load_feature_store(d, key)
    with pytest.raises(CacheError, match="version 1"):
        ensure_feature_store(fake_collection, tiny_teacher, d, rebuild_stale=False, progress=False)
    with caplog.at_level(logging.WARNING):
        store = ensure_feature_store(fake_collection, tiny_teacher, d, progress=False, num_threads=1)
    assert "version 1" in caplog.text
    assert store.view_emb.shape == (12, 3, 32) and not (d / "view_emb.npy").exists()


def test_corrupt_shard_is_named_and_only_it_is_rebuilt(fake_collection, tiny_teacher, tmp_path, caplog):
    c, d = fake_collection, tmp_path / "fs"
    _build(c, tiny_teacher, d)
    good = np.asarray(load_feature_store(d).view_emb)
    bad = d / "view_emb" / "shard-00001.npy"
    raw = bytearray(bad.read_bytes())
    raw[-7] ^= 0xFF
    bad.write_bytes(bytes(raw))
    with pytest.raises(CacheError,
                       match=r"view_emb/shard-00001\.npy: checksum mismatch in view_emb shard 1 \(objects 5\.\.9\)"):
        load_feature_store(d)
    lazy = load_feature_store(d, verify_checksums="lazy")  # opens; shard 1 is checked when first read
    np.testing.assert_array_equal(lazy.view_emb[:5], good[:5])
    with pytest.raises(CacheError, match="view_emb shard 1, objects 5..9"):
        lazy.view_emb[7]
    kept = {k: _stat(d / shard_file("view_emb", k)) for k in (0, 2)}
    with caplog.at_level(logging.WARNING):
        store = ensure_feature_store(c, tiny_teacher, d, shard_size=5, batch_size=8, progress=False, num_threads=1)
    assert "shard-00001.npy" in caplog.text and "re-doing" in caplog.text
    assert {k: _stat(d / shard_file("view_emb", k)) for k in (0, 2)} == kept  # the intact shards were not rewritten
    np.testing.assert_array_equal(np.asarray(store.view_emb), good)
    assert store.stats["shards_encoded"] == 1 and store.stats["shards_reused"] == 2


def test_missing_shard_file_is_named(fake_collection, tiny_teacher, tmp_path):
    d = tmp_path / "fs"
    _build(fake_collection, tiny_teacher, d)
    (d / "photo_masked_emb" / "shard-00002.npy").unlink()
    for verify in (True, False, "lazy"):
        with pytest.raises(CacheError, match=r"photo_masked_emb/shard-00002\.npy.*missing"):
            load_feature_store(d, verify_checksums=verify)


def test_manifest_of_another_teacher_is_refused(fake_collection, tiny_teacher, tmp_path):
    d = tmp_path / "fs"
    _build(fake_collection, tiny_teacher, d)
    key = {**feature_store_key(fake_collection, tiny_teacher), "teacher_id": "openclip:ViT-B-32:laion2b_s34b_b79k"}
    with pytest.raises(CacheError,
                       match=rf"teacher_id: cache has '{tiny_teacher.id}', run expects "
                             r"'openclip:ViT-B-32:laion2b_s34b_b79k'"):
        load_feature_store(d, key)


@pytest.mark.parametrize("kind", ["lazy_reader", "ragged"])
def test_object_with_fewer_views_is_named(fake_collection, tiny_teacher, tmp_path, kind):
    c = fake_collection
    views = c.views
    if kind == "lazy_reader":  # what the real readers give: rows decoded on access, shape-checked
        c.views = LazyArray(c.n, views.shape[1:], np.uint8, lambda i: views[i][:2] if i == 6 else views[i],
                            name="views")
    else:  # an array-like that silently returns a short row
        class Ragged:
            shape, dtype = views.shape, views.dtype

            def __len__(self):
                return len(views)

            def __getitem__(self, key):
                if isinstance(key, (int, np.integer)):
                    return views[key][:2] if key == 6 else views[key]
                return (np.stack([self[i] for i in range(*key.indices(len(views)))])
                        if 6 not in range(*key.indices(len(views)))
                        else [self[i] for i in range(*key.indices(len(views)))])

        c.views = Ragged()
    with pytest.raises(DataError, match=r"object 'obj0006' \(index 6\) in shard 1.*views"):
        _build(c, tiny_teacher, tmp_path / "fs")
    # shard 0 was finished before the error and survives for a resume
    assert (tmp_path / "fs" / "progress" / "shard-00000.json").is_file()


def test_resume_skips_finished_shards_in_process(fake_collection, tiny_teacher, tmp_path, monkeypatch):
    c, d = fake_collection, tmp_path / "fs"
    ref = _build(c, tiny_teacher, tmp_path / "ref")
    # an interrupted run: shard 1 finished (journalled), shard 0 written but not journalled, no manifest
    key = feature_store_key(c, tiny_teacher)
    plan = extract.make_plan(c, tiny_teacher, key, shard_size=5, batch_size=8)
    with torch_threads(1):  # the thread count _build uses: shards are byte-identical only at equal settings
        extract.extract_shards(c, tiny_teacher, d, plan, [1], batch_size=8, progress=False)
    (d / "view_emb" / "shard-00000.npy").write_bytes(b"half a shard")
    before = _stat(d / shard_file("view_emb", 1))
    encoded = []
    real = extract.encode_chunk
    monkeypatch.setattr(extract, "encode_chunk", lambda t, chunk, plan, start,
                        **kw: encoded.append(start) or real(t, chunk, plan, start, **kw))
    store = _build(c, tiny_teacher, d)
    assert sorted(encoded) == [0, 2, 4, 10]  # chunks (8 // 3 = 2 objects) of shards 0 and 2 only
    assert _stat(d / shard_file("view_emb", 1)) == before
    for name in ("view_emb", "photo_emb", "photo_masked_emb"):
        for k in range(3):
            assert (d / shard_file(name, k)).read_bytes() == (tmp_path / "ref" / shard_file(name, k)).read_bytes()
    assert store.stats["shards_reused"] == 1
    assert np.array_equal(np.asarray(store.view_emb), np.asarray(ref.view_emb))


def test_plan_chunks_never_straddle_shards():
    plan = StorePlan(num_objects=11, shard_size=4, views=3, photos=0, dim=8, chunk_objects=3, key={})
    assert plan.num_shards == 3 and plan.bounds() == [0, 4, 8, 11]
    assert [plan.chunks(k) for k in range(3)] == [[(0, 3), (3, 4)], [(4, 7), (7, 8)], [(8, 11)]]
    assert plan.build_id == StorePlan(11, 4, 3, 0, 8, 99, {}).build_id  # chunking is not part of the build id
    assert plan.build_id != StorePlan(11, 5, 3, 0, 8, 3, {}).build_id


def test_consumers_accept_the_sharded_store(fake_collection, tiny_teacher, tmp_path):
    from captionless3d.mining.sparse import build_sparse_prior
    from captionless3d.mining.store import PriorStore
    from captionless3d.training.datamodule import PointViewDataModule

    c = fake_collection
    store: FeatureStore = _build(c, tiny_teacher, tmp_path / "fs")
    dense = np.asarray(store.view_emb)
    members = c.splits == "train"
    kw = dict(landmark_emb=store.landmark_emb, landmark_labels=store.landmark_labels)
    a = PriorStore.build("i2l2", store.view_emb, c.labels, members, **kw)
    b = PriorStore.build("i2l2", dense, c.labels, members, **kw)
    rows = torch.from_numpy(np.flatnonzero(members))
    torch.testing.assert_close(a.pairs(rows, rows), b.pairs(rows, rows))
    sa = build_sparse_prior("i2i", store.view_emb, members, k=2)
    sb = build_sparse_prior("i2i", dense, members, k=2)
    torch.testing.assert_close(sa.pairs(rows, rows), sb.pairs(rows, rows))
    dm = PointViewDataModule(n_points=32, batch_size=2, rotation_degrees=0).attach(c, store.view_emb)
    batch = next(iter(dm.train_dataloader()))
    index = batch["index"].numpy()
    matches = [(dense[i] == e.numpy().astype(np.float16)).all(-1).any() for i, e in zip(index, batch["image_emb"])]
    assert all(matches)  # each item's image_emb is one of its object's views
