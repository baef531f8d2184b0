"""Zero-shot metrics against a brute-force reference; template averaging; confusion PNG; bad inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from captionless3d.errors import DataError
from captionless3d.evaluation import class_embeddings, save_confusion_png, zero_shot_metrics


def brute_zero_shot(points, classes, labels):
    sim = (F.normalize(points.double(), dim=1) @ F.normalize(classes.double(), dim=1).T).tolist()
    n, c = len(sim), len(sim[0])
    k5 = min(5, c)
    top1 = top5 = 0
    cm = [[0] * c for _ in range(c)]
    for row, y in zip(sim, labels.tolist()):
        order = sorted(range(c), key=lambda j: -row[j])
        top1 += order[0] == y
        top5 += y in order[:k5]
        cm[y][order[0]] += 1
    per_class = [100.0 * cm[i][i] / sum(cm[i]) for i in range(c) if sum(cm[i])]
    return 100.0 * top1 / n, 100.0 * top5 / n, sum(per_class) / len(per_class), cm


def _toy(n=60, c=9, d=12, seed=0, noise=2.0):
    g = torch.Generator().manual_seed(seed)
    classes = torch.randn(c, d, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    points = classes[labels] + noise * torch.randn(n, d, generator=g)
    return points, classes, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_shot_matches_brute_force(seed):
    points, classes, labels = _toy(seed=seed)
    res = zero_shot_metrics(points * 5.0, classes * 0.1, labels)  # scale must not matter
    top1, top5, cmean, cm = brute_zero_shot(points, classes, labels)
    assert res["top1"] == pytest.approx(top1)
    assert res["top5"] == pytest.approx(top5)
    assert res["class_mean_top1"] == pytest.approx(cmean)
    assert res["confusion_matrix"].tolist() == cm
    assert res["confusion_matrix"].dtype == torch.int64
    assert res["num_samples"] == 60 and res["top5_k"] == 5
    assert 0 < res["top1"] < res["top5"] <= 100


def test_class_mean_ignores_classes_without_samples_and_matches_torchmetrics_macro():
    from torchmetrics.classification import MulticlassAccuracy

    points, classes, labels = _toy(n=80, c=6, seed=4)
    res = zero_shot_metrics(points, classes, labels)
    macro = MulticlassAccuracy(num_classes=6, average="macro")(points @ F.normalize(classes, dim=1).T, labels)
    assert (labels.bincount(minlength=6) > 0).all()
    assert res["class_mean_top1"] == pytest.approx(100 * float(macro), abs=1e-4)
    # drop every sample of class 0: class 0 no longer contributes to the class mean (NaN per-class value)
    keep = labels != 0
    res2 = zero_shot_metrics(points[keep], classes, labels[keep])
    per = res2["per_class_top1"]
    assert math.isnan(float(per[0]))
    assert res2["class_mean_top1"] == pytest.approx(float(per[1:].mean()))


def test_top5_clamps_to_number_of_classes():
    points, classes, labels = _toy(n=20, c=3)
    res = zero_shot_metrics(points, classes, labels)
    assert res["top5_k"] == 3 and res["top5"] == 100.0


def test_perfect_prediction():
    classes = torch.eye(7)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])
    res = zero_shot_metrics(classes[labels] + 0.01, classes, labels)
    assert res["top1"] == 100.0 and res["class_mean_top1"] == 100.0
    assert torch.equal(res["confusion_matrix"], torch.diag(torch.tensor([1, 1, 1, 1, 1, 1, 2])))


def test_class_embeddings_template_average():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4, 3, 8, generator=g) * torch.tensor([1.0, 10.0, 0.1])[None, :, None]
    got = class_embeddings(t)
    ref = torch.stack([F.normalize(F.normalize(t[c], dim=1).mean(0), dim=0) for c in range(4)])
    assert got.shape == (4, 8)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(got.norm(dim=1), torch.ones(4))
    # (C, D) = one template: just normalised
    assert torch.allclose(class_embeddings(t[:, 0]), F.normalize(t[:, 0], dim=1), atol=1e-6)


def test_bad_inputs():
    points, classes, labels = _toy()
    with pytest.raises(DataError, match="dimension mismatch"):
        zero_shot_metrics(points, classes[:, :5], labels)
    with pytest.raises(DataError, match="empty"):
        zero_shot_metrics(points[:0], classes, labels[:0])
    with pytest.raises(DataError, match="labels"):
        zero_shot_metrics(points, classes, labels[:-1])
    with pytest.raises(DataError, match=r"\[0, 9\)"):
        zero_shot_metrics(points, classes, torch.full_like(labels, 9))
    with pytest.raises(DataError, match="integer"):
        zero_shot_metrics(points, classes, labels.float())
    bad = points.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(DataError, match="point_emb: 1 row"):
        zero_shot_metrics(bad, classes, labels)
    with pytest.raises(DataError, match="class_emb"):
        zero_shot_metrics(points, classes[:0], labels)
    with pytest.raises(DataError, match="texts_emb"):
        class_embeddings(torch.randn(2, 3, 4, 5))


def test_confusion_png(tmp_path):
    names = ["airplane", "bathtub", "bed", "flower pot", "night stand"]
    cm = torch.tensor([[5, 1, 0, 0, 0], [0, 3, 0, 0, 2], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 9]])
    path = save_confusion_png(cm, names, tmp_path / "sub" / "cm.png", title="zero-shot")
    img = Image.open(path)
    img.load()
    assert img.format == "PNG" and img.width > 5 * 14 and img.height > 5 * 14
    # a perfectly classified row gives the darkest cell on the diagonal; the empty row stays white
    px = img.convert("RGB")
    assert len(px.getcolors(100000)) > 5
    assert not list(tmp_path.glob("sub/.*.tmp"))
    with pytest.raises(DataError, match="class_names"):
        save_confusion_png(cm, names[:4], tmp_path / "x.png")
    with pytest.raises(DataError, match="square"):
        save_confusion_png(cm[:, :3], names, tmp_path / "x.png")
