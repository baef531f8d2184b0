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
    # Lightning's own attribute, as signals.py reads it
    environment = trainer._accelerator_connector.cluster_environment
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


@pytest.mark.slow
def test_slurm_ddp_requeue_on_sigusr1_saves_an_hpc_checkpoint_and_the_requeued_run_resumes(tmp_path):
    """SLURM's pre-emption notice under trainer=slurm_ddp, on a fake one-node SLURM job (SLURM's variables, an
    ``scontrol`` that records its arguments): SIGUSR1 mid-training -> Lightning saves ``hpc_ckpt_1.ckpt`` in the run
    directory and asks ``scontrol requeue <job id>``; the same command again (what the requeued job runs) resumes from
    that checkpoint. Our own pre-emption callback must stay out of SIGUSR1's way here (the process keeps running)."""
    import torch

    tests_dir = Path(__file__).resolve().parent
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol.txt"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {record}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({**SLURM_ENV, "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_NODEID": "0",
                "SLURM_NODELIST": "localhost", "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(tests_dir), env.get("PYTHONPATH", "")])})
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "captionless3d.train", "data=synthetic_tiny", "teacher=synthetic_tiny",
           "trainer=slurm_ddp", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
           "trainer.sync_batchnorm=false", "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
           "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "experiment=avg",
           "~callbacks.test_evaluation", "~callbacks.validation_metrics",  # not what this test is about: time
           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / 'outputs'}",
           f"hydra.run.dir={run_dir}"]
    pause = ["+callbacks.pause._target_=reliability._probe.PauseAt", "+callbacks.pause.step=2",
             f"+callbacks.pause.marker={tmp_path / 'paused'}", f"+callbacks.pause.release={tmp_path / 'release'}"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([*cmd, *pause], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 400
            while not (tmp_path / "paused").exists():
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "training never reached step 2"
                time.sleep(0.1)
            proc.send_signal(signal.SIGUSR1)  # what sbatch --signal=USR1@120 delivers
            deadline = time.monotonic() + 60
            while not record.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            (tmp_path / "release").write_text("")
            # a real SLURM would now stop the job and start it again; the fake one lets it finish
            assert proc.wait(timeout=400) == 0, (tmp_path / "first.log").read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    first = (tmp_path / "first.log").read_text()
    assert record.read_text().split() == ["requeue", "4242"], first[-3000:]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert hpc.is_file(), first[-3000:]
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 2
    assert "pre-empted by" not in first  # our callback did not take SIGUSR1 over

    again = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-4000:]
    assert f"Restored all states from the checkpoint at {hpc}" in again.stdout + again.stderr
