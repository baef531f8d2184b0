"""End to end on exact-format fixtures: train with data=shapenet_ulip2 and a randomly initialised OpenCLIP ViT-B-32,
then evaluate the checkpoint on ModelNet40, ScanObjectNN and Pix3D fixtures through the real entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.formats import write_modelnet40_dat, write_pix3d, write_scanobjectnn_h5, write_ulip_shapenet

pytestmark = pytest.mark.slow


def _run(module: str, args: list[str], root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "CAPTIONLESS3D_DATA": str(root / "data")}
    cmd = [sys.executable, "-m", module, *args, f"paths.cache_dir={root / 'cache'}",
           f"paths.output_dir={root / 'outputs'}"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)


def test_shapenet_ulip2_train_then_eval_on_benchmarks(tmp_path):
    data = tmp_path / "data"
    write_ulip_shapenet(data / "shapenet-55", layout="flat", n_points=512, angles=(0, 12))
    write_modelnet40_dat(data / "modelnet40_normal_resampled", n=6, n_points=512)
    write_scanobjectnn_h5(data / "ScanObjectNN" / "h5_files", "OBJ_ONLY", n_points=512)
    write_pix3d(data / "pix3d")
    train = _run(
        "captionless3d.train",
        [
            "data=shapenet_ulip2", "teacher=vitb32_random", "experiment=i2i", "trainer=fast_dev",
            "data.collection.view_angles=[0,12]", "data.collection.n_points=512", "data.loader.n_points=128",
            "data.loader.batch_size=4", "data.loader.num_workers=0", "eval=[]",
        ],
        tmp_path,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-4000:]
    (ckpt,) = (tmp_path / "outputs" / "train" / "runs" / "i2i").glob("*/checkpoints/best.ckpt")
    evaluation = _run(
        "captionless3d.eval",
        [
            f"ckpt={ckpt}", "eval=[modelnet40,scanobjectnn,pix3d]", "eval.modelnet40.runner.n_points=256",
            "eval.scanobjectnn.runner.n_points=256", "eval.pix3d.runner.n_points=256",
            "eval.pix3d.collection.n_points=512",
        ],
        tmp_path,
    )
    assert evaluation.returncode == 0, evaluation.stdout[-2000:] + evaluation.stderr[-4000:]
    (run_dir,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    modelnet = json.loads((run_dir / "results" / "modelnet40" / "results.json").read_text())
    pix3d = json.loads((run_dir / "results" / "pix3d" / "results.json").read_text())
    assert "zeroshot/top1" in json.dumps(modelnet)
    assert "retrieval/bg/paper/i2s_top1" in json.dumps(pix3d)
    assert (run_dir / "results" / "scanobjectnn" / "results.md").is_file()
