"""Pre-emption on a real training subprocess (issue #10): SIGKILL + resume, SIGTERM / SIGUSR1 + resume.

Every interrupted run is resumed with ``hydra.run.dir=<same dir> ckpt_path=last`` and must end *bit-identical* to an
uninterrupted run: same final weights, same validation-selected checkpoint, same test metrics in summary.json.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from .conftest import assert_same_weights, metrics_of, pause_args, run_train, start_train, state_of, wait_for

pytestmark = pytest.mark.slow


def _resume_and_compare(root, run_dir, reference):
    proc = run_train(root, run_dir, f"hydra.run.dir={run_dir}", "ckpt_path=last")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = proc.stdout + proc.stderr
    assert "Restoring states from the checkpoint" in log or "Restored all states" in log
    assert "not resumable" not in log  # Lightning's warning for a plain DataLoader resumed mid-epoch
    assert metrics_of(run_dir) == metrics_of(reference)
    assert_same_weights(run_dir / "checkpoints" / "last.ckpt", reference / "checkpoints" / "last.ckpt")
    assert_same_weights(run_dir / "checkpoints" / "best.ckpt", reference / "checkpoints" / "best.ckpt")
    ours, theirs = state_of(run_dir / "checkpoints" / "last.ckpt"), state_of(reference / "checkpoints" / "last.ckpt")
    assert ours["global_step"] == theirs["global_step"] == 12
    return log


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(warm_cache, reference_run):
    root, run_dir = warm_cache, warm_cache / "killed"
    started = time.perf_counter()
    # pause at the end of step 8 (the last batch of epoch 1, before its validation); the newest last.ckpt is then the
    # periodic one of step 6, i.e. mid-epoch (epoch 1, 2 of 4 batches done)
    proc = start_train(root, run_dir, *pause_args(root, 8, release=False))
    try:
        wait_for(root / "paused", proc)
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    (root / "paused").unlink()
    killed_at = state_of(run_dir / "checkpoints" / "last.ckpt")
    assert killed_at["global_step"] == 6 and killed_at["epoch"] == 1, (killed_at["global_step"], killed_at["epoch"])
    assert killed_at["callbacks"]["DeterministicResume"] == {"epoch": 1, "consumed": 2, "seed": 0, "rank": 0}
    assert not (run_dir / "summary.json").exists()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    log = _resume_and_compare(root, run_dir, reference_run)
    assert "resumed epoch 1 at batch 2" in log
    (root / "timings_sigkill.txt").write_text(f"{time.perf_counter() - started:.1f}")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_checkpoint_exits_and_resumes_exactly(warm_cache, reference_run, signame):
    root, run_dir = warm_cache, warm_cache / f"preempted_{signame}"
    signum = getattr(signal, signame)
    for name in ("paused", "release"):
        (root / name).unlink(missing_ok=True)
    started = time.perf_counter()
    # pause at the end of step 5 (epoch 1, first batch), signal, let it go on: the handler saves at the next batch end
    proc = start_train(root, run_dir, *pause_args(root, 5, release=True))
    try:
        wait_for(root / "paused", proc)
        proc.send_signal(signum)
        time.sleep(0.5)  # the signal is delivered while PauseAt sleeps; training must not have died of it
        assert proc.poll() is None, f"{signame} killed the process instead of being handled"
        (root / "release").write_text("go")
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (root / f"{run_dir.name}.log").read_text()
    assert code == 128 + signum, output[-4000:]
    assert (f"pre-empted by {signame} at epoch 1, step 6: saved checkpoint "
            f"{run_dir / 'checkpoints' / 'last.ckpt'}" in output)
    assert f"hydra.run.dir={run_dir} ckpt_path=last" in output
    assert "Traceback" not in output
    saved = state_of(run_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 6 and saved["callbacks"]["DeterministicResume"]["consumed"] == 2
    assert not (run_dir / "summary.json").exists()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    _resume_and_compare(root, run_dir, reference_run)
    (root / f"timings_{signame}.txt").write_text(f"{time.perf_counter() - started:.1f}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]
