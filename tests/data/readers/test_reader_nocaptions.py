import numpy as np
import pytest
import torch
from fixtures.formats import write_nocaptions, write_ulip_shapenet

from captionless3d.data.readers.nocaptions import (
    distance_matrices,
    export_nocaptions,
    load_nocaptions_priors,
    read_nocaptions,
    similarity_matrices,
)
from captionless3d.errors import DataError
from captionless3d.mining.store import PriorStore

ANGLES = (0, 12, 24)


@pytest.fixture()
def layout(tmp_path):
    return write_nocaptions(tmp_path, {"02691156": 5, "03001627": 3, "02992529": 2}, n_points=2100, dim=8,
                            angles=ANGLES)


def test_read_layout_and_split(layout):
    col = read_nocaptions(layout["pc_root"], emb_root=layout["emb_root"], view_angles=ANGLES, n_points=2048)
    assert col.category_keys == ["02691156", "03001627"]  # 02992529 dropped
    assert col.points.shape == (8, 2048, 3) and col.points.dtype == np.float32
    assert np.allclose(np.linalg.norm(col.points, axis=-1).max(1), 1, atol=1e-5)
    air = sorted(layout["models"]["02691156"])
    assert col.object_ids[:5] == [f"02691156-{m}" for m in air]
    assert col.splits.tolist() == ["train"] * 4 + ["val"] + ["train"] * 2 + ["val"]
    assert col.view_emb.shape == (8, 3, 8) and col.view_emb.dtype == np.float32
    raw = torch.load(layout["emb_root"] / "02691156" / air[0] / f"02691156-{air[0]}_r_012.pth", weights_only=True)
    np.testing.assert_allclose(col.view_emb[0, 1], raw.numpy().reshape(-1))
    assert col.views.shape[:2] == (8, 0)
    lazy = read_nocaptions(layout["pc_root"], n_points=2048, points_in_memory=False)
    np.testing.assert_array_equal(lazy.points[[6, 0]], col.points[[6, 0]])


def test_priors_import(layout):
    col = read_nocaptions(layout["pc_root"], n_points=2048)
    mats = load_nocaptions_priors(col, layout["labels_root"], "i2i")
    idx, l = mats[0]
    assert idx.tolist() == [0, 1, 2, 3] and l.shape == (4, 4)
    np.testing.assert_allclose(l, (layout["similarity"]["02691156"][:4, :4] + 1) / 2, rtol=1e-6)
    idx2, l2 = load_nocaptions_priors(col, layout["labels_text_root"], "i2l2", members=["train", "val"])[1]
    np.testing.assert_allclose(l2, 1 / (1 + layout["distance"]["03001627"]), rtol=1e-6)
    store = PriorStore.from_category_matrices(mats, len(col), kind="i2i")
    pairs = store.pairs(torch.tensor([0, 1, 5]), torch.tensor([0, 1, 5]))
    assert pairs[0, 0] == 1 and torch.isclose(pairs[0, 1], torch.tensor(float(l[0, 1])))
    assert pairs[0, 2] == store.delta


