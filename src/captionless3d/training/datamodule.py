"""LightningDataModule: (points, one random view embedding, category, index) for the student.

Items are fetched a whole batch at a time through ``Dataset.__getitems__`` so that subsampling, normalisation and
rotation are vectorised over the batch (no Python loop over samples).

Optional mining-aware batches (issue 4, beyond the paper): with ``sampler={group_size, hard_fraction, topk,
drop_last}`` (config ``data.loader.sampler``, see ``configs/sampler/``) the train loader uses a
:class:`~captionless3d.training.sampler.HardGroupBatchSampler` over neighbour lists that the module computes from
the prior stores given to :meth:`PointViewDataModule.attach` (``priors=``) or takes ready (``neighbours=``). The
sampler shards batches across DDP ranks itself, so the Trainer must run with ``use_distributed_sampler=False``
(checked); the validation loader then gets its own ``DistributedSampler`` (what Lightning would have injected).
With ``sampler=None`` (default) both loaders are exactly as before.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from captionless3d.data.pointcloud import normalise_unit_sphere, random_rotate, random_subset
from captionless3d.errors import ConfigError, DataError


class PointSource(Protocol):
    """What the data module needs of a shape collection (see docs/architecture.md)."""

    points: np.ndarray  # (N, P, 3) float32
    labels: np.ndarray  # (N,) int64
    object_ids: Sequence[str]

    def indices(self, split: str) -> np.ndarray: ...


#: The student's target per object: ``random`` (the paper: one random render view per step, so the views act as
#: augmentation) or ``mean`` (the L2-normalised mean of all view embeddings: the teacher oracle's shape embedding,
#: :mod:`captionless3d.evaluation.oracle`).
VIEW_TARGETS = ("random", "mean")


class PointViewDataset(Dataset):
    """Samples of one split.

    Each item is a dict with ``points (n_points, 3)`` float32, ``image_emb (D,)`` float32 (the target: one view
    embedding, a random view when ``random_view`` else view 0; or with ``view_target="mean"`` the normalised mean of
    all views), ``label`` int64 and ``index`` int64 (the global object index into the collection, used to look up
    priors and name objects in error messages).
    """

    def __init__(
        self,
        points: np.ndarray,
        view_emb: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        *,
        n_points: int,
        rotation_degrees: float,
        random_view: bool,
        seed: int | None = None,
        view_target: str = "random",
    ) -> None:
        if len(indices) == 0:
            raise DataError("split is empty: no objects to serve")
        if points.shape[1] < n_points:
            raise DataError(f"data.n_points={n_points} but the stored clouds have only {points.shape[1]} points")
        self.points = points
        self.view_emb = view_emb
        self.labels = labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.n_points = n_points
        self.rotation_degrees = rotation_degrees
        self.random_view = random_view
        self.seed = seed  # fixed seed: deterministic sampling per item (validation); None: fresh randomness
        if view_target not in VIEW_TARGETS:
            raise ConfigError(f"data.loader.view_target: expected one of {VIEW_TARGETS}, got {view_target!r}")
        self.view_target = view_target

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([position])
        return {key: value[0] for key, value in batch.items()}

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        order = np.asarray(positions, dtype=np.int64)
        global_index = self.indices[order]
        sorted_idx = np.sort(global_index)  # memmap fancy-indexing wants sorted reads; restore order after
        restore = np.argsort(np.argsort(global_index))
        points = torch.from_numpy(np.ascontiguousarray(self.points[sorted_idx][restore], dtype=np.float32))
        generator = None
        if self.seed is not None:
            generator = torch.Generator().manual_seed(int(self.seed * 1_000_003 + int(global_index.sum())))
        points = random_subset(points, self.n_points, generator)
        points = normalise_unit_sphere(points)
        points = random_rotate(points, self.rotation_degrees, generator)
        n_views = self.view_emb.shape[1]
        if self.random_view:
            views = torch.randint(n_views, (len(order),), generator=generator).numpy()
        else:
            views = np.zeros(len(order), dtype=np.int64)
        all_views = np.asarray(self.view_emb[sorted_idx][restore], dtype=np.float32)  # (B, V, D)
        if self.view_target == "mean":
            mean = all_views.mean(axis=1)
            image_emb = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        else:
            image_emb = all_views[np.arange(len(order)), views]
        return {
            "points": points,
            "image_emb": torch.from_numpy(image_emb),
            "label": torch.from_numpy(self.labels[global_index].astype(np.int64)),
            "index": torch.from_numpy(global_index),
        }


def _collate_batch(batch: Any) -> Any:
    """``__getitems__`` already returns a collated batch; pass it through."""
    return batch


class PointViewDataModule(L.LightningDataModule):
    """Serves the student-train and validation splits of a collection with its cached teacher view embeddings."""

    def __init__(
        self,
        *,
        n_points: int = 2048,
        batch_size: int = 64,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        rotation_degrees: float = 45.0,
        train_split: str = "train",
        val_split: str = "val",
        seed: int = 0,
        pin_memory: bool = False,
        sampler: Mapping[str, Any] | None = None,
        view_target: str = "random",
    ) -> None:
        super().__init__()
        if view_target not in VIEW_TARGETS:
            raise ConfigError(f"data.loader.view_target: expected one of {VIEW_TARGETS}, got {view_target!r}")
        self.view_target = view_target
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if n_points < 1:
            raise ConfigError(f"data.n_points must be >= 1, got {n_points}")
        self.n_points = n_points
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.rotation_degrees = rotation_degrees
        self.train_split = train_split
        self.val_split = val_split
        self.seed = seed
        self.pin_memory = pin_memory
        self.sampler_config: dict[str, Any] | None = None
        if sampler is not None:
            from captionless3d.training.sampler import check_sampler_config

            self.sampler_config = check_sampler_config(dict(sampler), batch_size)
        self.collection: PointSource | None = None
        self.view_emb: np.ndarray | None = None
        self.neighbours: np.ndarray | None = None  # (n_train, k) dataset positions, when the sampler is on

    def attach(
        self,
        collection: PointSource,
        view_emb: np.ndarray,
        *,
        priors: Sequence[Any] | None = None,
        neighbours: np.ndarray | None = None,
    ) -> PointViewDataModule:
        """Give the module its data: the collection and the ``(N, V, D)`` view embeddings of the feature store.

        For the hard-group sampler (``sampler`` set) also the mined neighbours: either ``priors`` (the prior stores;
        the module computes each train object's ``sampler.topk`` most similar same-category train objects with
        :func:`~captionless3d.mining.neighbours.neighbours_from_prior`) or ready ``neighbours`` (``(n_train, k)``
        dataset positions into ``collection.indices(train_split)``, ``-1`` = none). Ignored when the sampler is off.
        """
        if view_emb.shape[0] != collection.points.shape[0]:
            raise DataError(
                f"feature store has {view_emb.shape[0]} objects but the collection has {collection.points.shape[0]}"
            )
        self.collection = collection
        self.view_emb = view_emb
        self.neighbours = None
        if self.sampler_config is not None:
            n_train = len(collection.indices(self.train_split))
            if neighbours is not None:
                neighbours = np.asarray(neighbours, dtype=np.int64)
                if neighbours.ndim != 2 or neighbours.shape[0] != n_train:
                    raise DataError(
                        f"neighbours: expected ({n_train}, k) for the '{self.train_split}' split, got "
                        f"{neighbours.shape}"
                    )
                self.neighbours = neighbours
            elif priors:
                from captionless3d.mining.neighbours import neighbours_from_prior

                self.neighbours = neighbours_from_prior(
                    priors, collection.indices(self.train_split), self.sampler_config["topk"]
                )
        return self

    def _world(self) -> tuple[int, int]:
        """(world size, global rank): from the attached Trainer, else torch.distributed, else (1, 0)."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def _check_no_injected_sampler(self, world_size: int) -> None:
        trainer = getattr(self, "trainer", None)
        connector = getattr(trainer, "_accelerator_connector", None)  # private; absent: nothing to check
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ConfigError(
                "data.loader.sampler is set but the Trainer would replace the batch sampler with a DistributedSampler: "
                "set trainer.use_distributed_sampler=false (the hard-group sampler shards batches across ranks itself)"
            )

    def _dataset(self, split: str, *, train: bool) -> PointViewDataset:
        if self.collection is None or self.view_emb is None:
            raise RuntimeError("PointViewDataModule.attach(collection, view_emb) must be called before use")
        indices = self.collection.indices(split)
        if train and len(indices) < self.batch_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the '{split}' split ({len(indices)} objects); "
                "lower data.batch_size"
            )
        return PointViewDataset(
            self.collection.points,
            self.view_emb,
            self.collection.labels,
            indices,
            n_points=self.n_points,
            rotation_degrees=self.rotation_degrees,
            random_view=True,
            seed=None if train else self.seed,
            view_target=self.view_target,
        )

    def train_dataloader(self) -> DataLoader:
        if self.sampler_config is not None:
            return self._hard_group_train_dataloader()
        return DataLoader(
            self._dataset(self.train_split, train=True),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            collate_fn=_collate_batch,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _hard_group_train_dataloader(self) -> DataLoader:
        from captionless3d.training.sampler import HardGroupBatchSampler

        dataset = self._dataset(self.train_split, train=True)
        if self.neighbours is None:
            raise ConfigError(
                "data.loader.sampler is set but the data module has no neighbours: call "
                "attach(collection, view_emb, priors=<prior stores>) (or neighbours=...); with mining=none there are "
                "no priors, so use a mining config or data.loader.sampler=null"
            )
        world_size, rank = self._world()
        self._check_no_injected_sampler(world_size)
        cfg = self.sampler_config
        batch_sampler = HardGroupBatchSampler(
            self.neighbours,
            self.batch_size,
            group_size=cfg["group_size"],
            hard_fraction=cfg["hard_fraction"],
            drop_last=cfg["drop_last"],
            num_replicas=world_size,
            rank=rank,
            seed=self.seed,
        )
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_batch,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.val_split, train=False)
        sampler = None
        if self.sampler_config is not None:
            # use_distributed_sampler=False: shard validation ourselves, as Lightning would have
            world_size, rank = self._world()
            if world_size > 1:
                sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.val_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_collate_batch,
            pin_memory=self.pin_memory,
        )
