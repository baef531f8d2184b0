"""Sweeps through hydra-submitit-launcher: a 2-job multirun of the tiny world through submitit's local executor, end
to end; the sbatch script ``hydra/launcher=slurm`` produces; ``trainer=slurm_ddp`` under SLURM's variables."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher (extra 'slurm')")

TINY = ["data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=fast_dev"]


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.mark.slow
def test_two_job_multirun_through_the_local_submitit_launcher(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "captionless3d.train", "-m", "hydra/launcher=local", *TINY, "experiment=baseline,avg",
           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'outputs'}",
           f"hydra.sweep.dir={sweep}"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with capsys.disabled():
        print(f"\nlocal submitit multirun, 2 jobs of the tiny world (cold caches): {seconds:.0f} s")
    assert "Submitit 'local' sweep output dir" in proc.stdout + proc.stderr
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in runs] == ["0_baseline", "1_avg"]
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["experiment"] == run.name.split("_", 1)[1] and summary["run_dir"] == str(run)
        assert (run / "checkpoints" / "best.ckpt").is_file()
        assert 0.0 <= summary["metrics"]["heldout"]["zeroshot/top1"] <= 100.0
    # each run went through a submitit job: its own folder with the job's log and result pickle
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # "%j" holds the array's pickles
    assert len(jobs) == 2
    for job in jobs:
        assert list(job.glob("*_result.pkl")) and list(job.glob("*_log.out"))
    assert {json.loads((r / "summary.json").read_text())["seed"] for r in runs} == {0}


def _fake_sbatch(bin_dir: Path, record: Path) -> None:
    """An ``sbatch`` that keeps the submitted script and answers like SLURM (nothing is run), and an ``srun`` that
    submitit only looks for."""
    bin_dir.mkdir()
    tools = {"sbatch": f"cp \"$1\" {record}\necho 'Submitted batch job 4242'", "srun": "exit 1"}
    for name, body in tools.items():
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_slurm_launcher_asks_for_gpus_tasks_and_the_requeue_signal(tmp_path, monkeypatch):
    """What hydra/launcher=slurm submits: the parameters go to submitit exactly as the launcher passes them
    (hydra_submitit_launcher's BaseSubmititLauncher.launch), submitted to a fake sbatch that records the script."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    cfg = _compose(["hydra/launcher=slurm", "trainer=slurm_ddp", "hydra.launcher.partition=gpu",
                    "hydra.launcher.nodes=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    assert params["tasks_per_node"] == params["gpus_per_node"] == 4
    record = tmp_path / "submitted.sh"
    _fake_sbatch(tmp_path / "bin", record)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "submitit"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    job = executor.submit(print, "hello")
    assert job.job_id == "4242"
    script = record.read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --ntasks-per-node=4", "#SBATCH --cpus-per-task=8", "#SBATCH --time=720",
                 "#SBATCH --signal=USR1@120"):
        assert line in script.splitlines(), (line, script)
    assert "USR2" not in script  # submitit's own signal would bypass the trainer's checkpoint + requeue


SLURM_ENV = {"SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train",
             "SLURM_NODELIST": "node[01-02]"}


def test_slurm_ddp_trainer_takes_ranks_from_slurm_and_leaves_sigusr1_to_lightning(monkeypatch, tmp_path):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from captionless3d.hydra_utils import instantiate
    from captionless3d.training.signals import PreemptionCheckpoint

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    cfg = _compose(["trainer=slurm_ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
                    "trainer.sync_batchnorm=false"])
    assert cfg.trainer.num_nodes == 2  # from SLURM_NNODES
    callback = PreemptionCheckpoint(checkpoint_path=str(tmp_path / "last.ckpt"))
    trainer = instantiate(cfg.trainer, key="trainer", callbacks=[callback], logger=False,
                          default_root_dir=str(tmp_path))
    environment = trainer._accelerator_connector.cluster_environment  # Lightning's own attribute, as signals.py reads it
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue
    assert (trainer.num_nodes, trainer.world_size, trainer.global_rank, trainer.node_rank) == (2, 2, 1, 1)
    assert environment.requeue_signal == signal.SIGUSR1
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        callback.on_train_start(trainer, None)
        assert signal.getsignal(signal.SIGUSR1) == before[signal.SIGUSR1]  # left to Lightning's requeue handler
        assert signal.getsignal(signal.SIGTERM) != before[signal.SIGTERM]  # ours: save last.ckpt and exit
    finally:
        callback.teardown(trainer, None, "fit")
    assert {s: signal.getsignal(s) for s in before} == before


def test_slurm_ddp_outside_slurm_is_one_node(monkeypatch):
    monkeypatch.delenv("SLURM_NNODES", raising=False)
    assert _compose(["trainer=slurm_ddp"]).trainer.num_nodes == 1