def test_priors_skip_bad_keeps_matrix_positions(layout):
    air = sorted(layout["models"]["02691156"])
    (layout["pc_root"] / "02691156" / air[1] / "20k_sample.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=rf"{air[1]}/20k_sample\.pth: unreadable \.pth"):
        read_nocaptions(layout["pc_root"], n_points=2048)
    col = read_nocaptions(layout["pc_root"], n_points=2048, skip_bad=True)
    assert col.n_bad == 1 and len(col) == 7
    assert col.splits[:4].tolist() == ["train", "train", "train", "val"]  # the split did not shift
    idx, l = load_nocaptions_priors(col, layout["labels_root"], "i2i")[0]
    sim = layout["similarity"]["02691156"]
    np.testing.assert_allclose(l, (sim[np.ix_([0, 2, 3], [0, 2, 3])] + 1) / 2, rtol=1e-6)


def test_bad_inputs(layout):
    air = sorted(layout["models"]["02691156"])
    pc = layout["pc_root"] / "02691156"
    torch.save(torch.rand(100, 3), pc / air[0] / "20k_sample.pth")
    with pytest.raises(DataError, match=rf"{air[0]}/20k_sample\.pth: has only 100 points, 2048 requested"):
        read_nocaptions(layout["pc_root"], n_points=2048)
    torch.save({"points": torch.rand(3000, 3)}, pc / air[0] / "20k_sample.pth")
    with pytest.raises(DataError, match=r"20k_sample\.pth: expected a tensor, found dict"):
        read_nocaptions(layout["pc_root"], n_points=2048)
    bad = torch.rand(3000, 3)
    bad[7, 0] = float("nan")
    torch.save(bad, pc / air[0] / "20k_sample.pth")
    with pytest.raises(DataError, match=r"20k_sample\.pth: 1 points have NaN/Inf"):
        read_nocaptions(layout["pc_root"], n_points=2048)
    torch.save(torch.rand(3000, 3), pc / air[0] / "20k_sample.pth")
    (layout["emb_root"] / "02691156" / air[2] / f"02691156-{air[2]}_r_024.pth").unlink()
    with pytest.raises(DataError, match=rf"02691156-{air[2]}_r_024\.pth: file is missing"):
        read_nocaptions(layout["pc_root"], emb_root=layout["emb_root"], view_angles=ANGLES, n_points=2048)
    np.save(layout["labels_root"] / "03001627_similarity_matrix.npy", np.eye(2, dtype=np.float32))
    col = read_nocaptions(layout["pc_root"], n_points=2048)
    with pytest.raises(DataError, match=r"03001627_similarity_matrix\.npy: expected a \(3, 3\) numeric matrix"):
        load_nocaptions_priors(col, layout["labels_root"], "i2i")


def test_export_round_trip(tmp_path):
    root, _ = write_ulip_shapenet(tmp_path / "ulip", {"02691156": 4, "03001627": 3}, n_points=300, angles=ANGLES,
                                  with_depth=False)
    from captionless3d.data.readers.ulip_shapenet import read_ulip_shapenet

    col = read_ulip_shapenet(root, n_points=256, image_size=8, view_angles=list(ANGLES), check_images=False)
    rng = np.random.default_rng(0)
    view_emb = rng.normal(size=(len(col), 3, 8)).astype(np.float32)
    lm = rng.normal(size=(6, 8)).astype(np.float32)
    lm_labels = np.array([0, 0, 0, 1, 1, 1])
    sim = similarity_matrices(col, view_emb)
    dist = distance_matrices(col, view_emb, lm, lm_labels)
    out = tmp_path / "out"
    export_nocaptions(col, out / "pc", view_emb=view_emb, emb_root=out / "emb", angles=ANGLES, similarity=sim,
                      labels_root=out / "labels", distance=dist, labels_text_root=out / "labels_text")
    back = read_nocaptions(out / "pc", emb_root=out / "emb", view_angles=ANGLES, n_points=256)
    assert back.object_ids == col.object_ids and back.splits.tolist() == col.splits.tolist()
    np.testing.assert_allclose(back.points, col.points, atol=1e-5)
    np.testing.assert_allclose(back.view_emb, view_emb)
    i2i = load_nocaptions_priors(back, out / "labels", "i2i")
    idx, l = i2i[0]
    mean = view_emb[idx] / np.linalg.norm(view_emb[idx], axis=-1, keepdims=True)
    mean = mean.mean(1)
    mean /= np.linalg.norm(mean, axis=-1, keepdims=True)
    np.testing.assert_allclose(l, (mean @ mean.T + 1) / 2, atol=1e-5)
    assert np.allclose(np.diag(load_nocaptions_priors(back, out / "labels_text", "i2l2")[1][1]), 1.0)
