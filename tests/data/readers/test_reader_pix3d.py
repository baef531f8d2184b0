import json

import numpy as np
import pytest
from fixtures.formats import PIX3D_CATEGORIES, write_pix3d

from captionless3d.data.readers import LazyArray, read_pix3d
from captionless3d.errors import ConfigError, DataError


def test_layout(tmp_path):
    write_pix3d(tmp_path)
    col = read_pix3d(tmp_path, image_size=16, n_points=300)
    assert len(col) == 8 and (col.splits == "test").all()
    assert col.categories == list(PIX3D_CATEGORIES)
    assert col.labels.tolist() == [2, 2, 2, 2, 0, 0, 6, 6]
    assert col.points.shape == (8, 300, 3) and col.points.dtype == np.float32
    assert np.allclose(np.linalg.norm(col.points, axis=-1).max(1), 1, atol=1e-5)
    assert np.abs(col.points.mean(1)).max() < 1e-4
    assert col.photos.shape == (8, 1, 16, 16, 3) and col.photos.dtype == np.uint8
    assert col.masks.shape == (8, 1, 16, 16) and col.masks.dtype == bool
    assert col.masks.any() and not col.masks.all()
    assert col.views.shape == (8, 0, 16, 16, 3)
    assert col.object_ids[0] == "img/chair/0001.png" and col.object_ids[1] == "img/chair/0002.jpg"
    assert col.shape_ids[0] == col.shape_ids[1] == "model/chair/IKEA_A/model.obj"
    assert col.shape_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # one independent sample per entry (paper), reproducible
    assert not np.allclose(col.points[0], col.points[1])
    again = read_pix3d(tmp_path, image_size=16, n_points=300)
    np.testing.assert_array_equal(again.points, col.points)
    assert again.fingerprint == col.fingerprint != read_pix3d(tmp_path, image_size=16, n_points=300, seed=1).fingerprint


def test_filters_and_lazy(tmp_path):
    write_pix3d(tmp_path)
    clean = read_pix3d(tmp_path, image_size=16, n_points=64, clean_only=True, categories=["chair"])
    assert len(clean) == 2 and clean.labels.tolist() == [2, 2]
    eager = read_pix3d(tmp_path, image_size=16, n_points=64)
    lazy = read_pix3d(tmp_path, image_size=16, n_points=64, lazy=True)
    assert isinstance(lazy.photos, LazyArray) and lazy.photos.shape == eager.photos.shape
    np.testing.assert_array_equal(lazy.photos[2:5], eager.photos[2:5])
    np.testing.assert_array_equal(lazy.masks[np.array([7, 0])], eager.masks[[7, 0]])
    np.testing.assert_array_equal(np.asarray(lazy.photos), eager.photos)
    with pytest.raises(ConfigError, match="unknown Pix3D categories"):
        read_pix3d(tmp_path, categories=["lamp"])


def _edit(root, fn):
    entries = json.loads((root / "pix3d.json").read_text())
    fn(entries)
    (root / "pix3d.json").write_text(json.dumps(entries))


def test_missing_mask(tmp_path):
    write_pix3d(tmp_path)
    (tmp_path / "mask/bed/0001.png").unlink()
    with pytest.raises(DataError, match=r"entry 4 \(img/bed/0001\.png\): mask file .*mask/bed/0001\.png is missing"):
        read_pix3d(tmp_path, n_points=32, image_size=16)
    _edit(tmp_path, lambda e: e[0].pop("mask"))
    col = read_pix3d(tmp_path, n_points=32, image_size=16, skip_bad=True)
    assert len(col) == 6 and col.n_bad == 2
    assert col.bad[0][0] == "img/chair/0001.png" and "has no 'mask' field" in col.bad[0][1]


def test_png_that_is_not_an_image(tmp_path):
    write_pix3d(tmp_path)
    (tmp_path / "img/table/0001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"img/table/0001\.png: not a readable image"):
        read_pix3d(tmp_path, n_points=32, image_size=16)


def test_bad_mesh_and_mask_size(tmp_path):
    write_pix3d(tmp_path)
    (tmp_path / "model/bed/IKEA_MALM/model.obj").write_text("v 0 0 0\n")
    with pytest.raises(DataError, match=r"model/bed/IKEA_MALM/model\.obj: mesh has no faces"):
        read_pix3d(tmp_path, n_points=32, image_size=16)
    col = read_pix3d(tmp_path, n_points=32, image_size=16, skip_bad=True)
    assert col.n_bad == 2 and len(col) == 6
    from fixtures.formats import write_png

    write_png(tmp_path / "mask/chair/0001.png", (5, 5), "L")
    with pytest.raises(DataError, match=r"mask/chair/0001\.png: mask is 5x5 but .*img/chair/0001\.png is 24x16"):
        read_pix3d(tmp_path, n_points=32, image_size=16)
