import math

import numpy as np
import pytest
import torch

from captionless3d.data.pointcloud import (
    check_points,
    normalise_unit_sphere,
    random_rotate,
    random_subset,
    rotation_matrices,
)
from captionless3d.errors import DataError
from captionless3d.training.datamodule import PointViewDataset


def test_normalise_unit_sphere():
    pts = torch.randn(4, 100, 3) * 5 + 3
    out = normalise_unit_sphere(pts)
    assert torch.allclose(out.mean(1), torch.zeros(4, 3), atol=1e-5)
    assert torch.allclose(out.norm(dim=-1).amax(1), torch.ones(4), atol=1e-5)


def test_random_subset_is_without_replacement_and_rejects_short_clouds():
    pts = torch.arange(4 * 50 * 3, dtype=torch.float32).view(4, 50, 3)
    sub = random_subset(pts, 20, torch.Generator().manual_seed(0))
    assert sub.shape == (4, 20, 3)
    for row in range(4):
        ids = set((sub[row, :, 0] // 3).long().tolist())
        assert len(ids) == 20  # distinct points
    with pytest.raises(DataError, match="need 60 points"):
        random_subset(pts, 60)


def test_rotation_matches_literal_zyx_composition():
    angles = torch.tensor([[0.3, -0.5, 0.7]])
    ax, ay, az = angles[0].tolist()
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    np.testing.assert_allclose(rotation_matrices(angles)[0].numpy(), rz @ ry @ rx, atol=1e-6)


def test_random_rotate_preserves_norms_and_respects_limit():
    pts = torch.randn(8, 64, 3)
    out = random_rotate(pts, 45.0, torch.Generator().manual_seed(1))
    assert torch.allclose(out.norm(dim=-1), pts.norm(dim=-1), atol=1e-5)
    assert torch.equal(random_rotate(pts, 0.0), pts)


def test_check_points_messages():
    with pytest.raises(DataError, match=r"expected a \(B, N, 3\)"):
        check_points(torch.zeros(2, 10, 4))
    bad = torch.zeros(3, 10, 3)
    bad[1, 2, 0] = float("nan")
    with pytest.raises(DataError, match=r"NaN/Inf coordinates in batch rows \[1\]"):
        check_points(bad)
    with pytest.raises(DataError, match="empty"):
        check_points(torch.zeros(0, 10, 3))


def test_dataset_batches_are_vectorised_and_consistent():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(10, 64, 3)).astype(np.float32)
    view_emb = rng.normal(size=(10, 4, 8)).astype(np.float16)
    labels = np.arange(10) % 3
    ds = PointViewDataset(points, view_emb, labels, np.array([7, 2, 5]), n_points=32, rotation_degrees=45,
                          random_view=True, seed=3)
    batch = ds.__getitems__([0, 1, 2])
    assert batch["points"].shape == (3, 32, 3)
    assert batch["image_emb"].shape == (3, 8)
    assert batch["index"].tolist() == [7, 2, 5]
    assert batch["label"].tolist() == [1, 2, 2]
    # the served embedding is one of the object's own views
    for row, obj in enumerate([7, 2, 5]):
        diffs = np.abs(view_emb[obj].astype(np.float32) - batch["image_emb"][row].numpy()).sum(1)
        assert diffs.min() == 0
    # fixed seed: deterministic
    again = ds.__getitems__([0, 1, 2])
    assert torch.equal(batch["points"], again["points"])
    with pytest.raises(DataError, match="only 64 points"):
        PointViewDataset(points, view_emb, labels, np.array([1]), n_points=128, rotation_degrees=0, random_view=False)


def test_dataset_mean_view_target_is_the_normalised_view_mean():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(6, 64, 3)).astype(np.float32)
    view_emb = rng.normal(size=(6, 4, 8)).astype(np.float16)
    ds = PointViewDataset(points, view_emb, np.zeros(6, np.int64), np.array([4, 1]), n_points=16, rotation_degrees=0,
                          random_view=True, seed=0, view_target="mean")
    got = ds.__getitems__([0, 1])["image_emb"].numpy()
    for row, obj in enumerate([4, 1]):
        mean = view_emb[obj].astype(np.float64).mean(0)
        np.testing.assert_allclose(got[row], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    from captionless3d.errors import ConfigError

    with pytest.raises(ConfigError, match="view_target"):
        PointViewDataset(points, view_emb, np.zeros(6, np.int64), np.array([1]), n_points=16, rotation_degrees=0,
                         random_view=True, view_target="median")
