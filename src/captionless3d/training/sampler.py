"""Mining-aware batch sampler: batches that contain groups of mutual hard negatives (beyond the paper).

The paper samples batches uniformly at random (docs/method.md, Beyond the paper); the hard negatives of an object are
whichever same-category objects happen to land in its batch. :class:`HardGroupBatchSampler` instead fills a configurable
share of every batch with *groups*: a seed object plus some of its mined top-k neighbours (most prior-similar objects of
the same category), in the spirit of OpenShape's KNN batches. The rest of the batch is filled with random objects.

Epoch plan (identical on every rank; ``rng = default_rng([seed, epoch])``):

1. Two random permutations of the ``n`` dataset positions: the *seed order* and the *fill order*.
2. For every global batch, its ``hard_slots = round(hard_fraction · batch_size)`` are filled with groups. Seeds are
   taken in seed order; an already used seed is skipped. A seed's group is the seed plus up to ``group_size − 1``
   of its **still unused** neighbours, chosen at random among them (so groups change from epoch to epoch), and never
   more than the batch's remaining hard slots. A seed with no unused neighbour stays available as a plain object.
   Late in an epoch groups can therefore be smaller than ``group_size``; a batch's hard part can be less than
   ``hard_slots`` only once no seed has an unused neighbour left.
3. The remaining slots of every batch are filled with the unused objects in fill order.

Every position is used **at most once per epoch** by construction (one ``used`` mask).

Distributed (DDP): ranks compute the same global plan and rank ``r`` takes global batches ``r, r + R, r + 2R, ...``
(``R = num_replicas``). Groups never span batches, so ranks get distinct groups, and the union over ranks is the
whole plan. Number of global batches ``T`` (a multiple of ``R`` so every rank runs the same number of steps, which
the all-gathering loss needs):

- ``drop_last=True`` (default, like the train loader's ``drop_last=True``): ``T = ⌊n / (B·R)⌋·R``; the
  ``n − T·B`` left-over objects (random ones, different every epoch) are skipped this epoch. **Every position is
  visited exactly once per epoch over all ranks when ``n`` is divisible by ``B·R``**, at most once otherwise.
- ``drop_last=False``: ``T = ⌈n / (B·R)⌉·R``; the last batches are completed (padded) with objects repeated from
  the first batches of the epoch (never twice within one batch), like ``DistributedSampler``'s padding. Every
  position is visited at least once; exactly once when ``n`` is divisible by ``B·R``.

Epochs and Lightning: Lightning (2.x, ``lightning.fabric.utilities.data._set_sampler_epoch``) calls ``set_epoch`` on
``dataloader.sampler`` and on ``dataloader.batch_sampler.sampler`` but **not** on the batch sampler itself. So the
batch sampler exposes a ``sampler`` attribute, a tiny object whose ``set_epoch`` forwards to
:meth:`HardGroupBatchSampler.set_epoch`. Lightning passes the number of processed epochs, so a resumed run gets the
same plan for the same epoch. Lightning would also try to *replace* a custom batch sampler under DDP when
``Trainer(use_distributed_sampler=True)``; this sampler shards itself, so use ``use_distributed_sampler=False``
(:class:`~captionless3d.training.datamodule.PointViewDataModule` checks this and raises a ConfigError).
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from captionless3d.errors import ConfigError, DataError

__all__ = [
    "HardGroupBatchSampler",
    "SAMPLER_KEYS",
    "check_sampler_config",
    "pair_shares",
]

#: Keys of the ``data.loader.sampler`` config (all optional; defaults in :func:`check_sampler_config`).
SAMPLER_KEYS = ("group_size", "hard_fraction", "topk", "drop_last")
_SAMPLER_DEFAULTS: dict[str, Any] = {"group_size": 4, "hard_fraction": 0.5, "topk": 16, "drop_last": True}


def check_sampler_config(config: Mapping[str, Any], batch_size: int,
                         prefix: str = "data.loader.sampler") -> dict[str, Any]:
    """Validate and complete a sampler config (``group_size``, ``hard_fraction``, ``topk``, ``drop_last``).

    ConfigError (naming the key) on unknown keys or bad values. Returns a plain dict with every key.
    """
    unknown = sorted(set(config) - set(SAMPLER_KEYS))
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {unknown}; valid keys: {list(SAMPLER_KEYS)}")
    cfg = {**_SAMPLER_DEFAULTS, **dict(config)}
    group_size, topk, fraction = cfg["group_size"], cfg["topk"], cfg["hard_fraction"]
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 2:
        raise ConfigError(f"{prefix}.group_size must be an integer >= 2 (a seed and at least one neighbour), got "
                          f"{group_size!r}")
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ConfigError(f"{prefix}.topk must be an integer >= 1, got {topk!r}")
    if topk < group_size - 1:
        raise ConfigError(f"{prefix}.topk={topk} is smaller than group_size - 1 = {group_size - 1}: "
                          "groups could never fill up")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (0.0 <= float(fraction) <= 1.0):
        raise ConfigError(f"{prefix}.hard_fraction must be a number in [0, 1], got {fraction!r}")
    hard_slots = int(round(float(fraction) * batch_size))
    if hard_slots == 1:
        raise ConfigError(
            f"{prefix}.hard_fraction={fraction} gives 1 hard slot in a batch of {batch_size}; a group needs >= 2 "
            "(raise hard_fraction or set it to 0)"
        )
    if not isinstance(cfg["drop_last"], bool):
        raise ConfigError(f"{prefix}.drop_last must be true or false, got {cfg['drop_last']!r}")
    return {"group_size": int(group_size), "hard_fraction": float(fraction), "topk": int(topk),
            "drop_last": cfg["drop_last"]}


class _EpochHook:
    """What Lightning sees as ``batch_sampler.sampler``: forwards ``set_epoch`` to the batch sampler."""

    def __init__(self, owner: HardGroupBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"_EpochHook(epoch={self._owner.epoch})"


class HardGroupBatchSampler(Sampler[list[int]]):
    """Batch sampler over dataset positions ``0..n-1`` whose batches contain groups of mutual hard negatives.

    See the module docstring for the epoch plan, the DDP sharding and the drop/pad rule.

    Args:
        neighbours: ``(n, k)`` int array, row ``i`` = dataset positions of object ``i``'s mined neighbours, most
            similar first, ``-1`` = no neighbour (e.g. from :func:`neighbours_from_prior`). ``n`` = dataset length.
        batch_size: local (per-rank) batch size B.
        group_size: a group is a seed plus up to ``group_size − 1`` neighbours.
        hard_fraction: share of each batch's slots filled with groups (``round(hard_fraction·B)`` slots);
            0 = plain random batches.
        drop_last: the drop/pad rule (module docstring).
        num_replicas, rank: DDP world size and this rank; default from ``torch.distributed`` if initialised, else 1/0.
        seed: base seed; the plan of an epoch is a deterministic function of ``(seed, epoch)``.
    """

    def __init__(
        self,
        neighbours: np.ndarray | torch.Tensor | Sequence[Sequence[int]],
        batch_size: int,
        *,
        group_size: int = 4,
        hard_fraction: float = 0.5,
        drop_last: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(neighbours, Sampler):
            raise ConfigError(
                "HardGroupBatchSampler got a Sampler as its neighbours: Lightning tried to inject a "
                "DistributedSampler. Set trainer.use_distributed_sampler=false (the hard-group sampler shards batches "
                "across ranks itself)"
            )
        nb = neighbours.detach().cpu().numpy() if isinstance(neighbours, torch.Tensor) else np.asarray(neighbours)
        if nb.ndim != 2 or not (np.issubdtype(nb.dtype, np.integer) or nb.size == 0):
            raise DataError(f"HardGroupBatchSampler: neighbours must be an (n, k) integer array, got {nb.dtype} "
                            f"{nb.shape}")
        nb = nb.astype(np.int64, copy=False)
        n = nb.shape[0]
        if nb.size and (nb.min() < -1 or nb.max() >= n):
            raise DataError(f"HardGroupBatchSampler: neighbour positions must be in [-1, {n}), got [{nb.min()}, "
                            f"{nb.max()}]")
        check_sampler_config(
            {"group_size": group_size, "hard_fraction": hard_fraction, "topk": max(1, group_size - 1),
             "drop_last": drop_last},
            batch_size,
            prefix="HardGroupBatchSampler",
        )
        if isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not (0 <= rank < num_replicas):
            raise ConfigError(f"HardGroupBatchSampler: invalid rank {rank} for num_replicas {num_replicas}")
        if n < batch_size:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the dataset ({n} objects)")
        per_global = batch_size * num_replicas
        total = (n // per_global if drop_last else math.ceil(n / per_global)) * num_replicas
        if total == 0:
            raise ConfigError(
                f"data.batch_size={batch_size} x {num_replicas} ranks = {per_global} > {n} objects: no full batch per "
                "rank with drop_last; lower data.batch_size (or set data.loader.sampler.drop_last=false)"
            )
        self.n = n
        self.batch_size = int(batch_size)
        self.group_size = int(group_size)
        self.hard_fraction = float(hard_fraction)
        self.hard_slots = int(round(self.hard_fraction * self.batch_size))
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.num_global_batches = total
        self.epoch = 0
        self.sampler = _EpochHook(self)  # Lightning calls batch_sampler.sampler.set_epoch(epoch)
        # Neighbour lists without -1, self and repeats, as Python lists (the group loop is per seed).
        lists: list[list[int]] = []
        for i, row in enumerate(nb.tolist()):
            seen: dict[int, None] = {}
            for j in row:
                if j >= 0 and j != i:
                    seen.setdefault(j, None)
            lists.append(list(seen))
        self._neighbours = lists
        self._plan_cache: tuple[int, list[np.ndarray]] | None = None
        self.last_plan_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration yields (Lightning calls this through ``self.sampler``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per rank and epoch."""
        return self.num_global_batches // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.global_plan(self.epoch)
        for batch in plan[self.rank :: self.num_replicas]:
            yield batch.tolist()

    # ------------------------------------------------------------------ the plan
    def global_plan(self, epoch: int | None = None) -> list[np.ndarray]:
        """All ``T`` global batches of ``epoch`` (default: the current one), each an int64 array of B positions;
        rank ``r`` gets ``plan[r::num_replicas]``. Cached for the last epoch asked for."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        plan = self._build_plan(epoch)
        self._plan_cache = (epoch, plan)
        return plan

    def _build_plan(self, epoch: int) -> list[np.ndarray]:
        n, bsz, hard = self.n, self.batch_size, self.hard_slots
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, (self.seed >> 32) & 0xFFFFFFFF, epoch & 0xFFFFFFFF])
        seed_order = rng.permutation(n)
        fill_order = rng.permutation(n)
        used = np.zeros(n, dtype=bool)
        n_full = min(self.num_global_batches, n // bsz)

        # 1. groups: the hard part of each full batch
        hard_parts: list[list[int]] = []
        ptr = 0
        n_groups = 0
        for _ in range(n_full):
            part: list[int] = []
            while hard - len(part) >= 2 and ptr < n:
                s = int(seed_order[ptr])
                ptr += 1
                if used[s]:
                    continue
                cand = [j for j in self._neighbours[s] if not used[j]]
                if not cand:
                    continue  # no unused neighbour: s stays available as a plain object
                take = min(self.group_size - 1, hard - len(part) - 1, len(cand))
                if take < len(cand):
                    cand = [cand[k] for k in rng.choice(len(cand), size=take, replace=False)]
                group = [s, *cand]
                used[group] = True
                part.extend(group)
                n_groups += 1
            hard_parts.append(part)

        # 2. fill the rest of every full batch with unused objects in fill order
        rest = fill_order[~used[fill_order]]
        plan: list[np.ndarray] = []
        offset = 0
        for part in hard_parts:
            need = bsz - len(part)
            plan.append(np.concatenate([np.asarray(part, dtype=np.int64), rest[offset : offset + need]]))
            offset += need
        leftover = rest[offset:]
        grouped = sum(len(p) for p in hard_parts)
        self.last_plan_stats = {
            "epoch": epoch,
            "grouped_share": grouped / max(1, n_full * bsz),  # realised share of batch slots holding group members
            "target_share": hard / bsz,
            "mean_group_size": grouped / max(1, n_groups),
        }

        # 3. drop_last=False: complete the remaining batches with the left-overs, then padding from the first batches
        if len(plan) < self.num_global_batches:
            source = np.concatenate(plan) if plan else np.zeros(0, np.int64)
            src = 0
            queue = list(leftover.tolist())
            while len(plan) < self.num_global_batches:
                batch = queue[:bsz]
                queue = queue[bsz:]
                present = set(batch)
                while len(batch) < bsz:
                    j = int(source[src % len(source)])
                    src += 1
                    if j not in present:
                        present.add(j)
                        batch.append(j)
                plan.append(np.asarray(batch, dtype=np.int64))
        return plan

    def __repr__(self) -> str:
        return (
            f"HardGroupBatchSampler(n={self.n}, batch_size={self.batch_size}, group_size={self.group_size}, "
            f"hard_fraction={self.hard_fraction}, drop_last={self.drop_last}, rank={self.rank}/{self.num_replicas}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )


# ---------------------------------------------------------------------------------------------------- diagnostics
def pair_shares(
    batches: Sequence[Sequence[int] | np.ndarray], labels: np.ndarray, neighbours: np.ndarray
) -> dict[str, float]:
    """How hard a set of batches is: mean over batches of the share of ordered within-batch pairs ``(i, j), i ≠ j``
    that are same-category (``"same_category"``) and with ``j`` among ``i``'s mined neighbours (``"topk"``).

    ``labels (n,)`` and ``neighbours (n, k)`` are indexed by dataset position (the same positions as the batches).
    """
    labels = np.asarray(labels)
    nb = np.asarray(neighbours, dtype=np.int64)
    same, topk = [], []
    for batch in batches:
        b = np.asarray(batch, dtype=np.int64)
        if b.size < 2:
            continue
        off = ~np.eye(b.size, dtype=bool)
        lab = labels[b]
        same.append(float((lab[:, None] == lab[None, :])[off].mean()))
        is_nb = (nb[b][:, None, :] == b[None, :, None]).any(axis=-1)
        topk.append(float(is_nb[off].mean()))
    return {
        "same_category": float(np.mean(same)) if same else 0.0,
        "topk": float(np.mean(topk)) if topk else 0.0,
        "batches": len(same),
    }
