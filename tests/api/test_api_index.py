"""The persistent shape index: layout, lazy loading, exact search mechanics, photo search hit rate, bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from captionless3d.errors import CacheError, DataError
from captionless3d.shape_index import Hit, ShapeIndex, splat_thumbnails


def test_index_layout_manifest_and_thumbnails(model, shapes, built_index):
    from PIL import Image

    directory = built_index.directory
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kind"] == "shape_index" and manifest["key"]["teacher_id"] == model.teacher_id
    assert manifest["key"]["encoder_sha256"] == model.checkpoint_sha256 and len(model.checkpoint_sha256) == 64
    assert manifest["key"]["count"] == len(shapes.paths) == 208
    assert set(manifest["files"]) == {"embeddings.npy", "paths.json"}
    assert json.loads((directory / "paths.json").read_text()) == sorted(shapes.paths)  # relative, sorted
    emb = np.load(directory / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.shape == (208, model.teacher_dim)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    thumbs = sorted((directory / "thumbs").glob("*.png"))
    assert len(thumbs) == 208 and thumbs[0].name == "000000.png"
    image = np.asarray(Image.open(thumbs[0]))
    assert image.shape == (64, 64, 3) and (image < 255).any() and (image == 255).all(axis=2).mean() > 0.3
    assert built_index.resolve(built_index.paths[0]) == shapes.dir.resolve() / sorted(shapes.paths)[0]
    assert not list(directory.glob(".*.tmp"))  # no leftovers of the atomic writes


def test_index_embeddings_are_the_shapes_own_embeddings(model, shapes, built_index):
    order = np.argsort(shapes.paths)  # index rows are in sorted path order
    files = [shapes.dir / shapes.paths[i] for i in order[:40]]
    expected = model.encode_points(files)
    np.testing.assert_allclose(built_index.embeddings[:40].astype(np.float32), expected, atol=2e-3)


def test_load_is_lazy_and_memory_mapped(model, built_index):
    index = ShapeIndex.load(built_index.directory, teacher_id=model.teacher_id)
    assert index._embeddings is None and index._paths is None and len(index) == 208
    index.search(np.ones(model.teacher_dim, np.float32) / np.sqrt(model.teacher_dim), k=3)
    assert isinstance(index._embeddings, np.memmap) and not index._embeddings.flags.writeable
    ShapeIndex.load(built_index.directory, verify=True)  # checksums of the payload match


def test_self_search_returns_each_shape_first(model, shapes, built_index):
    """Mechanics, exactly: querying with a shape's own file returns that shape first, with cosine ~1."""
    queries = [shapes.paths[i] for i in range(0, len(shapes.paths), 7)]  # 30 files, .npy and .ply
    hits = model.search(points=[shapes.dir / q for q in queries], k=5, index=built_index.directory)
    assert len(hits) == len(queries)
    for query, ranked in zip(queries, hits):
        assert isinstance(ranked[0], Hit) and ranked[0].path == query, (query, ranked[:2])
        assert ranked[0].score > 0.995
        assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    single = model.search(shapes.dir / queries[0], k=3, index=built_index.directory)  # detected by suffix
    assert len(single) == 3 and single[0].path == queries[0]


def test_search_equals_brute_force_cosine(model, built_index):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(6, model.teacher_dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, positions = built_index.search_embeddings(queries, k=10)
    exact = queries @ built_index.embeddings.astype(np.float32).T  # (6, 208)
    assert positions.shape == (6, 10)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, positions, 1), atol=2e-3)
    kth = np.sort(exact, axis=1)[:, ::-1][:, 9]
    assert (scores[:, -1] >= kth - 2e-3).all()  # nothing better was missed (up to fp16 rounding)
    assert built_index.search_embeddings(queries[0], k=500)[1].shape == (1, 208)  # k capped at N


