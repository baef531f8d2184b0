import json
import os

import numpy as np
import pytest
from fixtures.formats import write_openshape

from captionless3d.data.readers import read_openshape, read_openshape_modelnet40
from captionless3d.errors import DataError


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_train_split(tmp_path):
    info = write_openshape(tmp_path, n_shapenet=3, n_objaverse=2, n_points=600, dim=16)
    col = read_openshape(tmp_path, n_points=512)
    assert col.object_ids == [e["id"] for e in info["train"]]
    assert col.categories == ["object"] and col.points.shape == (5, 512, 3) and col.points.dtype == np.float32
    assert np.allclose(np.linalg.norm(col.points, axis=-1).max(1), 1, atol=1e-5)
    assert col.view_emb.shape == (5, 12, 16) and col.view_emb.dtype == np.float32
    assert col.splits.tolist().count("train") == 4
    swapped = read_openshape(tmp_path, n_points=512, swap_yz=True)
    np.testing.assert_allclose(swapped.points[..., 1], col.points[..., 2], atol=1e-6)
    only = read_openshape(tmp_path, n_points=None, datasets=["Objaverse"])
    assert len(only) == 2 and only.points.shape == (2, 600, 3)


def test_lvis_categories(tmp_path):
    write_openshape(tmp_path, n_shapenet=0, n_objaverse=4, n_points=300)
    col = read_openshape(tmp_path, split_file="meta_data/split/lvis.json", n_points=256)
    assert col.categories == ["armchair", "teapot"] and col.labels.tolist() == [0, 1, 0, 1]
    assert col.splits.tolist() == ["train", "train", "val", "val"]  # int(0.8 * 2) = 1 train per category (sorted ids)


def test_bad_files(tmp_path):
    info = write_openshape(tmp_path, n_shapenet=3, n_objaverse=0, n_points=300)
    f0, f1, f2 = info["files"]
    arr = np.empty((), dtype=object)
    arr[()] = {"xyz": Evil()}
    np.save(f0, arr, allow_pickle=True)
    with pytest.raises(DataError, match=r"03001627-0000\.npy: refusing to unpickle global"):
        read_openshape(tmp_path, n_points=256)
    data = f1.read_bytes()
    f1.write_bytes(data[: len(data) // 2])
    np.save(f2, {"rgb": np.zeros((3, 3))}, allow_pickle=True)
    col = read_openshape(tmp_path, n_points=256, skip_bad=True)
    assert len(col) == 0 and col.n_bad == 3
    assert "corrupt or truncated pickle" in col.bad[1][1] and "dict without 'xyz'" in col.bad[2][1]
    split = tmp_path / "meta_data/split/train_all.json"
    split.write_text(json.dumps([{"id": "nope", "dataset": "X", "group": "g", "data_path": "/abs/x.npy"}]))
    with pytest.raises(DataError, match="entry 0: shape file not found"):
        read_openshape(tmp_path)


def test_modelnet40_test_files(tmp_path):
    write_openshape(tmp_path, n_shapenet=0, n_objaverse=0, n_points=400)
    col = read_openshape_modelnet40(tmp_path)
    assert col.labels.tolist() == [0, 15, 39] and col.categories[15] == "flower pot"
    assert col.points.shape == (3, 400, 3) and (col.splits == "test").all()
    assert col.object_ids[1] == "flower_pot_0001"
