"""Pre-emption: on SIGTERM or SIGUSR1 save a resumable checkpoint atomically and exit cleanly (issue #10).

Schedulers announce a pre-emption with a signal some seconds before they kill the job: SLURM sends ``--signal=USR1@T``
(or SIGTERM at the time limit / on pre-emption), Kubernetes and most batch systems send SIGTERM. Lightning on its own

* with ``SLURMEnvironment(auto_requeue=True)`` (the default when running under SLURM) saves ``hpc_ckpt_<n>.ckpt`` on
  SIGUSR1 and requeues the job, and picks that checkpoint up when the requeued job starts in the same directory;
* elsewhere only *notes* SIGTERM and stops at the next batch (raising ``SIGTERMException``) **without saving**, and
  ignores SIGUSR1 (whose default action kills the process).

:class:`PreemptionCheckpoint` closes that gap. While training runs it handles ``signals`` (default SIGTERM and SIGUSR1;
SIGUSR1 is left to Lightning's requeue handler under SLURM auto-requeue). The handler only records the signal; at the
next consistent point (the end of a training batch, or of an epoch when the signal came during validation) the
callback saves a full Lightning checkpoint (weights, optimiser, scheduler, loop counters, callback states, data
position) to ``checkpoint_path`` (default ``<run>/checkpoints/last.ckpt``, what ``ckpt_path=last`` resumes) through the
Trainer's checkpoint IO (atomic with :class:`~captionless3d.training.checkpoint_io.AtomicCheckpointIO`), prints how to
resume and exits with code ``128 + signum`` (143 for SIGTERM, 138 for SIGUSR1), like a shell reports a process ended
by that signal, so ``train && eval`` does not go on with an unfinished model. Under DDP the decision is all-reduced
every step, so all ranks stop at the same batch.

A signal during the last validation is handled at the end of that epoch like any other (the saved state is final;
the test-set evaluation is skipped, ``ckpt_path=last`` re-runs just that); ``on_train_end`` is a safety net for a
signal that slips past the last epoch-end hook. Outside training (before ``fit``, during the final test-set
evaluation) the original handlers are in place.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


class PreemptedExit(SystemExit):
    """Raised to end the process after a pre-emption checkpoint was saved; ``code`` is ``128 + signum``."""


def _signal_number(name: str | int) -> signal.Signals:
    try:
        return signal.Signals(name) if isinstance(name, int) else signal.Signals[str(name).upper()]
    except (KeyError, ValueError):
        from captionless3d.errors import ConfigError

        raise ConfigError(f"callbacks.preemption.signals: unknown signal {name!r}") from None


def _slurm_requeue_active(trainer: L.Trainer) -> bool:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    return isinstance(environment, SLURMEnvironment) and bool(getattr(environment, "auto_requeue", False))


class PreemptionCheckpoint(L.Callback):
    """Save ``checkpoint_path`` atomically and exit on a pre-emption signal (see the module docstring).

    Args:
        checkpoint_path: where to save; ``None``: ``last.ckpt`` in the first ModelCheckpoint's ``dirpath`` (else in
            ``<default_root_dir>/checkpoints``).
        signals: names (or numbers) of the signals to handle.
        exit_code: process exit code; ``None``: ``128 + signum``.
    """

    def __init__(self, checkpoint_path: str | None = None, signals: Sequence[str | int] = DEFAULT_SIGNALS,
                 exit_code: int | None = None) -> None:
        self.checkpoint_path = checkpoint_path
        self.signals = [_signal_number(s) for s in signals]
        self.exit_code = exit_code
        self.received: signal.Signals | None = None
        self.saved_path: Path | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._trainer: L.Trainer | None = None

    # ------------------------------------------------------------------ handlers
    def _handler(self, signum: int, frame: Any) -> None:
        # keep this minimal (it runs between two bytecodes of the main thread): record, forward to child ranks
        if self.received is None:
            self.received = signal.Signals(signum)
            launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
            if launcher is not None and hasattr(launcher, "kill"):
                try:
                    launcher.kill(signum)  # ddp subprocess launcher: pass the signal on to the other local ranks
                except Exception:  # noqa: BLE001 - never raise out of a signal handler
                    pass

    def _install(self, trainer: L.Trainer) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("PreemptionCheckpoint: not in the main thread; signal handlers not installed")
            return
        self._trainer = trainer
        slurm = _slurm_requeue_active(trainer)
        for signum in self.signals:
            if slurm and signum == signal.SIGUSR1:
                log.info("SLURM auto-requeue is active: SIGUSR1 is left to Lightning (hpc checkpoint + requeue)")
                continue
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handler)

    def _restore(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handler:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    # ------------------------------------------------------------------ Lightning hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own SIGTERM notifier (which would stop mid-validation without saving):
        # while training runs, ours replaces it
        self.received = signal.SIGTERM if getattr(trainer, "received_sigterm", False) else None
        self._install(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_stop(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        if self.received is not None:
            path = self._resolve_path(trainer)
            self._exit(trainer, self.received, path if path.is_file() else None, training_done=True)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    # ------------------------------------------------------------------ the work
    def _resolve_path(self, trainer: L.Trainer) -> Path:
        if self.checkpoint_path:
            return Path(self.checkpoint_path)
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        received = self.received or signal.SIGTERM  # another rank got it
        path = self._resolve_path(trainer)
        trainer.save_checkpoint(str(path), weights_only=False)  # full state; every rank calls it, rank 0 writes
        self.saved_path = path
        self._exit(trainer, received, path, training_done=False)

    def _exit(self, trainer: L.Trainer, received: signal.Signals, path: Path | None, *, training_done: bool) -> None:
        code = self.exit_code if self.exit_code is not None else 128 + int(received)
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if training_done:
            what = (f"training had finished; checkpoint {path} holds the final weights; the test-set evaluation was "
                    "skipped" if path else "training had finished; no checkpoint found")
        else:
            what = f"saved checkpoint {path}"
        run_dir = path.parent.parent if path is not None else Path(trainer.default_root_dir)
        message = (f"pre-empted by {received.name} at {where}: {what}. Resume with the same command plus "
                   f"hydra.run.dir={run_dir} ckpt_path=last (exit code {code})")
        if trainer.is_global_zero:
            log.warning(message)
            print(message, file=sys.stderr, flush=True)
        raise PreemptedExit(code)
