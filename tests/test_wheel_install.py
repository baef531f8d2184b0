"""Installable anywhere: the built wheel carries the configs, and its entry points run from any directory.

The wheel is built from a copy of the build inputs (the working tree is not touched) and installed with ``--no-deps``
into a fresh virtual environment, which reuses this environment's installed dependencies (torch & co.) through a
``.pth`` line, so no download and no 5 GB copy is needed. Everything then runs in a temporary directory outside the
repository: the training entry point on the tiny world, the evaluation entry point on its checkpoint, the
``captionless3d`` console script, and a user's own config directory with its own ``experiment/`` file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ["data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=fast_dev", "logger=none"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """``(python of the fresh venv, a work dir outside the repository, environment)`` with the wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "configs", source / "configs", ignore=ignore)
    shutil.copytree(REPO / "src" / "captionless3d", source / "src" / "captionless3d", ignore=ignore)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CAPTIONLESS3D_CACHE", "PROJECT_ROOT")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w",
          str(root / "dist")],
         source, env)
    (wheel,) = (root / "dist").glob("captionless3d-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], root, env)
    # the heavy dependencies come from this environment: its site-packages as a plain path (its own .pth files,
    # among them the editable install of the checkout, are not processed, so the wheel's package is the one imported)
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root,
                        env).stdout.strip())
    (purelib / "zz_reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = root / "work"
    work.mkdir()
    return python, work, env


def test_the_wheel_carries_the_configs_and_is_the_package_imported(installed):
    python, work, env = installed
    proc = _run([str(python), "-c", "import captionless3d, captionless3d.hydra_utils as h; "
                 "print(captionless3d.__file__); print(h.CONFIG_DIR)"], work, env)
    package_file, config_dir = proc.stdout.split()
    venv = python.parents[1]
    assert Path(package_file).is_relative_to(venv), package_file  # not the checkout's editable install
    assert Path(config_dir) == Path(package_file).parent / "configs"
    for name in ("train.yaml", "eval.yaml", "features.yaml", "experiment/avg.yaml", "mining/_base.yaml",
                 "reproduce/full.yaml", "data/synthetic_tiny.yaml"):
        assert (Path(config_dir) / name).is_file(), name


def test_train_eval_and_cli_run_from_any_directory(installed):
    python, work, env = installed
    paths = [f"paths.cache_dir={work / 'cache'}", f"paths.output_dir={work / 'outputs'}"]
    _run([str(python), "-m", "captionless3d.train", *TINY, *paths, f"hydra.run.dir={work / 'run'}"], work, env)
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["metrics"]["heldout"]["zeroshot/top1"] >= 0 and summary["chance"]["heldout"]["zeroshot/top1"] == 25.0
    ckpt = Path(summary["best_checkpoint"])
    assert ckpt.is_file() and ckpt.is_relative_to(work)

    proc = _run([str(python), "-m", "captionless3d.eval", f"ckpt={ckpt}", *paths, f"hydra.run.dir={work / 'eval'}"],
                work, env)
    assert (work / "eval" / "results" / "heldout" / "results.json").is_file()
    assert "full results:" in proc.stdout  # the compact console table points at the files

    np.save(work / "shape.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    cli = python.parent / "captionless3d"
    proc = _run([str(cli), "classify", str(work / "shape.npy"), "--ckpt", str(ckpt), "--labels", "chair", "table"],
                work, env)
    assert "chair" in proc.stdout and "table" in proc.stdout


def test_a_user_config_dir_adds_its_own_experiment(installed):
    python, work, env = installed
    mine = work / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /mining: i2i\n\n"
                                    "experiment_name: mine\nseed: 7\n")
    for extra in (["--config-dir", str(work / "my_configs")],
                  [f"hydra.searchpath=[file://{work / 'my_configs'}]"]):
        proc = _run([str(python), "-m", "captionless3d.train", *extra, "experiment=mine", "--cfg", "job", "--resolve"],
                    work, env)
        assert "experiment_name: mine" in proc.stdout and "seed: 7" in proc.stdout
        assert "- i2i" in proc.stdout  # the packaged mining config it overrides into
