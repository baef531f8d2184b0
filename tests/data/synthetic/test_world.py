"""Tests of the synthetic world: layout, contents, determinism, caching and argument checking (tiny worlds)."""
from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from captionless3d.data.synthetic import ALL_CATEGORIES, build_world, ensure_world, load_world, world
from captionless3d.errors import CacheError, ConfigError

TINY = dict(seed=3, categories=["chair", "mug", "airplane"], n_teacher=2, n_train=2, n_val=2, n_test=2, n_points=256,
            n_views=8, image_size=32, photos_per_object=2, progress=False)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("world")


@pytest.fixture(scope="module")
def tiny(tiny_root):
    return ensure_world(tiny_root, **TINY)


def _digest(path) -> dict[str, str]:
    return json.loads((path / "manifest.json").read_text())["files"]


def test_layout_shapes_and_dtypes(tiny):
    n = 3 * 4 * 2
    assert len(tiny) == n
    assert tiny.categories == ["chair", "mug", "airplane"]
    assert tiny.points.shape == (n, 256, 3) and tiny.points.dtype == np.float32
    assert tiny.views.shape == (n, 8, 32, 32, 3) and tiny.views.dtype == np.uint8
    assert tiny.photos.shape == (n, 2, 32, 32, 3) and tiny.photos.dtype == np.uint8
    assert tiny.masks.shape == (n, 2, 32, 32) and tiny.masks.dtype == np.bool_
    assert tiny.labels.dtype == np.int64 and set(tiny.labels.tolist()) == {0, 1, 2}
    assert tiny.subtype_ids.dtype == np.int64
    assert all(tiny.subtypes[s].split("/")[0] == tiny.categories[c] for s, c in zip(tiny.subtype_ids, tiny.labels))
    assert len(tiny.subtypes) == 4 + 3 + 3
    assert len(set(tiny.object_ids)) == n
    assert tiny.view_angles == [(45.0 * k, 30.0) for k in range(8)]
    assert isinstance(tiny.points, np.memmap) and isinstance(tiny.views, np.memmap)
    assert len(tiny.captions) == n and len(tiny.attributes) == n
    assert tiny.fingerprint and tiny.name.startswith("synthetic:")


def test_splits_disjoint_and_counted(tiny):
    idx = {s: tiny.indices(s) for s in ("teacher", "train", "val", "test")}
    assert all(len(v) == 6 for v in idx.values())
    assert not set(idx["teacher"]) & set(idx["train"])
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(len(tiny)))
    for c in range(3):
        assert (tiny.labels[idx["train"]] == c).sum() == 2
    with pytest.raises(ConfigError, match="split"):
        tiny.indices("training")


def test_points_normalised(tiny):
    pts = np.asarray(tiny.points)
    norms = np.linalg.norm(pts, axis=-1)
    assert norms.max() <= 1.0 + 1e-5
    assert (norms.max(axis=1) > 0.8).all()  # scaled up to the unit sphere, not just inside it
    assert np.abs(pts.mean(axis=1)).max() < 0.12  # centred (area-weighted centroid at the origin)
    assert np.isfinite(pts).all()


def test_renders_white_background(tiny):
    v = np.asarray(tiny.views)
    corners = np.stack([v[:, :, 0, 0], v[:, :, 0, -1], v[:, :, -1, 0], v[:, :, -1, -1]])
    assert (corners == 255).all(axis=-1).mean() > 0.97
    white = (v == 255).all(axis=-1).mean(axis=(2, 3))
    assert (white > 0.2).all() and (white < 0.99).all()  # object visible, background present


def test_photos_masks_nonempty_and_harder(tiny):
    m = np.asarray(tiny.masks)
    assert (m.sum(axis=(2, 3)) >= 4).all()
    assert (m.mean(axis=(2, 3)) < 0.9).all()
    ph = np.asarray(tiny.photos).astype(np.float32)
    # cluttered backgrounds: not white, and with texture
    bg = ph[~np.broadcast_to(m[..., None], ph.shape)]
    assert (bg == 255).mean() < 0.05
    assert ph.std(axis=(2, 3)).mean() > 15
    diff = np.abs(ph - np.asarray(tiny.views, np.float32)[:, :2]).mean()
    assert diff > 30