def test_photo_search_hit_rate(model, world, shapes, built_index, capsys):
    """Held-out photos (never seen in training) of the indexed objects -> their shape in the top 5?

    The student here is untrained (random init), so the hit rate is printed next to chance and not asserted; the
    search mechanics are asserted exactly in the tests above.
    """
    col = world.collection
    photos = np.asarray(col.photos[shapes.objects, 0])  # (208, 32, 32, 3): first photo of every indexed object
    path_of_object = dict(zip(shapes.objects.tolist(), shapes.paths))
    hits = model.search(image=photos, k=5, index=built_index.directory)
    found = [path_of_object[o] in [h.path for h in ranked] for o, ranked in zip(shapes.objects.tolist(), hits)]
    category = [path_of_object[o].split("/")[0] == ranked[0].path.split("/")[0]
                for o, ranked in zip(shapes.objects.tolist(), hits)]
    rate, chance = 100 * np.mean(found), 100 * 5 / len(shapes.paths)
    cat_rate, cat_chance = 100 * np.mean(category), 100 / len(col.categories)
    with capsys.disabled():
        print(f"\nphoto -> shape search over {len(shapes.paths)} shapes (untrained student): top-5 hit rate "
              f"{rate:.1f}% (chance {chance:.1f}%); top-1 category {cat_rate:.1f}% (chance {cat_chance:.1f}%)")
    assert len(hits) == len(photos) and all(len(r) == 5 for r in hits)


def test_text_query(model, built_index):
    hits = model.search(text="a red office chair", k=4, index=built_index)
    assert len(hits) == 4 and all(h.path in built_index.paths for h in hits)
    batch = model.search(["a chair", "a mug"], k=2, index=built_index)
    assert len(batch) == 2 and all(len(r) == 2 for r in batch)


def test_reindex_over_an_old_index_and_skip_bad_files(model, tmp_path, shapes):
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for rel in shapes.paths[:5]:
        shutil.copy(shapes.dir / rel, src / rel.replace("/", "_"))
    (src / "broken.obj").write_bytes(b"\x00\x01 garbage")
    with pytest.raises(DataError, match=r"broken\.obj"):
        model.index(src, tmp_path / "idx", progress=False)
    assert not (tmp_path / "idx" / "manifest.json").exists()  # a failed build never looks complete
    index = model.index(src, tmp_path / "idx", progress=False, on_error="skip", thumbnails=False)
    assert len(index) == 5 and index.manifest["extra"]["skipped"][0]["path"] == "broken.obj"
    assert index.thumbnail(0) is None
    (src / "broken.obj").unlink()
    inner = model.index(src, src / "inner_index", progress=False)  # an index inside the shapes dir is not indexed
    again = model.index(src, src / "inner_index", progress=False)
    assert len(inner) == len(again) == 5


def test_index_from_another_teacher_or_corrupt(model, tmp_path, built_index):
    foreign = ShapeIndex.write(tmp_path / "foreign", np.eye(2, model.teacher_dim, dtype=np.float32), ["a.npy", "b.npy"],
                               teacher_id="hf:openai/clip-vit-base-patch32@abc", encoder_sha256="f" * 64)
    with pytest.raises(CacheError, match=r"built with teacher hf:openai/clip-vit-base-patch32@abc, but the model "
                                         r"queries with teacher " + model.teacher_id):
        ShapeIndex.load(foreign.directory, teacher_id=model.teacher_id)
    with pytest.raises(CacheError, match="built with teacher hf:openai"):
        model.search(text="chair", index=foreign)
    with pytest.raises(CacheError, match="does not exist"):
        ShapeIndex.load(tmp_path / "nowhere")
    np.save(foreign.directory / "embeddings.npy", np.zeros((3, 4), np.float16))
    with pytest.raises(CacheError, match="checksum mismatch"):
        ShapeIndex.load(foreign.directory, verify=True)
    with pytest.raises(CacheError, match=r"manifest says float16 \(2, "):
        _ = ShapeIndex.load(foreign.directory).embeddings
    with pytest.raises(DataError, match="query embeddings must be"):
        built_index.search_embeddings(np.ones((1, 3), np.float32))


def test_splat_thumbnails_depth_and_bounds():
    pts = np.array([[[0.0, 0.0, 0.9], [0.0, 0.0, -0.9], [1.0, 1.0, 0.0]]], np.float32)
    img = splat_thumbnails(pts, 32, azimuth=0.0, elevation=0.0, splat=1)
    assert img.shape == (1, 32, 32, 3) and img.dtype == np.uint8
    assert (img[0] < 255).any(axis=2).sum() == 2  # two pixels: the centre (two points) and the corner
    centre = img[0, 16, 16].astype(int)  # the nearer point (z = +0.9) wins: darker than a far point would be
    far_only = splat_thumbnails(pts[:, 1:2], 32, azimuth=0.0, elevation=0.0, splat=1)[0, 16, 16].astype(int)
    assert centre.sum() < far_only.sum()
    assert (img[0, 0, 31] < 255).any()  # (1, 1) maps to the top-right corner
