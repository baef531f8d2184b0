"""The per-validation scalars: values against a brute-force computation, the fixed train subset, configuration."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_toy import ToyCollection, calibrate_batchnorm, tiny_encoder, toy_features

from captionless3d.errors import ConfigError
from captionless3d.evaluation.embedding import embed_points
from captionless3d.evaluation.monitor import ValidationMetrics, split_scalars


@pytest.fixture(scope="module")
def toy():
    col = ToyCollection({"train": 12, "val": 8, "test": 4}, photos_per_object=2)
    return col, toy_features(col), calibrate_batchnorm(tiny_encoder(), col.points, 64)


def test_split_scalars_match_brute_force(toy):
    col, feats, enc = toy
    index = col.indices("val")
    got = split_scalars(enc, col, feats, index, n_points=64, seed=3)
    shapes = F.normalize(embed_points(enc, col.points[index], n_points=64, seed=3).double(), dim=1)
    prompts = F.normalize(torch.from_numpy(feats.prompt_emb).double(), dim=1)
    assert (got["zeroshot/top1"]
            == pytest.approx(100 * np.mean((shapes @ prompts.T).argmax(1).numpy() == col.labels[index])))
    photos = F.normalize(torch.from_numpy(np.asarray(feats.photo_masked_emb[index])).double(), dim=-1)
    hits = [int((shapes @ photos[i, k]).argmax()) == i for i in range(len(index)) for k in range(photos.shape[1])]
    assert got["gallery/i2s_r1"] == pytest.approx(100 * np.mean(hits))


def test_train_fit_subset_is_fixed_seeded_and_from_train(toy):
    col, _, _ = toy
    a, b = ValidationMetrics(train_fit_objects=5, seed=1), ValidationMetrics(train_fit_objects=5, seed=1)
    first = a.train_fit_index(col)
    assert len(first) == 5 and set(first) <= set(col.indices("train"))
    np.testing.assert_array_equal(first, a.train_fit_index(col))
    np.testing.assert_array_equal(first, b.train_fit_index(col))
    assert not np.array_equal(first, ValidationMetrics(train_fit_objects=5, seed=2).train_fit_index(col))
    assert len(ValidationMetrics(train_fit_objects=999).train_fit_index(col)) == len(col.indices("train"))
    assert len(ValidationMetrics(train_fit_objects=0).train_fit_index(col)) == 0


def test_configuration_errors_name_the_key(toy):
    col, feats, _ = toy
    with pytest.raises(ConfigError, match="train_fit_objects"):
        ValidationMetrics(train_fit_objects=-1)
    bench = SimpleNamespace(collection=col, features=feats, runner={})
    with pytest.raises(ConfigError, match="benchmark"):
        ValidationMetrics(benchmark="modelnet40").attach_benchmarks({"heldout": bench})
    # a benchmark without a val split is skipped
    no_val = SimpleNamespace(collection=SimpleNamespace(indices=lambda split: np.zeros(0, np.int64)), features=feats,
                             runner={})
    callback = ValidationMetrics().attach_benchmarks({"modelnet40": no_val, "heldout": bench})
    assert callback._chosen()[0] == "heldout"
