"""The real entry points (python -m captionless3d.train / .eval) in fast-dev mode on a tiny synthetic world."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.formats import ulip_checkpoint

from captionless3d.models import build_point_encoder

pytestmark = pytest.mark.slow

TINY = ["data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=fast_dev"]


def _run(module: str, args: list[str], root: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", module, *args, f"paths.cache_dir={root / 'cache'}",
           f"paths.output_dir={root / 'outputs'}"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run")
    proc = _run("captionless3d.train", [*TINY, "experiment=avg"], root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run_dir,) = (root / "outputs" / "train" / "runs" / "avg").iterdir()
    return root, run_dir


def test_train_writes_checkpoint_tensorboard_and_results(trained):
    root, run_dir = trained
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("results.md", "summary.json", "results/heldout/results.csv", "results/heldout/results.json",
                 "results/heldout/confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]["heldout"]
    for key in ("zeroshot/top1", "retrieval/nobg/paper/i2s_top1", "retrieval/bg/gallery/s2i_r5"):
        assert 0.0 <= metrics[key] <= 100.0, key
    assert "shuffled" in (run_dir / "results.md").read_text()
    oracle = summary["oracle"]["heldout"]
    assert 0.0 <= oracle["retrieval/nobg/gallery/i2s_r1"] <= 100.0 and summary["seed"] == 0
    if oracle["zeroshot/top1"] > 0:
        assert (metrics["efficiency/zeroshot_top1"]
                == pytest.approx(100 * metrics["zeroshot/top1"] / oracle["zeroshot/top1"]))


def test_second_run_reuses_caches_and_resume_from_last(trained):
    root, run_dir = trained
    proc = _run("captionless3d.train",
                [*TINY, "experiment=avg", f"hydra.run.dir={run_dir}", "ckpt_path=last", "trainer.max_epochs=2"], root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    log = proc.stdout + proc.stderr
    assert "reusing prior store" in log
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stage_seconds"]["teacher"] < 30


def test_multirun_over_experiments(trained):
    root, _ = trained
    proc = _run("captionless3d.train", ["-m", *TINY, "experiment=baseline,i2i,i2l2"], root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = sorted((root / "outputs" / "train" / "multiruns").glob("*/*/results/heldout/results.json"))
    assert {p.parents[2].name.split("_", 1)[1] for p in results} == {"baseline", "i2i", "i2l2"}


def test_eval_entrypoint_on_checkpoint(trained):
    root, run_dir = trained
    proc = _run("captionless3d.eval", [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}"], root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "I→S" in proc.stdout or "I->S" in proc.stdout or "Top-1" in proc.stdout


def test_eval_all_experiments_one_table(trained):
    """make eval: the newest checkpoint of every experiment + PointCLIP, one combined table per benchmark."""
    root, _ = trained
    if not list((root / "outputs" / "train" / "multiruns").glob("*/*_i2i/checkpoints/best.ckpt")):
        proc = _run("captionless3d.train", ["-m", *TINY, "experiment=baseline,i2i,i2l2"], root)
        assert proc.returncode == 0, proc.stderr[-5000:]
    # a released ULIP PointNeXt (xyz + height) projecting into the same teacher space, as a baseline row
    (ckpt,) = (root / "outputs" / "train" / "multiruns").glob("*/*_i2i/checkpoints/best.ckpt")
    dim = torch.load(ckpt, map_location="cpu", weights_only=True)["captionless3d"]["teacher_dim"]
    torch.manual_seed(0)
    released = build_point_encoder("pointnext_s", in_channels=4, embed_dim=dim)
    with torch.no_grad():
        released.head.head[-1][0].bias.zero_()
    torch.save(ulip_checkpoint(released), root / "ulip_pointnext.pt")
    args = ["ckpt=all", "baseline=[pointclip,ulip_pointnext]",
            f"baseline.ulip_pointnext.pretrained={root / 'ulip_pointnext.pt'}"]
    proc = _run("captionless3d.eval", args, root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    run_dir = max((root / "outputs" / "eval" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    table = json.loads((run_dir / "results" / "heldout" / "results.json").read_text())
    names = [row["name"] for row in table["rows"]]
    assert {"baseline", "i2i", "i2l2", "pointclip", "ulip_pointnext"} <= set(names) and len(names) == len(set(names))
    # rows share one training budget; the avg run resumed for 2 epochs (test above) is left out, and says so
    budgets = {row["notes"].split("; ", 1)[1] for row in table["rows"] if row["notes"].startswith("checkpoint")}
    assert len(budgets) == 1, budgets
    if "avg" not in names:
        assert "leaving out" in proc.stdout + proc.stderr
    assert all("zeroshot/top1" in row["metrics"] and "zeroshot_openai_imagenet/top1" in row["metrics"]
               for row in table["rows"])
    assert "validation" in table["protocol"]
    # the synthetic world has renders: a teacher-oracle reference row, and every model's distillation efficiency
    oracle = [row for row in table["rows"] if row["reference"]]
    assert [row["name"] for row in oracle] == ["teacher-oracle"]
    assert all("efficiency/zeroshot_top1" in row["metrics"] for row in table["rows"] if not row["reference"])
    for name in names:
        if name != "teacher-oracle":
            assert (run_dir / "models" / name / "results" / "heldout" / "results.json").is_file()
    assert "i2l2" in proc.stdout and "baseline" in proc.stdout


def test_eval_rejects_a_checkpoint_for_another_teacher_dimension(trained):
    root, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    checkpoint["captionless3d"]["teacher_dim"] = 768  # as if trained against a ViT-L/14 teacher
    other = root / "other_teacher.ckpt"
    torch.save(checkpoint, other)
    proc = _run("captionless3d.eval", [f"ckpt={other}"], root)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "768-d teacher" in proc.stderr and str(other) in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_experiment_is_a_clear_error(tmp_path):
    proc = _run("captionless3d.train", [*TINY, "experiment=nope"], tmp_path)
    assert proc.returncode != 0
    assert "experiment/nope" in proc.stderr and "Available options" in proc.stderr


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path):
    args = ["data=synthetic_tiny", "teacher=openclip_checkpoint", "teacher.factory.model_name=ViT-B-32",
            f"teacher.factory.checkpoint={tmp_path / 'missing.pt'}", "trainer=fast_dev"]
    proc = _run("captionless3d.train", args, tmp_path)
    assert proc.returncode == 2
    assert "missing.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_rejects_missing_and_corrupt_checkpoints(tmp_path):
    proc = _run("captionless3d.eval", [f"ckpt={tmp_path / 'nope.ckpt'}"], tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    proc = _run("captionless3d.eval", [f"ckpt={bad}"], tmp_path)
    assert proc.returncode == 2 and "not a readable checkpoint" in proc.stderr


def test_label_free_global_priors_train_end_to_end(trained):
    root, _ = trained
    proc = _run("captionless3d.train", [*TINY, "experiment=avg_global", "mining.k=8"], root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (summary,) = (root / "outputs" / "train" / "runs" / "avg_global").glob("*/summary.json")
    assert "zeroshot/top1" in json.loads(summary.read_text())["metrics"]["heldout"]


def test_bad_config_value_names_the_key(trained):
    root, _ = trained
    proc = _run("captionless3d.train", [*TINY, "experiment=avg_global", "mining.k=64"], root)
    assert proc.returncode == 2 and "mining.k" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_data_directory_names_the_path(tmp_path):
    args = ["data=shapenet_ulip2", "teacher=vitb32_random", "trainer=fast_dev",
            f"paths.data_dir={tmp_path / 'no_data'}"]
    proc = _run("captionless3d.train", args, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert str(tmp_path / "no_data") in proc.stderr and "Traceback" not in proc.stderr


def test_logger_none_trains_without_a_logger(trained):
    root, _ = trained
    proc = _run("captionless3d.train", [*TINY, "experiment=baseline", "logger=none"], root)
    assert proc.returncode == 0, proc.stderr[-5000:]
    (run_dir,) = (root / "outputs" / "train" / "runs" / "baseline").iterdir()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "summary.json").is_file()


def test_validation_scalars_are_logged_and_can_select_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=fast_dev", "trainer.max_epochs=2",
            "experiment=baseline", "callbacks.model_checkpoint.monitor=val/heldout/gallery/i2s_r1",
            "callbacks.model_checkpoint.mode=max", "eval.heldout.runner.protocols=[zeroshot,retrieval]"]
    proc = _run("captionless3d.train", args, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs" / "baseline").iterdir()
    (events,) = (run_dir / "tensorboard").rglob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    for split in ("val", "train_fit"):
        for key in ("zeroshot/top1", "gallery/i2s_r1"):
            assert f"{split}/heldout/{key}" in scalars, (split, key, scalars)
    assert "val/heldout/oracle/gallery/i2s_r1" in scalars
    history = json.loads((run_dir / "summary.json").read_text())["validation_history"]
    assert [h["epoch"] for h in history] == [0, 1] and "train_fit/heldout/gallery/i2s_r1" in history[-1]
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    (state,) = [v for k, v in best["callbacks"].items()
                if k.startswith("ModelCheckpoint") and "'monitor': 'val/heldout" in k]
    assert state["monitor"] == "val/heldout/gallery/i2s_r1" and state["best_model_score"] is not None
    protocol = json.loads((run_dir / "results" / "heldout" / "results.json").read_text())["protocol"]
    assert "(val/heldout/gallery/i2s_r1)" in protocol and "(val/loss)" not in protocol
