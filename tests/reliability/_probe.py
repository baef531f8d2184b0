"""Test-only Lightning callback, loaded into training subprocesses with ``+callbacks.pause=...`` (PYTHONPATH=tests).

It makes the moment of an interruption deterministic: at the end of training step ``step`` it writes ``marker`` and
blocks until ``release`` exists (or until the process is killed). It draws no random numbers and changes no state, so
a run with it computes exactly what a run without it computes.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    def __init__(self, step: int, marker: str, release: str | None = None, timeout_s: float = 300.0) -> None:
        self.step = int(step)
        self.marker = Path(marker)
        self.release = Path(release) if release else None
        self.timeout_s = float(timeout_s)
        self.done = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.done or trainer.global_step != self.step:
            return
        self.done = True
        self.marker.write_text(f"{trainer.current_epoch} {batch_idx}")
        deadline = time.monotonic() + self.timeout_s
        while self.release is None or not self.release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PauseAt: {self.release} never appeared")
            time.sleep(0.05)
