import numpy as np
import pytest
from fixtures.formats import write_ulip_objaverse, write_ulip_shapenet

from captionless3d.data.readers import LazyArray
from captionless3d.data.readers.ulip_shapenet import paper_split, read_ulip_objaverse, read_ulip_shapenet
from captionless3d.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def shapenet(tmp_path_factory):
    return write_ulip_shapenet(tmp_path_factory.mktemp("ulip"), n_points=600)


def test_layout_labels_and_drop(shapenet):
    root, created = shapenet
    col = read_ulip_shapenet(root, n_points=512, image_size=8)
    assert col.category_keys == ["02691156", "03001627"]  # 02992529 dropped (paper)
    assert col.categories == ["airplane", "chair"]
    assert len(col) == 9 and col.labels.tolist() == [0] * 5 + [1] * 4
    assert col.object_ids[:5] == sorted(f"02691156-{m}" for m in created["02691156"])
    assert col.points.shape == (9, 512, 3) and col.points.dtype == np.float32
    assert np.allclose(np.linalg.norm(col.points, axis=-1).max(1), 1, atol=1e-5)
    assert isinstance(col.views, LazyArray) and col.views.shape == (9, 30, 8, 8, 3) and col.views.dtype == np.uint8
    assert len(col.view_angles) == 30 and col.view_angles[1][0] == 12.0 and col.view_angles[-1][0] == 348.0
    v = col.views[[0, 3]]
    assert v.shape == (2, 30, 8, 8, 3)
    assert (v[0, 0, 0, 0] == 255).all()  # transparent corner composited on white
    black = read_ulip_shapenet(root, n_points=512, image_size=8, background="black")
    assert (black.views[0][0, 0, 0] == 0).all()
    assert black.fingerprint != col.fingerprint
    keep = read_ulip_shapenet(root, n_points=512, image_size=8, drop_synsets=())
    assert keep.category_keys == ["02691156", "02992529", "03001627"] and keep.categories[1] == "cellular telephone"


def test_paper_split_on_sorted_ids(shapenet):
    root, created = shapenet
    col = read_ulip_shapenet(root, n_points=512, image_size=8)
    airplane = sorted(created["02691156"])  # n=5 -> int(0.8*5)=4 train
    chair = sorted(created["03001627"])  # n=4 -> int(3.2)=3 train
    split_of = dict(zip(col.object_ids, col.splits))
    assert [split_of[f"02691156-{m}"] for m in airplane] == ["train"] * 4 + ["val"]
    assert [split_of[f"03001627-{m}"] for m in chair] == ["train"] * 3 + ["val"]
    assert len(col.indices("train")) == 7 and len(col.indices("val")) == 2 and len(col.indices("test")) == 0
    assert paper_split({"a": [f"{i:02d}" for i in range(10)]}, 0.2, 0.1) == {
        **{f"{i:02d}": "train" for i in range(7)}, "07": "val", "08": "val", "09": "test"}
    with pytest.raises(ConfigError):
        paper_split({}, 0.6, 0.5)


def test_lazy_points_and_angle_subset(shapenet):
    root, _ = shapenet
    eager = read_ulip_shapenet(root, n_points=256, image_size=8, view_angles=[0, 120, 240])
    lazy = read_ulip_shapenet(root, n_points=256, image_size=8, view_angles=[0, 120, 240], points_in_memory=False,
                              check_images=False)
    assert eager.views.shape == (9, 3, 8, 8, 3) and isinstance(lazy.points, LazyArray)
    np.testing.assert_array_equal(lazy.points[np.array([4, 1])], eager.points[[4, 1]])
    np.testing.assert_array_equal(lazy.views[2], eager.views[2])
    with pytest.raises(ConfigError, match="view_angles"):
        read_ulip_shapenet(root, view_angles=[5])


