"""Round trips of a store's view embeddings through the paper's per-view .pth layout and OpenShape's image_feat."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from captionless3d.data.readers import read_nocaptions, read_openshape
from captionless3d.data.readers.nocaptions import export_nocaptions
from captionless3d.errors import ConfigError, DataError
from captionless3d.teacher.features import build_feature_store, feature_store_key, load_feature_store
from captionless3d.teacher.interop import export_openshape_image_feat, export_paper_embeddings, import_view_embeddings


@pytest.fixture()
def store(fake_collection, tiny_teacher, tmp_path):
    return build_feature_store(fake_collection, tiny_teacher, tmp_path / "fs", shard_size=5, batch_size=8,
                               num_threads=1, progress=False)


def _by_id(collection, store):
    return {oid: np.asarray(store.view_emb[i], np.float32) for i, oid in enumerate(collection.object_ids)}


def test_paper_pth_round_trip_and_pipeline_import(fake_collection, tiny_teacher, store, tmp_path):
    c = fake_collection
    c.__class__ = type("SizedFake", (type(c),), {"__len__": lambda self: self.n})  # export_nocaptions wants len()
    export_nocaptions(c, tmp_path / "pc")  # the points half of the paper's layout
    assert export_paper_embeddings(store, c, tmp_path / "emb") == c.n * c.v  # angles from the manifest: 0, 120, 240
    assert (tmp_path / "emb" / "chair" / "obj0000" / "chair-obj0000_r_120.pth").is_file()
    col = read_nocaptions(tmp_path / "pc", emb_root=tmp_path / "emb", view_angles=[0, 120, 240], n_points=64)
    assert col.view_emb.shape == (c.n, c.v, 32) and col.views.shape[1] == 0
    imported = import_view_embeddings(col, tiny_teacher, tmp_path / "imported", shard_size=4, source="paper")
    assert imported.provenance["compute"]["source"] == "paper" and imported.photo_emb.shape == (c.n, 0, 32)
    original = _by_id(c, store)
    for i, oid in enumerate(col.object_ids):
        np.testing.assert_allclose(np.asarray(imported.view_emb[i], np.float32), original[oid.split("-", 1)[1]],
                                   atol=1e-3)
    # the training pipeline imports them by itself (no renders, precomputed embeddings) under the usual key
    from captionless3d.pipeline import build_features

    cfg = OmegaConf.create({"prompt_template": "a point cloud model of a {}",
                            "paths": {"cache_dir": str(tmp_path / "cache")}})
    piped = build_features(cfg, col, tiny_teacher)
    assert piped.view_emb.shape == (c.n, c.v, 32)
    load_feature_store(piped.directory, feature_store_key(col, tiny_teacher))
    with pytest.raises(ConfigError, match="ULIP azimuths"):
        export_paper_embeddings(store, c, tmp_path / "emb2", angles=[0, 10, 20])


def test_openshape_image_feat_round_trip(fake_collection, tiny_teacher, store, tmp_path):
    c = fake_collection
    split = export_openshape_image_feat(store, c, tmp_path / "os")
    col = read_openshape(tmp_path / "os", split_file=str(split.relative_to(tmp_path / "os")), n_points=None)
    assert col.view_emb.shape == (c.n, c.v, 32) and sorted(col.categories) == sorted(c.categories)
    imported = import_view_embeddings(col, tiny_teacher, tmp_path / "imported")
    original = _by_id(c, store)
    for i, oid in enumerate(col.object_ids):
        np.testing.assert_allclose(np.asarray(imported.view_emb[i], np.float32), original[oid], atol=1e-3)
        assert col.categories[col.labels[i]] == c.categories[c.labels[c.object_ids.index(oid)]]


def test_import_refuses_bad_embeddings(fake_collection, tiny_teacher, tmp_path):
    c = fake_collection
    with pytest.raises(DataError, match="no precomputed view embeddings"):
        import_view_embeddings(c, tiny_teacher, tmp_path / "a")
    emb = np.random.RandomState(0).randn(c.n, 3, 16).astype(np.float32)
    with pytest.raises(DataError, match="16-d but teacher .* is 32-d"):
        import_view_embeddings(c, tiny_teacher, tmp_path / "b", emb)
    emb = np.random.RandomState(0).randn(c.n, 3, 32).astype(np.float32)
    emb[7, 1] = np.nan
    with pytest.raises(DataError, match=r"object 'obj0007' \(index 7\)"):
        import_view_embeddings(c, tiny_teacher, tmp_path / "c", emb)
