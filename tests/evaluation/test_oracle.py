"""The teacher-oracle row and distillation efficiency, against brute-force references."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_toy import ToyCollection, calibrate_batchnorm, tiny_encoder, toy_features

from captionless3d.errors import DataError
from captionless3d.evaluation.callbacks import run_benchmarks
from captionless3d.evaluation.oracle import (
    ORACLE_NAME,
    distillation_efficiency,
    evaluate_oracles,
    evaluate_teacher_oracle,
    oracle_shape_embeddings,
)
from captionless3d.evaluation.report import ResultsTable


def _with_views(collection: ToyCollection, features: SimpleNamespace, n_views: int = 3, noise: float = 1.0,
                seed: int = 1) -> SimpleNamespace:
    """Render-view embeddings: each object's masked-photo embedding plus per-view noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.from_numpy(np.asarray(features.photo_masked_emb))[:, 0]
    views = base[:, None] + noise * torch.randn(len(base), n_views, base.shape[1], generator=g)
    return SimpleNamespace(**vars(features), view_emb=views.numpy())


@pytest.fixture(scope="module")
def toy():
    col = ToyCollection({"train": 8, "val": 4, "test": 12}, photos_per_object=2)
    return col, _with_views(col, toy_features(col))


def test_oracle_embeddings_are_the_normalised_view_mean(toy):
    col, feats = toy
    index = col.indices("test")
    got = oracle_shape_embeddings(feats.view_emb, index)
    expected = [np.mean(np.asarray(feats.view_emb[i], dtype=np.float64), axis=0) for i in index]
    expected = np.stack([e / np.linalg.norm(e) for e in expected])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="V > 0"):
        oracle_shape_embeddings(np.zeros((4, 0, 8), np.float32), np.arange(2))
    bad = np.array(feats.view_emb, copy=True)
    bad[index[0], 1, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        oracle_shape_embeddings(bad, index)


def test_oracle_metrics_match_a_brute_force_gallery_and_zero_shot(toy):
    col, feats = toy
    metrics = evaluate_teacher_oracle(col, feats, split="test", n_points=64, linear_probe={"l2_grid": [1.0]})
    index = col.indices("test")
    shapes = F.normalize(torch.from_numpy(np.asarray(feats.view_emb[index])).double().mean(1), dim=1)
    for domain, array in (("nobg", feats.photo_masked_emb), ("bg", feats.photo_emb)):
        photos = F.normalize(torch.from_numpy(np.asarray(array[index])).double(), dim=-1)  # (M, K, D)
        hits = total = 0
        for i in range(len(index)):
            for k in range(photos.shape[1]):
                sims = shapes @ photos[i, k]
                hits += int(sims.argmax()) == i
                total += 1
        assert metrics[f"retrieval/{domain}/gallery/i2s_r1"] == pytest.approx(100.0 * hits / total)
    prompts = F.normalize(torch.from_numpy(np.asarray(feats.prompt_emb)).double(), dim=1)
    predicted = (shapes @ prompts.T).argmax(1).numpy()
    assert metrics["zeroshot/top1"] == pytest.approx(100.0 * np.mean(predicted == col.labels[index]))
    assert not any(k.startswith(("_", "linear_probe")) for k in metrics)  # only zero-shot and retrieval run


def test_oracle_is_none_without_renders_or_protocols(toy):
    col, feats = toy
    plain = SimpleNamespace(**{k: v for k, v in vars(feats).items() if k != "view_emb"})
    assert evaluate_teacher_oracle(col, plain) is None
    assert evaluate_teacher_oracle(col, SimpleNamespace(**{**vars(plain), "view_emb": np.zeros((24, 0, 16))})) is None
    assert evaluate_teacher_oracle(col, feats, protocols=["linear_probe"]) is None
    bench = SimpleNamespace(collection=col, features=plain, runner={"split": "test"})
    assert evaluate_oracles({"no_renders": bench}) == {}


def test_distillation_efficiency_is_student_over_oracle():
    student = {"zeroshot/top1": 30.0, "retrieval/nobg/gallery/i2s_r1": 2.0, "retrieval/bg/gallery/i2s_r1": 1.0}
    oracle = {"zeroshot/top1": 60.0, "retrieval/nobg/gallery/i2s_r1": 8.0, "retrieval/bg/gallery/i2s_r1": 0.0}
    assert distillation_efficiency(student, oracle) == {
        "efficiency/zeroshot_top1": 50.0, "efficiency/nobg/gallery_i2s_r1": 25.0}  # oracle 0: undefined, left out
    assert distillation_efficiency(student, None) == {}


def test_run_benchmarks_adds_the_oracle_row_and_efficiency(tmp_path, toy):
    col, feats = toy
    encoder = calibrate_batchnorm(tiny_encoder(), col.points, 64)
    bench = SimpleNamespace(collection=col, features=feats, runner=dict(
        split="test", n_points=64, batch_size=16, protocols=["zeroshot", "retrieval"], artefacts={"enabled": False}))
    oracles = evaluate_oracles({"toy": bench})
    results = run_benchmarks(encoder, {"toy": bench}, model_name="tiny", output_dir=tmp_path, oracles=oracles)
    student, oracle = results["toy"].metrics, oracles["toy"]
    ratio = 100.0 * student["zeroshot/top1"] / oracle["zeroshot/top1"]
    assert student["efficiency/zeroshot_top1"] == pytest.approx(ratio)
    table = ResultsTable.from_json((tmp_path / "results" / "toy" / "results.json").read_text())
    rows = {r.name: r for r in table.rows}
    assert rows[ORACLE_NAME].reference and not rows["tiny"].reference
    assert rows[ORACLE_NAME].metrics["zeroshot/top1"] == pytest.approx(oracle["zeroshot/top1"])
    assert "teacher-oracle" in table.protocol
    csv_text = (tmp_path / "results" / "toy" / "results.csv").read_text()
    assert csv_text.count(ORACLE_NAME) >= 1 and "efficiency/zeroshot_top1" in csv_text.splitlines()[0]
    assert "distillation efficiency" in (tmp_path / "results" / "toy" / "results.md").read_text()
    # without oracles nothing changes
    plain = run_benchmarks(encoder, {"toy": bench}, model_name="tiny", output_dir=tmp_path / "plain")
    assert not any(k.startswith("efficiency/") for k in plain["toy"].metrics)
    rows = json.loads((tmp_path / "plain" / "results" / "toy" / "results.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["tiny"]


def test_reference_rows_are_never_bold():
    table = ResultsTable(protocol="p")
    table.add("a", {"zeroshot/top1": 10.0})
    table.add("b", {"zeroshot/top1": 20.0})
    table.add(ORACLE_NAME, {"zeroshot/top1": 90.0}, reference=True)
    lines = {line.split("|")[1].strip(): line for line in table.to_markdown().splitlines() if line.startswith("| ")}
    assert "**20.0**" in lines["b"] and "**" not in lines[ORACLE_NAME] and "**" not in lines["a"]
