"""logger=wandb offline (WANDB_MODE=offline): a tiny-world run with TensorBoard and W&B side by side; W&B gets every
scalar tag and every image tag TensorBoard gets.

W&B keeps an offline run in a binary transaction log (``run-<id>.wandb``) that only its sync service reads; the
scalars are checked by their keys in that log (protobuf stores them as plain UTF-8), the images by the files W&B
writes under ``files/media/images/<tag>_<step>_<hash>.png``."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("wandb", reason="needs wandb (extra 'wandb')")
pytestmark = pytest.mark.slow


def test_offline_wandb_run_has_tensorboards_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline",
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache")}
    cmd = [sys.executable, "-m", "captionless3d.train", "data=synthetic_tiny", "teacher=synthetic_tiny",
           "trainer=fast_dev", "experiment=avg", "logger=[tensorboard,wandb]", f"paths.cache_dir={tmp_path / 'cache'}",
           f"paths.output_dir={tmp_path / 'outputs'}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")
    data = log.read_bytes()

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    scalars, images = events.Tags()["scalars"], events.Tags()["images"]
    assert "test/heldout/zeroshot/top1" in scalars and any(t.startswith("val/") for t in scalars)
    missing = [tag for tag in scalars if tag.encode() not in data]
    assert not missing, f"scalars in TensorBoard but not in the W&B run: {missing}"

    media = offline / "files" / "media" / "images"
    logged = {re.sub(r"_\d+_[0-9a-f]+\.png$", "", p.relative_to(media).as_posix()) for p in media.rglob("*.png")}
    assert set(images) == {"test/heldout/confusion_matrix", "test/heldout/retrieval_examples_nobg",
                           "test/heldout/retrieval_examples_bg"}
    assert logged == set(images)
    assert "wandb sync" in proc.stdout + proc.stderr  # W&B says how to upload the offline run later
