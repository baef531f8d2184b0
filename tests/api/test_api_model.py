"""captionless3d.load(): encoder, lazily built teacher, preprocessing, encoders, classification, bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from api_world import rewrite_checkpoint

import captionless3d
from captionless3d.api import Captionless3DModel
from captionless3d.api.inputs import read_shape_file
from captionless3d.data.pointcloud import normalise_unit_sphere, subset_indices
from captionless3d.errors import CacheError, CheckpointError, ConfigError, DataError


def _reference(model, clouds: np.ndarray) -> np.ndarray:
    """Evaluation's path by hand: seeded subset (evaluation's function, one draw for the batch), unit-sphere
    normalisation, encoder, L2."""
    idx = subset_indices(clouds.shape[1], model.n_points, torch.Generator().manual_seed(0), pad=True)[0].numpy()
    x = normalise_unit_sphere(torch.from_numpy(np.ascontiguousarray(clouds[:, idx], dtype=np.float32)))
    with torch.no_grad():
        emb = model.encoder(x)
    return (emb / emb.norm(dim=1, keepdim=True)).numpy()


def test_load_gives_eval_encoder_metadata_and_lazy_teacher(world, model):
    assert isinstance(model, Captionless3DModel) and captionless3d.load is not None
    assert not model.encoder.training
    assert model.teacher_id == world.teacher.id and model.teacher_dim == world.teacher.dim
    assert model.n_points == 128  # data=synthetic_tiny: data.loader.n_points
    assert model.data_fingerprint == world.collection.fingerprint and model.experiment == "avg"
    assert model.preprocessing["n_points"] == 128 and "unit sphere" in model.preprocessing["normalization"]
    fresh = captionless3d.load(world.ckpt)
    assert fresh._teacher is None  # built only when images or texts need it
    assert fresh.teacher.id == world.teacher.id


def test_encode_points_array_batch_and_single(world, model):
    clouds = np.asarray(world.collection.points[:5])  # (5, 256, 3)
    emb = model.encode_points(clouds)
    assert emb.shape == (5, world.teacher.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, _reference(model, clouds), atol=1e-5)
    np.testing.assert_allclose(model.encode_points(clouds[2]), emb[2:3], atol=1e-5)
    np.testing.assert_allclose(model.encode_points(torch.from_numpy(clouds)), emb, atol=1e-6)
    # normalised like training: translation and uniform scale do not matter
    np.testing.assert_allclose(model.encode_points(clouds * 3.0 + np.float32(5.0)), emb, atol=1e-4)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # different shapes, different embeddings


def test_small_clouds_are_padded_to_n_points(model, world):
    cloud = np.asarray(world.collection.points[0])[:50]
    emb = model.encode_points(cloud)
    assert emb.shape == (1, model.teacher_dim) and np.isfinite(emb).all()
    idx = subset_indices(50, model.n_points, torch.Generator().manual_seed(0), pad=True)[0]
    assert len(idx) == model.n_points and set(idx.tolist()) == set(range(50))


def test_shape_files_npy_npz_ply_obj_off(tmp_path, world, model):
    import trimesh

    cloud = np.asarray(world.collection.points[3], dtype=np.float32)
    np.save(tmp_path / "a.npy", cloud)
    np.savez(tmp_path / "b.npz", xyz=cloud)
    trimesh.PointCloud(cloud).export(tmp_path / "c.ply")
    expected = model.encode_points(cloud)
    for name in ("a.npy", "b.npz", "c.ply"):
        np.testing.assert_allclose(model.encode_points(tmp_path / name), expected, atol=1e-5, err_msg=name)
    box = trimesh.creation.box(extents=(1.0, 2.0, 0.5))
    for suffix in ("obj", "off", "ply"):
        box.export(tmp_path / f"box.{suffix}")
        pts = read_shape_file(tmp_path / f"box.{suffix}", n_samples=300, seed=0)
        assert pts.shape == (1, 300, 3)
        # surface samples: every point lies on a face of the box (one coordinate at +-half extent)
        on_face = np.isclose(np.abs(pts[0]), np.array([0.5, 1.0, 0.25]), atol=1e-5).any(axis=1)
        assert on_face.all(), suffix
    emb = model.encode_points([str(tmp_path / "box.obj"), tmp_path / "box.off", cloud])
    assert emb.shape == (3, model.teacher_dim)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-5)  # same mesh, same seeded samples


def test_encode_images_from_arrays_pil_and_paths(tmp_path, world, model):
    from PIL import Image

    photos = np.asarray(world.collection.photos[:3, 0])  # (3, 32, 32, 3) uint8, the teacher's size
    emb = model.encode_images(photos)
    assert emb.shape == (3, model.teacher_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, world.teacher.encode_images(photos, progress=False).numpy(), atol=1e-6)
    Image.fromarray(photos[1]).save(tmp_path / "p.png")
    from_path = model.encode_images(tmp_path / "p.png")
    from_pil = model.encode_images(Image.fromarray(photos[1]))
    np.testing.assert_allclose(from_path, emb[1:2], atol=1e-5)
    np.testing.assert_allclose(from_pil, emb[1:2], atol=1e-5)
    big = np.asarray(Image.fromarray(photos[2]).resize((64, 64), Image.BICUBIC))
    assert model.encode_images([photos[0], big]).shape == (2, model.teacher_dim)  # mixed sizes


def test_encode_texts(world, model):
    texts = ["a red chair", "a point cloud model of a mug"]
    emb = model.encode_texts(texts)
    assert emb.shape == (2, model.teacher_dim)
    np.testing.assert_allclose(emb, world.teacher.encode_texts(texts, progress=False).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.encode_texts("a red chair"), emb[:1], atol=1e-6)


def test_classify_ranks_labels_by_cosine(world, model):
    labels = list(world.collection.categories)
    clouds = np.asarray(world.collection.points[:4])
    result = model.classify(clouds, labels=labels)
    assert len(result) == 4 and all(len(r) == len(labels) for r in result)
    classes = world.teacher.encode_texts([f"a point cloud model of a {c}" for c in labels], progress=False).numpy()
    scores = model.encode_points(clouds) @ classes.T
    for row, ranked in zip(scores, result):
        assert [label for label, _ in ranked] == [labels[j] for j in np.argsort(-row, kind="stable")]
        np.testing.assert_allclose([s for _, s in ranked], np.sort(row)[::-1], atol=1e-5)
    top2 = model.classify(clouds[0], labels=labels, template="a photo of a {}", top=2)
    assert len(top2) == 1 and len(top2[0]) == 2
    with pytest.raises(ConfigError, match="placeholder"):
        model.classify(clouds[0], labels=labels, template="no placeholder")
    with pytest.raises(DataError, match="duplicate"):
        model.classify(clouds[0], labels=["chair", "chair"])


# --------------------------------------------------------------------------------------------------- bad inputs
def test_unreadable_mesh_names_the_file(tmp_path, model):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nend_header\n1 2\n")
    with pytest.raises(DataError, match=r"broken\.ply: unreadable mesh or point cloud"):
        model.encode_points(bad)
    empty = tmp_path / "nothing.obj"
    empty.write_bytes(b"\x00\x01 not an obj file")
    with pytest.raises(DataError, match=r"nothing\.obj: no (mesh or point geometry|vertices)"):
        model.encode_points(empty)
    with pytest.raises(DataError, match=r"missing\.off: shape file does not exist"):
        model.encode_points(tmp_path / "missing.off")
    with pytest.raises(DataError, match=r"unsupported shape file type '\.xyz'"):
        model.encode_points(tmp_path / "cloud.xyz")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: not a readable \.npy point array"):
        model.encode_points(pickled)


def test_cloud_with_nans_is_rejected(tmp_path, world, model):
    cloud = np.asarray(world.collection.points[0]).copy()
    cloud[[3, 7], 1] = np.nan
    with pytest.raises(DataError, match=r"points: 2 points have NaN/Inf coordinates"):
        model.encode_points(cloud)
    batch = np.stack([np.asarray(world.collection.points[1]), cloud])
    with pytest.raises(DataError, match=r"points\[1\]: 2 points have NaN/Inf"):
        model.encode_points(batch)
    np.save(tmp_path / "nan.npy", cloud)
    with pytest.raises(DataError, match=r"nan\.npy: 2 points have NaN/Inf"):
        model.encode_points(tmp_path / "nan.npy")
    with pytest.raises(DataError, match="degenerate"):
        model.encode_points(np.ones((64, 3), np.float32))


def test_file_that_is_not_an_image(tmp_path, model):
    fake = tmp_path / "photo.png"
    fake.write_text("this is not a PNG")
    with pytest.raises(DataError, match=r"photo\.png: not a readable image"):
        model.encode_images(fake)
    with pytest.raises(DataError, match="uint8 RGB array"):
        model.encode_images(np.zeros((8, 8, 3), np.float32))


def test_newer_checkpoint_format_version(tmp_path, world):
    newer = rewrite_checkpoint(world.ckpt, tmp_path / "newer.ckpt", format_version=99)
    with pytest.raises(CheckpointError, match=r"newer\.ckpt: checkpoint format version 99 is newer"):
        captionless3d.load(newer)
    with pytest.raises(CheckpointError, match="does not exist"):
        captionless3d.load(tmp_path / "absent.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        captionless3d.load(junk)


def test_teacher_with_another_id_fails_clearly(tmp_path, world):
    other = rewrite_checkpoint(world.ckpt, tmp_path / "other.ckpt",
                               teacher_id="openclip:synthetic-clip-tiny:sha256:0123456789ab")
    model = captionless3d.load(other)
    model.encode_points(np.asarray(world.collection.points[0]))  # the encoder alone works
    with pytest.raises(CheckpointError,
                       match=r"trained against teacher openclip:synthetic-clip-tiny:sha256:0123456789ab"
                                              r".*teacher at hand is " + world.teacher.id):
        model.encode_texts(["a chair"])
    with pytest.raises(CheckpointError, match="teacher at hand"):
        captionless3d.load(other, teacher=world.teacher)


def test_moved_cache_is_rerooted(tmp_path, world):
    import shutil

    from captionless3d.utils.config import reroot

    cfg = {"paths": {"cache_dir": "/old/cache"}, "a": ["/old/cache/worlds", "/old/cachex", 3], "b": {"c": "/old/cache"}}
    assert reroot(cfg, "/old/cache", "/new") == {"paths": {"cache_dir": "/new"}, "a": ["/new/worlds", "/old/cachex", 3],
                                                  "b": {"c": "/new"}}
    moved = tmp_path / "moved"
    shutil.copytree(world.root / "cache" / "teachers", moved / "teachers")
    model = captionless3d.load(world.ckpt, cache_dir=moved)
    assert model.teacher.id == world.teacher.id


def test_search_needs_an_index_from_the_same_teacher(tmp_path, model):
    from captionless3d.shape_index import ShapeIndex

    with pytest.raises(ConfigError, match="no index given"):
        Captionless3DModel(model.encoder, model.metadata).search(text="a chair")
    ShapeIndex.write(tmp_path / "foreign", np.eye(3, model.teacher_dim, dtype=np.float32), ["a.npy", "b.npy", "c.npy"],
                     teacher_id="openclip:ViT-B-32:laion2b_s34b_b79k", encoder_sha256="0" * 64)
    with pytest.raises(CacheError,
                       match=r"built with teacher openclip:ViT-B-32:laion2b_s34b_b79k.*queries with teacher "
                                         + model.teacher_id):
        model.search(text="a chair", index=tmp_path / "foreign")
    with pytest.raises(ConfigError, match="exactly one of"):
        model.search(text="a chair", image=np.zeros((4, 4, 3), np.uint8), index=tmp_path / "foreign")
