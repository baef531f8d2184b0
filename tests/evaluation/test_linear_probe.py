"""Linear probe: classification metrics vs brute force, the L-BFGS fit, selection on val only, the encoder path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_toy import ToyCollection, calibrate_batchnorm, tiny_encoder, toy_features

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation import classification_keys, classification_metrics
from captionless3d.evaluation.linear_probe import fit_logistic_regression, linear_probe, linear_probe_encoder
from captionless3d.evaluation.runner import evaluate_encoder


def brute_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    pred = [max(range(logits.shape[1]), key=lambda j: float(row[j])) for row in logits]
    y = labels.tolist()
    top1 = 100.0 * sum(p == t for p, t in zip(pred, y)) / len(y)
    recalls = [100.0 * sum(p == c for p, t in zip(pred, y) if t == c) / y.count(c) for c in sorted(set(y))]
    return top1, sum(recalls) / len(recalls)


def blobs(n: int, c: int, d: int, *, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(c, d, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % c
    return centres[y] + torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("seed", [0, 1])
def test_classification_metrics_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(50, 6, generator=g)
    labels = torch.randint(0, 5, (50,), generator=g)  # class 5 never occurs: not in the class mean
    res = classification_metrics(logits, labels)
    top1, cmean = brute_metrics(logits, labels)
    assert res["top1"] == pytest.approx(top1) and res["class_mean_top1"] == pytest.approx(cmean)
    assert torch.isnan(res["per_class_top1"][5]) and res["confusion_matrix"].sum() == 50
    assert set(classification_keys(res, "linear_probe")) == {"linear_probe/top1", "linear_probe/class_mean_top1"}
    with pytest.raises(DataError, match="labels"):
        classification_metrics(logits, torch.full((50,), 6))


def test_fit_reaches_the_regularised_optimum():
    x, y = blobs(120, 3, 5, spread=1.0, seed=0)
    probe = fit_logistic_regression(x, y, 3, l2=1e-2)
    w = torch.cat([probe.weight, probe.bias[None]]).requires_grad_(True)
    z = torch.cat([(x.double() - probe.mean) / probe.std, torch.ones(len(x), 1, dtype=torch.float64)], 1)
    loss = F.cross_entropy(z @ w, y) + 1e-2 * w[:-1].pow(2).sum()
    (grad,) = torch.autograd.grad(loss, w)
    assert grad.abs().max() < 1e-6  # stationary point of a strictly convex objective = the optimum
    assert probe.loss == pytest.approx(float(loss.detach()))


def test_separable_blobs_reach_100_percent_and_run_is_deterministic():
    args = (*blobs(160, 4, 16, spread=4.0, seed=0), *blobs(40, 4, 16, spread=4.0, seed=1),
            *blobs(80, 4, 16, spread=4.0, seed=2))
    res = linear_probe(*args, num_classes=4, l2_grid=(1e-4, 1e-2))
    assert res["top1"] == 100.0 and res["class_mean_top1"] == 100.0
    again = linear_probe(*args, num_classes=4, l2_grid=(1e-4, 1e-2))
    assert again["top1"] == res["top1"] and again["selection"] == res["selection"]


def test_random_labels_give_chance_accuracy():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 16, generator=g) for n in (400, 200, 800)]
    ys = [torch.randint(0, 4, (n,), generator=g) for n in (400, 200, 800)]
    res = linear_probe(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], num_classes=4, l2_grid=(1e-3, 1e-1))
    assert 17.0 < res["top1"] < 33.0  # chance 25 %, std of the estimate ~1.5 %


def test_l2_weight_is_chosen_on_val_never_on_test():
    """Val rewards a fitted classifier; the test labels reward a degenerate one (huge L2: predict the prior). Selection
    must follow val, and test labels must not change it."""
    xtr, ytr = blobs(90, 2, 4, spread=3.0, seed=0)
    keep = (ytr == 0) | (torch.arange(90) < 20)  # train prior: mostly class 0
    xtr, ytr = xtr[keep], ytr[keep]
    xva, yva = blobs(40, 2, 4, spread=3.0, seed=1)
    xte, _ = blobs(40, 2, 4, spread=3.0, seed=2)
    yte_adversarial = torch.zeros(40, dtype=torch.long)  # only the majority-class predictor gets these right
    grid = (1e-4, 1e4)
    res = linear_probe(xtr, ytr, xva, yva, xte, yte_adversarial, num_classes=2, l2_grid=grid)
    sel = res["selection"]
    assert sel["val_top1"][1e-4] >= 90.0 and sel["val_top1"][1e4] == pytest.approx(50.0)
    assert sel["l2"] == 1e-4
    assert res["top1"] < 70.0  # it predicts both classes on test ...
    degenerate = linear_probe(xtr, ytr, xva, yva, xte, yte_adversarial, num_classes=2, l2_grid=(1e4,))
    assert degenerate["top1"] == 100.0  # ... while the test labels would have preferred l2=1e4
    for yte in (torch.ones(40, dtype=torch.long),
                torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(5))):
        assert linear_probe(xtr, ytr, xva, yva, xte, yte, num_classes=2, l2_grid=grid)["selection"] == sel


def test_bad_inputs_name_the_problem():
    x, y = blobs(20, 2, 3, spread=1.0, seed=0)
    with pytest.raises(ConfigError, match="l2_grid"):
        linear_probe(x, y, x, y, x, y, num_classes=2, l2_grid=[])
    with pytest.raises(DataError, match="val 2"):
        linear_probe(x, y, x[:, :2], y, x, y, num_classes=2)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="test embeddings"):
        linear_probe(x, y, x, y, bad, y, num_classes=2)


def test_probe_on_a_frozen_encoder_and_through_evaluate_encoder():
    col = ToyCollection({"train": 64, "val": 24, "test": 24})
    enc = calibrate_batchnorm(tiny_encoder(), col.points[col.indices("train")], 96)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    result = evaluate_encoder(enc, col, toy_features(col), n_points=96, protocols=("zeroshot", "linear_probe"),
                              linear_probe={"l2_grid": [1e-3, 1e-1]})
    metrics = result.metrics
    assert {"linear_probe/top1", "linear_probe/class_mean_top1"} <= set(metrics)
    # chance 25 % (std ~9 % on 24 objects); even random-init frozen features separate the geometric classes
    assert metrics["linear_probe/top1"] > 45.0
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # frozen
    assert result.selection["linear_probe"]["l2"] in (1e-3, 1e-1)
    assert result.chance["linear_probe/top1"] == 25.0
    with pytest.raises(ConfigError, match="runner.linear_probe"):
        evaluate_encoder(enc, col, toy_features(col), protocols=("linear_probe",), linear_probe={"C": 1})
    no_val = ToyCollection({"train": 8, "test": 4})
    with pytest.raises(DataError, match="split 'val' is empty"):
        linear_probe_encoder(enc, no_val, n_points=64)


def test_evaluation_shows_progress_only_when_asked(capsys):
    col = ToyCollection({"train": 64, "val": 24, "test": 24})
    enc = calibrate_batchnorm(tiny_encoder(), col.points[col.indices("train")], 96)
    kwargs = dict(n_points=96, protocols=("zeroshot", "linear_probe"), linear_probe={"l2_grid": [1e-3, 1e-1]})
    quiet = evaluate_encoder(enc, col, toy_features(col), **kwargs)
    assert capsys.readouterr().err == ""
    shown = evaluate_encoder(enc, col, toy_features(col), progress=True, **kwargs)
    err = capsys.readouterr().err
    for bar in ("embed test shapes", "embed train shapes (linear probe)", "embed val shapes (linear probe)",
                "linear probe l2 path"):
        assert bar in err
    assert shown.metrics == quiet.metrics  # a bar changes nothing else
