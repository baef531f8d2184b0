"""The API on a checkpoint written by the real training entry point (fast-dev run on the tiny synthetic world)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from api_world import machine_paths_in

import captionless3d
from captionless3d.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("api_trained")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "captionless3d.cli", "train", "data=synthetic_tiny", "teacher=synthetic_tiny",
           "trainer=fast_dev", "experiment=avg", f"paths.cache_dir={root / 'cache'}",
           f"paths.output_dir={root / 'outputs'}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (ckpt,) = (root / "outputs" / "train" / "runs" / "avg").glob("*/checkpoints/best.ckpt")
    return root, ckpt


def test_real_checkpoint_loads_classifies_indexes_and_exports(trained, tmp_path, capsys):
    root, ckpt = trained
    model = captionless3d.load(ckpt)
    assert model.experiment == "avg" and model.n_points == 128
    world_dir = next((root / "cache" / "worlds").iterdir())
    points = np.load(world_dir / "points.npy", mmap_mode="r")[:6]
    emb = model.encode_points(points)
    assert emb.shape == (6, model.teacher_dim)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    labels = ["chair", "table", "airplane", "mug"]
    ranked = model.classify(points[:2], labels=labels)
    assert sorted(label for label, _ in ranked[0]) == sorted(labels)
    assert model.teacher.id == model.teacher_id  # rebuilt from the run's cache and matched

    shapes = tmp_path / "shapes"
    shapes.mkdir()
    for i in range(6):
        np.save(shapes / f"s{i}.npy", np.asarray(points[i]))
    assert main(["index", str(shapes), "--ckpt", str(ckpt), "--out", str(tmp_path / "idx"), "--quiet"]) == 0
    assert main(["search", "--points", str(shapes / "s3.npy"), "--index", str(tmp_path / "idx"), "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "indexed 6 shapes" in out
    rows = [line.split() for line in out.strip().splitlines()[-2:]]
    scores = {path: float(score) for _, score, path in rows}
    # the query itself is among the top 2 at the top score (a fast-dev student may tie other shapes with it)
    assert "s3.npy" in scores and scores["s3.npy"] == pytest.approx(max(scores.values()), abs=1e-4)
    assert main(["export", "--ckpt", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    card = (tmp_path / "onnx" / "model_card.md").read_text()
    assert "zeroshot/top1" in card  # the run's summary.json results made it into the card
    assert machine_paths_in(tmp_path / "onnx", root) == []  # a real run's paths (Hydra run dir, results.md) included
