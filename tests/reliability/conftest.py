"""Shared helpers of the reliability tests: running the real training entry point on the tiny synthetic world."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import configuration as _hypothesis_configuration

# hypothesis keeps an example database and a cache of source constants under ./.hypothesis; keep the work tree clean
_hypothesis_configuration.set_hypothesis_home_dir(Path(tempfile.mkdtemp(prefix="captionless3d-hypothesis-")))

TESTS_DIR = Path(__file__).resolve().parents[1]

# 32 train objects / batch 8 = 4 steps per epoch; 3 epochs = 12 steps; last.ckpt every 3 steps (3, 6, 9, 12) plus
# at every validation (4, 8, 12). One torch thread: the same float reductions in every process.
TRAIN_ARGS = [
    "data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=cpu", "experiment=avg", "num_threads=1",
    "trainer.max_epochs=3", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1", "callbacks.periodic_checkpoint.every_n_train_steps=3",
]


def train_env() -> dict[str, str]:
    path = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def train_cmd(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "captionless3d.train", *TRAIN_ARGS, f"paths.cache_dir={root / 'cache'}",
            f"paths.output_dir={root / 'outputs'}", f"hydra.run.dir={run_dir}", *extra]


def run_train(root: Path, run_dir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(root, run_dir, *extra), cwd=root, env=train_env(), capture_output=True, text=True,
                          timeout=timeout)


def start_train(root: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    log = open(root / f"{run_dir.name}.log", "w")
    return subprocess.Popen(train_cmd(root, run_dir, *extra), cwd=root, env=train_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True)


def pause_args(root: Path, step: int, *, release: bool) -> list[str]:
    """Hydra overrides adding the test-only PauseAt callback (tests/reliability/_probe.py)."""
    args = ["+callbacks.pause._target_=reliability._probe.PauseAt", f"+callbacks.pause.step={step}",
            f"+callbacks.pause.marker={root / 'paused'}"]
    if release:
        args.append(f"+callbacks.pause.release={root / 'release'}")
    return args


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited with {proc.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def state_of(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = state_of(a)["state_dict"], state_of(b)["state_dict"]
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{a} and {b} differ in {len(different)} tensors, e.g. {different[:3]}"


def metrics_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())["metrics"]


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory) -> Path:
    """A root whose cache holds the tiny world, teacher, features and priors (built in-process, ~5 s).

    Every training run of these tests then starts from warm caches. That matters: building the caches consumes the
    global RNG before the student is initialised, so a cold-cache run starts from different weights than a warm-cache
    run (a bug of train.py, reported in docs/reliability.md).
    """
    import lightning as L
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR
    from captionless3d.pipeline import prepare

    root = tmp_path_factory.mktemp("reliability")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*TRAIN_ARGS, f"paths.cache_dir={root / 'cache'}",
                                          f"paths.run_dir={root / 'prepare'}", f"paths.output_dir={root / 'outputs'}"])
    with torch.random.fork_rng(devices=[]):
        L.seed_everything(0, verbose=False)
        prepare(cfg)
    return root


@pytest.fixture(scope="session")
def reference_run(warm_cache) -> Path:
    """An uninterrupted run (12 steps) to compare the interrupted-and-resumed runs with."""
    run_dir = warm_cache / "reference"
    started = time.perf_counter()
    proc = run_train(warm_cache, run_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}")
    return run_dir


