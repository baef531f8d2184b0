"""Atomic checkpoint writes for Lightning (``trainer.plugins``: ``configs/trainer/*.yaml``).

Lightning's own ``TorchCheckpointIO`` serialises to memory and writes through an fsspec transaction. For a local path
that transaction opens its temp file with ``tempfile.mkstemp()`` in the *system* temp directory (``$TMPDIR``, usually
``/tmp``) and commits with ``shutil.move``: that is an atomic rename only when ``$TMPDIR`` and the checkpoint directory
are on the same file system; otherwise it is a copy, and a job killed during the copy leaves a truncated ``last.ckpt``
behind. Nothing is fsynced either (fsspec 2026.9, lightning 2.6). :class:`AtomicCheckpointIO` writes next to the
target instead (:func:`captionless3d.utils.atomic.atomic_write_with`: temp in the same directory, fsync, ``os.replace``,
fsync of the directory), so ``last.ckpt`` is always either the previous complete checkpoint or the new one, and a
failed write raises :class:`~captionless3d.errors.CheckpointError` naming the file.

Loading (``ckpt_path=last``) defaults to ``torch.load(weights_only=True)``: a resumed checkpoint is never unpickled
as arbitrary Python (our checkpoints hold only tensors, numbers, strings and containers).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from captionless3d.errors import CheckpointError
from captionless3d.utils.atomic import atomic_write_with

log = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (temp file in the target directory + fsync + rename) and
    whose loads default to ``weights_only=True``.

    Remote URLs (``s3://``, ``gs://`` ...) are handed to Lightning's implementation unchanged.
    """

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{self.__class__.__name__}`."
            )
        text = str(path)
        if not _is_local(text):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(text.removeprefix("file://"))
        log.debug("saving checkpoint atomically: %s", target)
        atomic_write_with(target, lambda tmp: torch.save(checkpoint, tmp), error=CheckpointError)
