"""A real extraction process killed with SIGKILL mid-build resumes without rewriting finished shards, and ends
byte-identical to an uninterrupted build."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from captionless3d.teacher.features import build_feature_store
from captionless3d.teacher.store_format import SHARDED_ARRAYS, shard_file

HERE = Path(__file__).resolve().parent

# Builds the fixture store in a child process: FakeCollection (12 objects) in shards of 2 objects, one torch thread,
# and a teacher that sleeps 0.3 s per call (same embeddings, just slow enough to be killed midway).
DRIVER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from conftest import TINY_CONFIG, TINY_NAME, FakeCollection
from captionless3d.teacher.features import build_feature_store
from captionless3d.teacher.openclip import create_teacher

teacher = create_teacher(TINY_NAME, model_config=TINY_CONFIG, seed=0)
encode = teacher.encode_images
def slow(*args, **kwargs):
    time.sleep(0.3)
    return encode(*args, **kwargs)
teacher.encode_images = slow
print("encoding", flush=True)
build_feature_store(FakeCollection(), teacher, sys.argv[2], shard_size=2, batch_size=8, num_threads=1, progress=False)
print("finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_midway_then_resume_is_byte_identical(fake_collection, tiny_teacher, tmp_path):
    out = tmp_path / "fs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(HERE), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / "progress"
    deadline = time.monotonic() + 90
    try:
        while not (journal.is_dir() and any(journal.glob("shard-*.json"))):
            assert proc.poll() is None, f"driver exited early:\n{proc.stdout.read()}\n{proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no shard finished within 90 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists(), "the run finished before it was killed: nothing was tested"
    finished = sorted(int(p.stem.split("-")[1]) for p in journal.glob("shard-*.json"))
    assert finished and len(finished) < 6
    before = {(name, k): (out / shard_file(name, k)).stat() for name in SHARDED_ARRAYS for k in finished}

    store = build_feature_store(fake_collection, tiny_teacher, out, shard_size=2, batch_size=8, num_threads=1,
                                progress=False)
    assert store.stats["shards_reused"] == len(finished) and store.stats["shards_encoded"] == 6 - len(finished)
    for (name, k), st in before.items():  # finished shards were kept, not rewritten
        now = (out / shard_file(name, k)).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), shard_file(name, k)
    assert not list(out.rglob("*.tmp")) and not journal.exists()

    ref = tmp_path / "ref"
    build_feature_store(fake_collection, tiny_teacher, ref, shard_size=2, batch_size=8, num_threads=1, progress=False)
    for name in SHARDED_ARRAYS:
        for k in range(6):
            assert ((out / shard_file(name, k)).read_bytes()
                    == (ref / shard_file(name, k)).read_bytes()), shard_file(name, k)
    for name in ("prompt_emb.npy", "landmark_emb.npy", "landmark_labels.npy"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
