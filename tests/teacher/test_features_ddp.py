"""Lightning predict-loop extraction: 2 real DDP processes (gloo, CPU) give the single-process store byte for byte;
and the ``python -m captionless3d.features`` entry point."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from captionless3d.teacher import extract
from captionless3d.teacher.distributed import extract_features_distributed, rank_shards
from captionless3d.teacher.features import build_feature_store, feature_store_key
from captionless3d.teacher.store_format import SHARDED_ARRAYS, shard_file


def test_rank_shards_round_robin():
    todo = [0, 2, 3, 5, 6, 7, 9]
    assert rank_shards(todo, 0, 2) == [0, 3, 6, 9] and rank_shards(todo, 1, 2) == [2, 5, 7]
    assert sorted(rank_shards(todo, 0, 3) + rank_shards(todo, 1, 3) + rank_shards(todo, 2, 3)) == todo
    assert rank_shards([4], 1, 2) == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_process_ddp_equals_single_process(fake_collection, tiny_teacher, tmp_path):
    c = fake_collection
    ref = tmp_path / "ref"
    build_feature_store(c, tiny_teacher, ref, shard_size=2, batch_size=8, num_threads=1, progress=False)
    out = tmp_path / "ddp"
    # shard 1 was finished by an earlier, interrupted run: the DDP run must keep it
    plan = extract.make_plan(c, tiny_teacher, feature_store_key(c, tiny_teacher), shard_size=2, batch_size=8)
    extract.extract_shards(c, tiny_teacher, out, plan, [1], batch_size=8, progress=False)
    kept = (out / shard_file("view_emb", 1)).stat()
    # ddp_fork: the same DDP strategy (gloo process group, one process per rank) without re-importing torch
    store = extract_features_distributed(
        c, tiny_teacher, out, shard_size=2, batch_size=8, num_threads=1, progress=False,
        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp_fork"},
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["compute"]["world_size"] == 2
    assert store.stats["shards_encoded"] == 5 and store.stats["shards_reused"] == 1
    now = (out / shard_file("view_emb", 1)).stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    for name in SHARDED_ARRAYS:
        for k in range(6):
            assert ((out / shard_file(name, k)).read_bytes()
                    == (ref / shard_file(name, k)).read_bytes()), shard_file(name, k)
    for name in ("prompt_emb.npy", "landmark_emb.npy", "landmark_labels.npy"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert manifest["files"] == json.loads((ref / "manifest.json").read_text())["files"]
    assert not (out / "progress").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_features_entry_point_builds_the_store_training_reuses(tmp_path):
    from hydra import compose, initialize_config_dir

    from captionless3d.features import run_features
    from captionless3d.hydra_utils import CONFIG_DIR
    from captionless3d.pipeline import build_collection, build_features, build_teacher

    paths = [f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'out'}"]
    tiny = ["data=synthetic_tiny", "teacher=synthetic_tiny"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "captionless3d.features", *tiny, "shard_size=8", "num_workers=0", "num_threads=1",
            *paths]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "images/s" in proc.stdout
    (store_dir,) = (tmp_path / "cache" / "features").iterdir()
    manifest = json.loads((store_dir / "manifest.json").read_text())
    n = manifest["layout"]["num_objects"]
    assert manifest["layout"]["shard_size"] == 8 and manifest["layout"]["num_shards"] == -(-n // 8)
    assert manifest["key"]["teacher_id"].startswith("openclip:synthetic-clip-tiny")

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        train_cfg = compose("train", overrides=[*tiny, *paths])
        features_cfg = compose("features", overrides=[*tiny, *paths, "num_workers=0"])
    # the training pipeline computes the same directory and reuses the store without encoding anything
    collection = build_collection(train_cfg.data)
    teacher = build_teacher(train_cfg.teacher, collection)
    teacher.encode_images = None  # any encoding attempt would fail
    store = build_features(train_cfg, collection, teacher)
    assert store.directory == store_dir and np.asarray(store.view_emb).shape[0] == n
    # a second run of the command verifies the complete store and does nothing
    assert run_features(features_cfg) == {"out_dir": str(store_dir), "reused": True, "stats": store.stats}
