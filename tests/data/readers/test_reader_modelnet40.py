import logging

import numpy as np
import pytest
from fixtures.formats import MODELNET40_NAMES, write_modelnet40_dat, write_modelnet40_h5

from captionless3d.data.readers import read_modelnet40
from captionless3d.errors import ConfigError, DataError


def _unit(points):
    centred_ok = np.abs(points.mean(axis=1)).max() < 1e-4
    radius = np.linalg.norm(points, axis=-1).max(axis=1)
    return centred_ok and np.allclose(radius, 1.0, atol=1e-5)


def test_dat_layout(tmp_path):
    write_modelnet40_dat(tmp_path, n=5, n_points=512, labels=[0, 15, 23, 28, 39])
    col = read_modelnet40(tmp_path)
    assert col.name == "modelnet40-dat:test"
    assert col.points.shape == (5, 512, 3) and col.points.dtype == np.float32
    assert _unit(col.points)
    assert col.labels.dtype == np.int64 and col.labels.tolist() == [0, 15, 23, 28, 39]
    assert len(col.categories) == 40 and col.category_keys == list(MODELNET40_NAMES)
    for name in ("flower pot", "night stand", "range hood", "tv stand", "glass box"):
        assert name in col.categories
    assert col.categories[15] == "flower pot" and col.category_keys[15] == "flower_pot"
    assert col.indices("test").tolist() == list(range(5)) and len(col.indices("train")) == 0
    assert col.object_ids[1] == "flower_pot_0001"
    assert col.subtypes == [] and (col.subtype_ids == -1).all()
    assert col.views.shape == (5, 0, 224, 224, 3) and col.photos is None
    assert col.n_bad == 0


def test_dat_keeps_xyz_first_points_and_fingerprint(tmp_path):
    write_modelnet40_dat(tmp_path, n=2, n_points=256)
    full = read_modelnet40(tmp_path, format="dat")
    sub = read_modelnet40(tmp_path, n_points=100)
    assert sub.points.shape == (2, 100, 3)
    import pickle

    raw = pickle.loads((tmp_path / "modelnet40_test_8192pts_fps.dat").read_bytes())[0][0][:100, :3]
    expect = raw - raw.mean(0)
    expect /= np.linalg.norm(expect, axis=1).max()
    np.testing.assert_allclose(sub.points[0], expect, atol=1e-5)  # FPS order: first n points
    assert read_modelnet40(tmp_path).fingerprint == full.fingerprint != sub.fingerprint
    write_modelnet40_dat(tmp_path, n=2, n_points=256, seed=1)
    assert read_modelnet40(tmp_path).fingerprint != full.fingerprint
    with pytest.raises(DataError, match="has only 256 points, 300 requested"):
        read_modelnet40(tmp_path, n_points=300)


def test_dat_non_array_object(tmp_path):
    def mutate(points, labels):
        points[1] = "not an array"

    write_modelnet40_dat(tmp_path, n=3, n_points=64, mutate=mutate)
    with pytest.raises(DataError,
                       match=r"modelnet40_test_8192pts_fps\.dat item 1.*expected a numeric point array, got str"):
        read_modelnet40(tmp_path)


def test_dat_refuses_foreign_object(tmp_path):
    def mutate(points, labels):
        points[0] = logging.getLogger("x")

    write_modelnet40_dat(tmp_path, n=2, n_points=64, mutate=mutate)
    with pytest.raises(DataError, match=r"\.dat: refusing to unpickle global 'logging"):
        read_modelnet40(tmp_path)


def test_dat_nan_and_bad_label_skip_bad(tmp_path, caplog):
    def mutate(points, labels):
        points[0][3, 1] = np.nan
        labels[2] = np.array([40], np.int32)

    write_modelnet40_dat(tmp_path, n=4, n_points=64, mutate=mutate)
    with pytest.raises(DataError, match=r"fps\.dat item 0.*NaN/Inf"):
        read_modelnet40(tmp_path)
    with caplog.at_level(logging.WARNING):
        col = read_modelnet40(tmp_path, skip_bad=True)
    assert len(col) == 2 and col.n_bad == 2
    assert [f for f, _ in col.bad] == [f"{tmp_path / 'modelnet40_test_8192pts_fps.dat'}[0]",
                                       f"{tmp_path / 'modelnet40_test_8192pts_fps.dat'}[2]"]
    assert "label 40 outside [0, 40)" in col.bad[1][1]
    assert "skipped 2 bad objects" in caplog.text


def test_dat_structure_errors(tmp_path):
    write_modelnet40_dat(tmp_path, n=2, n_points=32)
    import pickle

    (tmp_path / "modelnet40_test_8192pts_fps.dat").write_bytes(pickle.dumps({"points": []}))
    with pytest.raises(DataError, match=r"expected a pickled \[list_of_points, list_of_labels\]"):
        read_modelnet40(tmp_path)
    (tmp_path / "modelnet40_shape_names.txt").unlink()
    with pytest.raises(DataError, match="modelnet40_shape_names.txt: ModelNet40 class-name list is missing"):
        read_modelnet40(tmp_path)
    with pytest.raises(ConfigError, match="split"):
        read_modelnet40(tmp_path, split="val")


def test_h5_layout(tmp_path):
    write_modelnet40_h5(tmp_path, n_per_file=(3, 2), n_points=128)
    col = read_modelnet40(tmp_path)
    assert col.name == "modelnet40-h5:test"
    assert col.points.shape == (5, 128, 3) and _unit(col.points)
    assert col.object_ids[:2] == ["ply_data_test0_0000", "ply_data_test0_0001"]
    assert col.object_ids[3] == "ply_data_test1_0000"
    assert col.categories[23] == "night stand"
    assert read_modelnet40(tmp_path, n_points=64).points.shape == (5, 64, 3)
