"""Multi-GPU / multi-node feature extraction through Lightning's predict loop (DDP), resumable, shard by shard.

* :class:`FeatureExtractionModule` — ``predict_dataloader`` gives rank ``r`` of ``W`` the unfinished shards
  ``todo[r], todo[r + W], ...`` (as chunks of ``plan.chunk_objects`` objects, images decoded in DataLoader workers);
  ``predict_step`` encodes a chunk with the frozen teacher (fp16 autocast on GPU via the trainer's ``16-mixed``
  precision).
* :class:`ShardPredictionWriter` — a ``BasePredictionWriter`` that collects a shard's chunks on the rank that
  computed them and commits the shard (arrays, then journal entry, each atomically) as soon as it is complete.
* :func:`extract_features_distributed` — plans the build (skipping shards finished by an earlier, interrupted run),
  runs ``trainer.predict``, waits at a barrier for every rank, then rank 0 writes the small text arrays and the
  manifest (last). The result is byte-identical to :func:`~captionless3d.teacher.features.build_feature_store` for
  the same teacher, batch settings and thread count: both run the same :mod:`captionless3d.teacher.extract` code.

Strategies: ``ddp`` (one process per device, the usual choice; each process builds its own collection view and its
teacher on its own device — ``python -m captionless3d.features`` does that), ``ddp_spawn`` (the module, teacher and
collection are pickled to the workers; CPU tests), multi-node through ``num_nodes`` and the cluster environment
(SLURM, torchrun) as for training.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, ProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, Dataset

from captionless3d.errors import CacheError, ConfigError
from captionless3d.teacher.extract import (
    ShardAssembler,
    commit_shard,
    encode_chunk,
    finalise_store,
    finished_shards,
    load_chunk,
)
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SHARD_SIZE, StorePlan
from captionless3d.utils.threads import set_torch_threads

log = logging.getLogger("captionless3d.teacher.features")


class _ChunkDataset(Dataset):
    """Item ``i`` = the images of chunk ``chunks[i] = (shard, start, stop)`` (see ``extract.load_chunk``)."""

    def __init__(self, collection: Any, plan: StorePlan, chunks: Sequence[tuple[int, int, int]]) -> None:
        self.collection = collection
        self.plan = plan
        self.chunks = list(chunks)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        k, start, stop = self.chunks[i]
        return {"shard": k, "start": start, "stop": stop, **load_chunk(self.collection, self.plan, start, stop)}


def _passthrough(item: Any) -> Any:
    """Collate function for ``batch_size=None``: one chunk is one batch, numpy arrays stay numpy."""
    return item


def rank_shards(todo: Sequence[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank`` of ``world_size`` takes ``todo[rank], todo[rank + world_size], ...``."""
    return list(todo)[rank::world_size]


