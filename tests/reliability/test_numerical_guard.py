"""The NaN/Inf guard of training/module.py: a non-finite loss or embedding stops training with a NumericalError that
names the stage, step, batch indices, the bad rows and the object ids (issue #10)."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from captionless3d.errors import NumericalError
from captionless3d.losses import WeightedDenominatorLoss
from captionless3d.training.module import CaptionlessModule

OBJECT_IDS = [f"obj-{i:03d}" for i in range(16)]


class _Encoder(nn.Module):
    """Mean-pooled linear map; from call ``poison_at`` on, row ``bad_row`` becomes ``value`` (NaN or Inf)."""

    def __init__(self, poison_at: int | None = None, bad_row: int = 1, value: float = float("nan")) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.calls, self.poison_at, self.bad_row, self.value = 0, poison_at, bad_row, value

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        out = self.lin(points.mean(1))
        if self.poison_at is not None and self.calls >= self.poison_at:
            out = out.clone()
            out[self.bad_row] = self.value
        self.calls += 1
        return out


def _batch(indices, image_emb=None):
    g = torch.Generator().manual_seed(0)
    n = len(indices)
    return {"points": torch.randn(n, 8, 3, generator=g),
            "image_emb": image_emb if image_emb is not None else torch.randn(n, 4, generator=g),
            "label": torch.zeros(n, dtype=torch.long), "index": torch.tensor(indices)}


def _module(encoder):
    return CaptionlessModule(encoder, WeightedDenominatorLoss(), (), object_ids=OBJECT_IDS, warmup_epochs=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_embedding_names_step_rows_indices_and_object_ids(value):
    module = _module(_Encoder(poison_at=0, bad_row=2, value=value))
    with pytest.raises(NumericalError) as info:
        module.training_step(_batch([5, 9, 11, 3]), 0)
    msg = str(info.value)
    assert "non-finite" in msg and "train step 0" in msg
    assert "rows with non-finite embeddings [2]" in msg
    assert "batch indices [5, 9, 11, 3]" in msg
    assert "obj-005" in msg and "obj-011" in msg


def test_non_finite_loss_from_teacher_embeddings_is_caught_in_validation_too():
    module = _module(_Encoder())
    bad_teacher = torch.randn(3, 4)
    bad_teacher[0, 0] = float("nan")
    with pytest.raises(NumericalError,
                       match=r"non-finite loss at val step 0.*object ids \['obj-001', 'obj-002', 'obj-007'\]"):
        module.validation_step(_batch([1, 2, 7], image_emb=bad_teacher), 0)


def test_guard_stops_a_real_fit_at_the_poisoned_step_and_writes_no_checkpoint_after_it(tmp_path):
    batches = [_batch([2 * k, 2 * k + 1, (2 * k + 2) % 16, (2 * k + 3) % 16]) for k in range(6)]
    loader = DataLoader(batches, batch_size=None)
    module = _module(_Encoder(poison_at=3, bad_row=0))
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ckpt], default_root_dir=tmp_path)
    with pytest.raises(NumericalError, match=r"train step 3 .*batch indices \[6, 7, 8, 9\].*obj-006"):
        trainer.fit(module, train_dataloaders=loader)
    saved = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3  # the last good step; nothing after the NaN was saved
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
