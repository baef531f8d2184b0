"""Two real processes build the same cache at the same time (issue #10): it is built exactly once (the file lock in
captionless3d.data.synthetic.world) and both see identical content."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

# the synthetic_tiny world (configs/data/synthetic_tiny.yaml): a build takes a few seconds, so the calls overlap
WORKER = r"""
import hashlib, json, sys, time
from pathlib import Path
import numpy as np
root, go = Path(sys.argv[1]), Path(sys.argv[2])
from captionless3d.data.synthetic import world as w
while not go.exists():
    time.sleep(0.01)
start = time.time()
world = w.ensure_world(root, categories=["chair", "table", "airplane", "mug"], n_teacher=4, n_train=8, n_val=2,
                       n_test=3, n_points=256, n_views=2, image_size=32, photos_per_object=2, progress=False)
end = time.time()
digest = hashlib.sha256()
for name in ("points", "views", "photos", "masks", "labels", "splits"):
    digest.update(np.ascontiguousarray(getattr(world, name)).tobytes())
manifest = world.path / "manifest.json"
print(json.dumps({"builds": w.BUILD_COUNT, "start": start, "end": end, "fingerprint": world.fingerprint,
                  "content": digest.hexdigest(), "manifest_mtime_ns": manifest.stat().st_mtime_ns,
                  "path": str(world.path)}))
"""


def test_concurrent_ensure_world_builds_once_and_both_see_the_same_world(tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "worlds"), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(0.5)
    go.write_text("go")  # both imported and waiting: start together
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    a, b = results
    assert a["builds"] + b["builds"] == 1, results  # exactly one process built it
    first, second = sorted(results, key=lambda r: r["end"])
    assert second["start"] < first["end"], "the two calls did not overlap; the test proved nothing"
    assert a["path"] == b["path"] and a["fingerprint"] == b["fingerprint"] and a["content"] == b["content"]
    assert a["manifest_mtime_ns"] == b["manifest_mtime_ns"]  # the manifest was written once, not rewritten
    (world_dir,) = [p for p in (tmp_path / "worlds").iterdir() if p.is_dir()]
    assert not list(world_dir.glob(".*.tmp"))
