"""Bit-exact resume from a mid-epoch checkpoint (issue #10).

Why a plain resume is not exact: Lightning restores weights, optimiser, scheduler and loop counters, but

1. the train ``DataLoader`` is not resumable: after a mid-epoch restart Lightning starts a *new* shuffled pass and
   serves its first batches as the "remaining" ones, so the batches of the interrupted epoch differ; and
2. the augmentation (random point subset, rotation, view choice) and the shuffle draw from the global RNGs, whose
   state is not in the checkpoint (and, in a resumed process, was consumed differently before ``fit``).

:class:`DeterministicResume` (a callback, ``configs/callbacks/default.yaml``) fixes both without touching the data
module: it wraps the data module's train loader in a :class:`ResumableLoader` that

* re-seeds ``torch``/``numpy``/``random`` before creating each epoch's iterator and before fetching each batch, from
  ``(seed, epoch, batch, rank)`` only, so every batch (shuffle order, augmentation, worker seeds) and the RNG state
  the training step sees are a pure function of the position in training; and
* records ``(epoch, batches consumed)`` in the checkpoint and, on resume, replays the interrupted epoch's iterator up
  to that position (skipped batches are fetched and dropped, so worker-side RNG streams stay identical too; the cost
  is at most one epoch of data loading once per resume).

Note Lightning builds the train loader before it restores the loop state when ``configure_optimizers`` asks for
``trainer.estimated_stepping_batches`` (ours does), so its own ``combined_loader`` state is never loaded back; the
callback therefore carries the loader position in its own checkpoint state.
"""
from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch

log = logging.getLogger(__name__)

_ITER = -1  # the "batch index" used to seed an epoch's iterator creation (sampler / worker base seeds)


def batch_seed(seed: int, epoch: int, batch: int, rank: int = 0) -> int:
    """A 63-bit seed that depends only on ``(seed, epoch, batch, rank)`` (``batch=-1``: the epoch's iterator)."""
    entropy = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(batch) + 1, int(rank)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_all(value: int) -> None:
    """Seed Python's ``random``, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(value)
    np.random.seed(value % (1 << 32))
    torch.manual_seed(value)


class ResumableLoader:
    """A train loader whose batches are a function of ``(seed, epoch, batch index, rank)`` and that can resume
    mid-epoch.

    Wraps any sized iterable of batches (a ``DataLoader``). ``epoch_fn`` returns the current epoch when an epoch's first
    batch is requested (the Trainer's ``current_epoch``); without it, epochs are counted by ``__iter__`` calls.
    ``state_dict()`` / ``load_state_dict()`` follow Lightning's ``_Stateful`` protocol.
    """

    def __init__(self, loader: Any, *, seed: int, rank: int = 0, epoch_fn: Callable[[], int] | None = None) -> None:
        self.loader = loader
        self.seed = int(seed)
        self.rank = int(rank)
        self._epoch_fn = epoch_fn
        self._epoch = -1
        self._consumed = 0
        self._pending: dict[str, int] | None = None
        self.skipped = 0  # batches replayed and dropped by the last resumed epoch (for logs and tests)

    # ------------------------------------------------------------------ what Lightning and the samplers look at
    def __len__(self) -> int:
        return len(self.loader)

    @property
    def sampler(self) -> Any:
        return getattr(self.loader, "sampler", None)

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.loader, "batch_sampler", None)

    @property
    def dataset(self) -> Any:
        return getattr(self.loader, "dataset", None)

    @property
    def worker_init_fn(self) -> Any:
        return getattr(self.loader, "worker_init_fn", None)

    @worker_init_fn.setter
    def worker_init_fn(self, value: Any) -> None:  # Lightning's seed_everything(workers=True) sets this
        self.loader.worker_init_fn = value

    def __getattr__(self, name: str) -> Any:  # num_workers, batch_size, ... (only called for missing attributes)
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[Any]:
        return self._epoch_batches()

    def _epoch_batches(self) -> Iterator[Any]:
        # a generator: nothing below runs until the first batch is requested, when the Trainer's epoch is final
        epoch = int(self._epoch_fn()) if self._epoch_fn is not None else self._epoch + 1
        skip = 0
        if self._pending is not None:
            if int(self._pending.get("epoch", -1)) == epoch:
                skip = int(self._pending.get("consumed", 0))
            self._pending = None
        self._epoch, self._consumed, self.skipped = epoch, 0, 0
        seed_all(batch_seed(self.seed, epoch, _ITER, self.rank))
        iterator = iter(self.loader)
        index = 0
        while True:
            seed_all(batch_seed(self.seed, epoch, index, self.rank))
            try:
                batch = next(iterator)
            except StopIteration:
                return
            index += 1
            self._consumed = index
            if index <= skip:
                self.skipped = index
                continue
            if skip and index == skip + 1:
                log.info("resumed epoch %d at batch %d (replayed %d batches of the data pipeline)", epoch, skip, skip)
            yield batch

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "consumed": self._consumed, "seed": self.seed, "rank": self.rank}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if int(state.get("seed", self.seed)) != self.seed:
            log.warning("resuming with seed=%s but the checkpoint was written with seed=%s: the rest of the run "
                        "follows the new seed", self.seed, state.get("seed"))
        self._pending = {"epoch": int(state.get("epoch", -1)), "consumed": int(state.get("consumed", 0))}


class DeterministicResume(L.Callback):
    """Makes a resumed run (``ckpt_path=last``) continue exactly where the interrupted one stopped.

    Wraps ``trainer.datamodule.train_dataloader()`` in a :class:`ResumableLoader` (after Lightning-style distributed
    sampler injection when ``world_size > 1``) and stores its position in the checkpoint. Does nothing when
    ``enabled`` is false or the Trainer was given loaders directly instead of a data module.
    """

    def __init__(self, seed: int = 0, enabled: bool = True) -> None:
        self.seed = int(seed)
        self.enabled = bool(enabled)
        self.loader: ResumableLoader | None = None
        self._pending: dict[str, Any] | None = None
        self._patched: Any = None

    @property
    def state_key(self) -> str:
        return "DeterministicResume"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            log.warning("DeterministicResume: the Trainer has no data module; mid-epoch resume will not be exact")
            return
        original = datamodule.train_dataloader

        def train_dataloader() -> ResumableLoader:
            loader = original()
            if trainer.world_size > 1:  # what Lightning would do to a DataLoader (it skips non-DataLoaders)
                from lightning.pytorch.trainer.states import RunningStage

                loader = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
            self.loader = ResumableLoader(loader, seed=self.seed, rank=trainer.global_rank,
                                          epoch_fn=lambda: trainer.current_epoch)
            if self._pending is not None:
                self.loader.load_state_dict(self._pending)
                self._pending = None
            return self.loader

        datamodule.train_dataloader = train_dataloader  # instance attribute; the class method is untouched
        self._patched = datamodule

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._patched is not None:
            vars(self._patched).pop("train_dataloader", None)
            self._patched = None

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict() if self.loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.loader is not None:
            self.loader.load_state_dict(state_dict)
        else:
            self._pending = dict(state_dict)