def test_flat_triplets_with_captions_and_npz(tmp_path):
    root, created = write_ulip_shapenet(tmp_path, {"02691156": 3, "04401088": 2}, layout="flat", npz=True,
                                        n_points=300, angles=(0, 12, 24))
    assert (root / "captions").is_dir()
    (root / "captions" / "broken.json").write_text("{not json")  # captions are never read
    col = read_ulip_shapenet(root, n_points=300, image_size=8, view_angles=[0, 12, 24])
    assert col.categories == ["airplane", "telephone"] and col.views.shape == (5, 3, 8, 8, 3)
    assert col.views[4].dtype == np.uint8


def test_errors(tmp_path):
    root, created = write_ulip_shapenet(tmp_path, {"02691156": 3, "03001627": 3}, n_points=300, angles=(0, 12),
                                        with_depth=False)
    ids = {s: sorted(f"{s}-{m}" for m in v) for s, v in created.items()}
    a, b, c = ids["02691156"]
    kw = dict(n_points=256, image_size=8, view_angles=[0, 12])
    # truncated .npy
    data = (root / "shapenet_pc" / f"{a}.npy").read_bytes()
    (root / "shapenet_pc" / f"{a}.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"{a}\.npy: truncated \.npy"):
        read_ulip_shapenet(root, **kw)
    with pytest.raises(DataError, match=rf"{a}\.npy: truncated \.npy"):
        read_ulip_shapenet(root, points_in_memory=False, **kw)
    # NaN coordinates, too few points, missing view, PNG that is not an image
    np.save(root / "shapenet_pc" / f"{a}.npy", np.full((300, 3), np.nan, np.float32))
    with pytest.raises(DataError, match=rf"{a}\.npy: 300 points have NaN/Inf"):
        read_ulip_shapenet(root, **kw)
    with pytest.raises(DataError, match=r"03001627-\w+\.npy: has only 300 points, 400 requested"):
        read_ulip_shapenet(root, **{**kw, "n_points": 400}, synsets=["03001627"])
    (root / "rendered_images" / b / f"{b}_r_012.png").unlink()
    (root / "rendered_images" / c / f"{c}_r_000.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    col = read_ulip_shapenet(root, skip_bad=True, **kw)
    assert col.n_bad == 3 and len(col) == 3
    reasons = dict(col.bad)
    assert "NaN/Inf" in reasons[str(root / "shapenet_pc" / f"{a}.npy")]
    reason = reasons[str(root / "shapenet_pc" / f"{b}.npy")]
    assert f"{b}_r_012.png: view missing for {b} (1 of 2 views present)" in reason
    assert f"{c}_r_000.png: not a readable image" in reasons[str(root / "shapenet_pc" / f"{c}.npy")]
    # splits are computed before bad objects are dropped: the survivors keep their places
    assert (col.splits[col.labels == 1] == np.array(["train", "train", "val"])).all()
    # without the up-front check, the bad PNG fails when read
    lazy = read_ulip_shapenet(root, skip_bad=True, check_images=False, synsets=["02691156"], **kw)
    assert len(lazy) == 1 and lazy.object_ids == [c]
    with pytest.raises(DataError, match=rf"{c}_r_000\.png: not a readable image"):
        lazy.views[0]


def test_objaverse_triplets(tmp_path):
    root, uids = write_ulip_objaverse(tmp_path, n=3, n_points=300, n_views=12)
    col = read_ulip_objaverse(root, n_points=256, image_size=8)
    assert col.object_ids == sorted(uids) and col.categories == ["object"]
    assert col.views.shape == (3, 12, 8, 8, 3) and col.points.shape == (3, 256, 3)
    assert col.splits.tolist() == ["train", "train", "val"]
    (root / "rendered_images_split_100" / sorted(uids)[1] / "011.png").unlink()
    with pytest.raises(DataError, match=r"011\.png: view missing .* \(11 of 12 views present\)"):
        read_ulip_objaverse(root, n_points=256, image_size=8)
    (root / "objaverse_pc_parallel" / sorted(uids)[0] / f"{sorted(uids)[0]}_8192.npz").write_bytes(b"PK\x03\x04junk")
    col = read_ulip_objaverse(root, n_points=256, image_size=8, skip_bad=True)
    assert len(col) == 1 and "corrupt or truncated .npz" in col.bad[0][1]