def test_texts(tiny):
    for i, caps in enumerate(tiny.captions):
        assert len(caps) >= 3 and len(set(caps)) == len(caps)
        color = tiny.attributes[i]["color"]
        assert all(color in c for c in caps)
    all_caps = {c for caps in tiny.captions for c in caps}
    for cat in tiny.categories:
        lms = tiny.landmarks[cat]
        assert len(lms) >= 32 and len(set(lms)) == len(lms)
        assert not set(lms) & all_caps


def test_cache_reuse(tiny_root, tiny):
    count = world.BUILD_COUNT
    mtime = (tiny.path / "manifest.json").stat().st_mtime_ns
    again = ensure_world(tiny_root, **TINY)
    assert world.BUILD_COUNT == count
    assert again.path == tiny.path and again.fingerprint == tiny.fingerprint
    assert (tiny.path / "manifest.json").stat().st_mtime_ns == mtime


def test_different_params_different_dir(tiny_root, tiny):
    params = {k: v for k, v in TINY.items() if k != "progress"}
    assert world.world_dir(tiny_root, world.world_params(**params)) == tiny.path
    assert world.world_dir(tiny_root, world.world_params(**{**params, "seed": 4})) != tiny.path
    assert world.world_dir(tiny_root, world.world_params(**{**params, "image_size": 48})) != tiny.path


def test_deterministic_and_batch_independent(tmp_path, monkeypatch):
    small = {**TINY, "categories": ["bowl", "lamp"], "n_teacher": 1, "n_val": 0, "n_test": 1}
    a = build_world(tmp_path / "a", **small)
    monkeypatch.setattr(world, "CHUNK", 3)  # a different batching of objects into rasterisation passes
    b = build_world(tmp_path / "b", **small)
    assert a.name == b.name
    da, db = _digest(a), _digest(b)
    assert da == db
    assert (hashlib.sha256((a / "points.npy").read_bytes()).hexdigest()
            == hashlib.sha256((b / "points.npy").read_bytes()).hexdigest())
    c = build_world(tmp_path / "c", **{**small, "seed": small["seed"] + 1})
    assert _digest(c)["points.npy"] != da["points.npy"]


def test_corrupt_and_missing_files(tmp_path):
    small = {**TINY, "categories": ["bottle"], "n_teacher": 1, "n_train": 1, "n_val": 0, "n_test": 0}
    path = build_world(tmp_path, **small)
    load_world(path)
    data = bytearray((path / "views.npy").read_bytes())
    data[-10] ^= 0xFF
    (path / "views.npy").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="views.npy"):
        load_world(path)
    (path / "masks.npy").unlink()
    with pytest.raises(CacheError, match="masks.npy"):
        load_world(path, verify=False)
    with pytest.raises(CacheError):
        load_world(tmp_path / "does-not-exist")
    # an incomplete world (no manifest) is rebuilt, not reused
    (path / "manifest.json").unlink()
    count = world.BUILD_COUNT
    w = ensure_world(tmp_path, **small)
    assert world.BUILD_COUNT == count + 1 and w.masks.shape[0] == 2


@pytest.mark.parametrize("kwargs, name", [
    ({"categories": ["chair", "dragon"]}, "categories"),
    ({"categories": []}, "categories"),
    ({"n_train": -1}, "n_train"),
    ({"n_test": 1.5}, "n_test"),
    ({"image_size": 8}, "image_size"),
    ({"n_points": 0}, "n_points"),
    ({"photos_per_object": -2}, "photos_per_object"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ConfigError, match=name):
        build_world(tmp_path, **{**TINY, **kwargs})


def test_missing_root_created_and_all_alias(tmp_path):
    root = tmp_path / "x" / "y"
    p = world.world_params(categories="all")
    assert p["categories"] == list(ALL_CATEGORIES) and len(ALL_CATEGORIES) >= 24
    path = build_world(root, **{**TINY, "categories": "piano", "n_teacher": 0, "n_train": 1, "n_val": 0, "n_test": 0,
                                "photos_per_object": 0})
    assert path.parent == root and load_world(path).photos.shape[1] == 0


def test_concurrent_builds_build_once(tmp_path):
    small = {**TINY, "categories": ["vase"], "n_teacher": 1, "n_train": 1, "n_val": 0, "n_test": 0}
    count = world.BUILD_COUNT
    out, errors = [], []

    def run():
        try:
            out.append(build_world(tmp_path, **small))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(out)) == 1
    assert world.BUILD_COUNT == count + 1
