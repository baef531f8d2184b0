"""What every shape collection shares (the synthetic world and the real-data readers): split names and lookup."""
from __future__ import annotations

import numpy as np

from captionless3d.errors import ConfigError

SPLITS = ("teacher", "train", "val", "test")


class SplitIndexMixin:
    """``len(collection)`` and ``collection.indices(split)`` for classes with ``object_ids`` and ``splits (N,)``."""

    object_ids: list[str]
    splits: np.ndarray

    def __len__(self) -> int:
        return len(self.object_ids)

    def indices(self, split: str) -> np.ndarray:
        """Global indices (int64, ascending) of the objects in ``split``; ConfigError for an unknown split name."""
        if split not in SPLITS:
            raise ConfigError(f"split: unknown split {split!r}; expected one of {SPLITS}")
        return np.flatnonzero(self.splits == split).astype(np.int64)
