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

This module is also the one owner of reading checkpoints outside Lightning: :func:`load_checkpoint` (validated
metadata and format version), :func:`encoder_state` / :func:`load_encoder_weights` (the student's ``encoder.*``
weights) and :func:`best_checkpoints` (the validation-selected checkpoints under an output directory). Evaluation,
the Python API, the demo and the export all read checkpoints through these functions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from captionless3d.errors import CheckpointError
from captionless3d.training.module import CHECKPOINT_FORMAT_VERSION
from captionless3d.utils.atomic import atomic_write_with

__all__ = ["AtomicCheckpointIO", "best_checkpoints", "encoder_state", "load_checkpoint", "load_encoder_weights"]

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


# ---------------------------------------------------------------------------------------------------------- reading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A captionless3d training checkpoint, loaded on the CPU with ``weights_only=True``.

    Checks that it carries the ``captionless3d`` metadata (teacher id and dim, data fingerprint, experiment, resolved
    training config, ``format_version``) and a ``state_dict``, and that its format version is one this code reads.
    Raises :class:`CheckpointError` naming the file: missing, unreadable / truncated, not ours, or too new.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated/corrupt file or a non-checkpoint pickle
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    meta = checkpoint.get("captionless3d") if isinstance(checkpoint, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: not a captionless3d training checkpoint (no 'captionless3d' metadata)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this code reads "
            f"({CHECKPOINT_FORMAT_VERSION}); upgrade captionless3d"
        )
    return checkpoint


def encoder_state(checkpoint: dict[str, Any], path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The point encoder's weights (the ``encoder.*`` entries of the Lightning ``state_dict``, prefix removed)."""
    prefix = "encoder."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{path}: no 'encoder.*' weights in the checkpoint's state_dict")
    return state


def load_encoder_weights(encoder: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load the ``encoder.*`` weights of the training checkpoint ``path`` into ``encoder`` (in place; returned).

    Raises :class:`CheckpointError` when the file is not a readable captionless3d checkpoint or its weights do not
    fit ``encoder`` (missing or unexpected keys).
    """
    state = encoder_state(load_checkpoint(path), path)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
    return encoder


def best_checkpoints(output_dir: str | Path) -> list[Path]:
    """Every validation-selected checkpoint (``checkpoints/best*.ckpt``) under ``<output_dir>/train``, oldest first
    (by modification time)."""
    return sorted((Path(output_dir) / "train").glob("**/checkpoints/best*.ckpt"), key=lambda p: p.stat().st_mtime)
