import numpy as np
import pytest
from fixtures.formats import SCANOBJECTNN_CLASSES, write_scanobjectnn_h5

from captionless3d.data.readers import read_scanobjectnn
from captionless3d.data.readers.scanobjectnn import CLASSES
from captionless3d.errors import ConfigError, DataError


def test_class_order():
    assert CLASSES == SCANOBJECTNN_CLASSES
    assert CLASSES[0] == "bag" and CLASSES[9] == "table" and CLASSES[10] == "bed" and CLASSES[14] == "toilet"


@pytest.mark.parametrize("variant", ["OBJ_ONLY", "OBJ_BG", "PB_T50_RS", "PB_T50_R"])
def test_variants(tmp_path, variant):
    write_scanobjectnn_h5(tmp_path, variant, n_train=4, n_test=3, n_points=256)
    col = read_scanobjectnn(tmp_path, variant=variant)
    assert col.points.shape == (7, 256, 3) and col.points.dtype == np.float32
    assert np.allclose(np.linalg.norm(col.points, axis=-1).max(1), 1, atol=1e-5)
    assert col.indices("train").tolist() == [0, 1, 2, 3] and col.indices("test").tolist() == [4, 5, 6]
    assert col.labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert col.categories == list(CLASSES)
    assert col.point_masks.shape == (7, 256)
    assert col.object_ids[4] == f"{variant}/test/00000"


def test_variant_folder_as_root_and_parts(tmp_path):
    write_scanobjectnn_h5(tmp_path, "PB_T50_RS", n_train=2, n_test=2, n_points=64, with_mask=False)
    col = read_scanobjectnn(tmp_path / "main_split", variant="PB_T50_RS", parts=["test"])
    assert len(col) == 2 and (col.splits == "test").all() and col.point_masks is None


def test_val_fraction_is_seeded(tmp_path):
    write_scanobjectnn_h5(tmp_path, n_train=10, n_test=2, n_points=64)
    a = read_scanobjectnn(tmp_path, val_fraction=0.2)
    b = read_scanobjectnn(tmp_path, val_fraction=0.2)
    assert len(a.indices("val")) == 2 and len(a.indices("train")) == 8
    assert a.indices("val").tolist() == b.indices("val").tolist()
    assert a.fingerprint != read_scanobjectnn(tmp_path).fingerprint


def test_errors_and_skip_bad(tmp_path):
    def mutate(part, data, label):
        if part == "test":
            data[1, 5] = np.nan
            label[2] = 99

    write_scanobjectnn_h5(tmp_path, n_train=2, n_test=3, n_points=64, mutate=mutate)
    with pytest.raises(DataError, match=r"test_objectdataset\.h5 item 1: 1 points have NaN/Inf"):
        read_scanobjectnn(tmp_path)
    col = read_scanobjectnn(tmp_path, skip_bad=True)
    assert len(col) == 3 and col.n_bad == 2 and "label 99 outside" in col.bad[1][1]
    with pytest.raises(DataError, match="has only 64 points, 100 requested"):
        read_scanobjectnn(tmp_path, n_points=100)
    with pytest.raises(DataError,
                       match=r"training_objectdataset_augmentedrot\.h5: ScanObjectNN PB_T50_R training file is "
                             r"missing"):
        read_scanobjectnn(tmp_path, variant="PB_T50_R")
    with pytest.raises(ConfigError, match="unknown ScanObjectNN variant"):
        read_scanobjectnn(tmp_path, variant="hardest")


def test_not_an_h5(tmp_path):
    (tmp_path / "main_split_nobg").mkdir()
    (tmp_path / "main_split_nobg" / "training_objectdataset.h5").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"training_objectdataset\.h5: unreadable h5 file"):
        read_scanobjectnn(tmp_path, parts=["training"])