class FeatureExtractionModule(L.LightningModule):
    """Encodes the chunks of this rank's shards with a frozen teacher (no parameters of its own are trained)."""

    def __init__(
        self,
        teacher: Any,
        collection: Any,
        plan: StorePlan,
        todo: Sequence[int],
        *,
        batch_size: int = 256,
        num_workers: int = 0,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        self.collection = collection
        self.plan = plan
        self.todo = list(todo)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.num_threads = num_threads

    def setup(self, stage: str) -> None:
        root = self.trainer.strategy.root_device
        tdev = torch.device(getattr(self.teacher, "device", "cpu"))
        if tdev.type != root.type:
            raise ConfigError(
                f"teacher {self.teacher.id} sits on {tdev} but rank {self.trainer.global_rank} computes on {root}: "
                "build the teacher on the rank's device (python -m captionless3d.features does, with strategy=ddp)"
            )
        if tdev != root and tdev.index is not None and root.index is not None:
            log.warning("rank %d: teacher on %s, rank device %s", self.trainer.global_rank, tdev, root)

    def on_predict_start(self) -> None:
        if self.num_threads is not None:
            set_torch_threads(max(1, int(self.num_threads)))

    def predict_dataloader(self) -> DataLoader:
        mine = rank_shards(self.todo, self.trainer.global_rank, self.trainer.world_size)
        chunks = [(k, a, b) for k in mine for a, b in self.plan.chunks(k)]
        log.info("rank %d/%d: %d shards (%d chunks) to encode", self.trainer.global_rank, self.trainer.world_size,
                 len(mine), len(chunks))
        return DataLoader(
            _ChunkDataset(self.collection, self.plan, chunks), batch_size=None, shuffle=False,
            num_workers=self.num_workers, collate_fn=_passthrough, persistent_workers=False,
        )

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        arrays = encode_chunk(self.teacher, batch, self.plan, int(batch["start"]), batch_size=self.batch_size,
                              autocast=False)
        return {"shard": int(batch["shard"]), "start": int(batch["start"]), **arrays}


class ShardPredictionWriter(BasePredictionWriter):
    """Assembles each shard from its chunk predictions and commits it atomically on the rank that computed it."""

    def __init__(self, directory: str | Path, plan: StorePlan) -> None:
        super().__init__(write_interval="batch")
        self.directory = Path(directory)
        self.plan = plan
        self._open: dict[int, ShardAssembler] = {}
        self._started: dict[int, float] = {}
        self.committed: list[int] = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._started.setdefault(int(batch["shard"]), time.time())

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        k = int(prediction["shard"])
        if k not in self._open:
            self._open[k] = ShardAssembler(self.plan, k)
        shard = self._open[k]
        shard.add(int(prediction["start"]), prediction)
        if shard.complete:
            commit_shard(self.directory, self.plan, k, shard.arrays, images=shard.images,
                         started=self._started.pop(k, time.time()))
            del self._open[k]
            self.committed.append(k)

    def on_predict_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self._open:
            raise CacheError(f"feature store {self.directory}: rank {trainer.global_rank} ended with incomplete shards "
                             f"{sorted(self._open)}")


def _default_precision(accelerator: str) -> str:
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if gpu else "32-true"


def extract_features_distributed(
    collection: Any,
    teacher: Any,
    out_dir: str | Path,
    *,
    trainer: L.Trainer | None = None,
    trainer_kwargs: Mapping[str, Any] | None = None,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    landmarks: Mapping[str, Sequence[str]] | None = None,
    batch_size: int = 256,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunk_objects: int | None = None,
    num_workers: int = 0,
    num_threads: int | None = None,
    progress: bool = True,
    verify_finished: bool = True,
) -> Any:
    """Build (or finish) the feature store in ``out_dir`` with ``trainer.predict`` over all ranks; returns the loaded
    :class:`~captionless3d.teacher.features.FeatureStore` on every process that reaches the end (with
    ``ddp_spawn``: the launching process).

    ``trainer_kwargs`` (when no ``trainer`` is given) go to ``lightning.Trainer``; defaults: ``accelerator="auto"``,
    ``devices=1``, ``precision`` ``"16-mixed"`` on GPU / ``"32-true"`` on CPU, no logger, no checkpoints,
    ``use_distributed_sampler=False`` (this module shards by itself).
    """
    from captionless3d.teacher.features import load_feature_store, start_build

    out_dir = Path(out_dir)
    plan, lm = start_build(collection, teacher, out_dir, prompt_template, landmarks, batch_size, shard_size,
                           chunk_objects)
    done = finished_shards(out_dir, plan, verify=verify_finished)
    todo = [k for k in range(plan.num_shards) if k not in done]
    if done:
        log.info("feature store %s: resuming, %d of %d shards already finished", out_dir, len(done), plan.num_shards)
    writer = ShardPredictionWriter(out_dir, plan)
    if trainer is None:
        kwargs = dict(trainer_kwargs or {})
        kwargs.setdefault("accelerator", "auto")
        kwargs.setdefault("devices", 1)
        if kwargs.get("precision") is None:
            kwargs["precision"] = _default_precision(str(kwargs["accelerator"]))
        kwargs.update(logger=False, enable_checkpointing=False, enable_model_summary=False,
                      use_distributed_sampler=False)
        kwargs.setdefault("enable_progress_bar", bool(progress))
        callbacks = [*(kwargs.get("callbacks") or []), writer]
        if kwargs["enable_progress_bar"] and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(TQDMProgressBar())
        kwargs["callbacks"] = callbacks
        trainer = L.Trainer(**kwargs)
    else:
        trainer.callbacks.append(writer)
    module = FeatureExtractionModule(teacher, collection, plan, todo, batch_size=batch_size, num_workers=num_workers,
                                     num_threads=num_threads)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # one chunk per batch, by design
        trainer.predict(module, return_predictions=False)
    trainer.strategy.barrier("captionless3d-features-done")
    if trainer.is_global_zero:
        finalise_store(
            out_dir, plan, collection, teacher, prompt_template=prompt_template, landmarks=lm, batch_size=batch_size,
            progress=progress, run_shards=todo, run_seconds=time.perf_counter() - t0,
            compute={"writer": "lightning-predict", "strategy": type(trainer.strategy).__name__,
                     "world_size": int(trainer.world_size), "accelerator": type(trainer.accelerator).__name__,
                     "precision": str(trainer.precision), "torch_threads": num_threads, "batch_size": batch_size,
                     "chunk_objects": plan.chunk_objects},
        )
    trainer.strategy.barrier("captionless3d-features-manifest")
    return load_feature_store(out_dir, plan.key, verify_checksums=False)


__all__ = [
    "FeatureExtractionModule",
    "ShardPredictionWriter",
    "extract_features_distributed",
    "rank_shards",
]
