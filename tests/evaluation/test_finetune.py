"""Fine-tune protocol: a tiny PointNeXt learns the toy classes in 2 epochs; the epoch is chosen on val; test is read
only after the selection; the caller's encoder is untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from eval_toy import ToyCollection, calibrate_batchnorm, tiny_encoder, toy_features

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation.finetune import finetune_encoder
from captionless3d.evaluation.runner import evaluate_encoder

FAST = dict(epochs=2, batch_size=8, n_points=64, lr=5e-3, eval_batch_size=32)


class RecordingPoints:
    """``points`` array-like that logs which object rows are read, in order."""

    def __init__(self, points: np.ndarray) -> None:
        self.points, self.reads = points, []
        self.shape, self.dtype = points.shape, points.dtype

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, key):
        self.reads.append(np.atleast_1d(np.arange(len(self.points))[key]).tolist())
        return self.points[key]


@pytest.fixture(scope="module")
def toy():
    col = ToyCollection({"train": 32, "val": 12, "test": 12})
    return col, calibrate_batchnorm(tiny_encoder(), col.points[col.indices("train")], 64)


def test_finetune_learns_and_selects_on_val(toy):
    col, enc = toy
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    res = finetune_encoder(enc, col, features="embedding", **FAST)
    assert res["top1"] >= 50.0  # chance 25 %
    sel = res["selection"]
    assert len(sel["val_top1"]) == 2 and sel["epochs"] == 2
    best = max(range(2), key=lambda e: (sel["val_top1"][e], sel["val_class_mean_top1"][e], -e))
    assert sel["epoch"] == best + 1
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # the caller's encoder is unchanged


def test_test_split_never_influences_selection(toy):
    _, enc = toy
    col = ToyCollection({"train": 16, "val": 8, "test": 8})
    recorded = ToyCollection({"train": 16, "val": 8, "test": 8})
    recorded.points = RecordingPoints(col.points)
    res = finetune_encoder(enc, recorded, features="backbone", **FAST)
    test = set(col.indices("test").tolist())
    touched = [bool(test & set(rows)) for rows in recorded.points.reads]
    first_test_read = touched.index(True)
    assert not any(touched[:first_test_read]) and all(touched[first_test_read:])  # test read last, once selected
    # other test labels (and other test clouds): same selection, same validation curve
    changed = ToyCollection({"train": 16, "val": 8, "test": 8})
    test_idx = changed.indices("test")
    changed.labels[test_idx] = (changed.labels[test_idx] + 1) % 4
    changed.points[test_idx] = changed.points[test_idx[::-1]]
    other = finetune_encoder(enc, changed, features="backbone", **FAST)
    assert other["selection"] == res["selection"]


def test_finetune_through_evaluate_encoder_and_errors(toy):
    col, enc = toy
    result = evaluate_encoder(enc, col, toy_features(col), n_points=64, protocols=("finetune",),
                              finetune={"epochs": 1, "batch_size": 16, "lr": 5e-3, "features": "hidden"})
    assert set(result.metrics) == {"finetune/top1", "finetune/class_mean_top1"}
    assert result.selection["finetune"]["epoch"] == 1
    with pytest.raises(ConfigError, match="finetune.features"):
        finetune_encoder(torch.nn.Linear(3, 4), col, features="hidden", **FAST)
    with pytest.raises(ConfigError, match="finetune.epochs"):
        finetune_encoder(enc, col, **{**FAST, "epochs": 0})
    with pytest.raises(DataError, match="split 'val' is empty"):
        finetune_encoder(enc, ToyCollection({"train": 8, "test": 4}), **FAST)
