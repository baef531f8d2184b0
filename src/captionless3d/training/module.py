"""The LightningModule: PointNeXt student + projection head, trained with the weighted-denominator loss."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from captionless3d.errors import NumericalError
from captionless3d.training.schedule import warmup_cosine_lr

CHECKPOINT_FORMAT_VERSION = 1


class CaptionlessModule(L.LightningModule):
    """Aligns a point encoder to frozen teacher image embeddings.

    Args:
        encoder: maps ``points (B, N, 3)`` to ``(B, D)`` embeddings (not normalised; the loss normalises).
        loss: a :class:`~captionless3d.losses.WeightedDenominatorLoss` (holds the learnable temperature and bias).
        priors: prior stores used by the loss (empty: plain InfoNCE; two: AVG). Not saved in the checkpoint; they
            are rebuilt from the cached prior store whose manifest the checkpoint's metadata names.
        lr, min_lr, weight_decay, warmup_epochs: Adam with coupled L2 decay; per-step linear warm-up then cosine
            (docs/method.md, Training).
        loss_weight_decay: whether the decay also applies to the loss's own parameters (the logit scale and bias).
            The paper's optimiser decays every parameter, which pulls the scale towards 0 (a warmer softmax);
            ``False`` leaves them undecayed, as CLIP does (docs/student_gap.md).
        metadata: teacher id/dim, data fingerprint, config snapshot; stored in every checkpoint.
    """

    def __init__(
        self,
        encoder: nn.Module,
        loss: nn.Module,
        priors: Sequence[Any] = (),
        *,
        lr: float = 1e-3,
        min_lr: float = 1e-7,
        weight_decay: float = 0.01,
        warmup_epochs: float = 30.0,
        loss_weight_decay: bool = True,
        object_ids: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = loss
        self.priors = list(priors)
        self.lr = lr
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.loss_weight_decay = bool(loss_weight_decay)
        self.object_ids = list(object_ids) if object_ids is not None else None
        self.metadata = dict(metadata or {})

    # ----------------------------------------------------------------------------------------------- lifecycle
    def setup(self, stage: str) -> None:
        if self.trainer is not None:
            if hasattr(self.loss, "rank"):
                self.loss.rank = self.trainer.global_rank
            if hasattr(self.loss, "world_size"):
                self.loss.world_size = self.trainer.world_size

    def on_fit_start(self) -> None:
        self.priors = [prior.to(self.device) if hasattr(prior, "to") else prior for prior in self.priors]

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.encoder(points)

    # ----------------------------------------------------------------------------------------------- steps
    def _shared_step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        point_emb = self.encoder(batch["points"])
        loss = self.loss(batch["image_emb"], point_emb, batch["index"], self.priors)
        if not torch.isfinite(loss) or not torch.isfinite(point_emb).all():
            self._raise_numerical(batch, stage, loss, point_emb)
        batch_size = batch["points"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, "train")
        for name in ("scale", "bias"):
            value = getattr(self.loss, name, None)
            if isinstance(value, torch.Tensor):
                self.log(f"train/{name}", value.detach().float(), batch_size=batch["points"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def _raise_numerical(self, batch: dict[str, torch.Tensor], stage: str, loss: torch.Tensor,
                         emb: torch.Tensor) -> None:
        indices = batch["index"].tolist()
        bad_rows = (~torch.isfinite(emb)).any(dim=1).nonzero().flatten().tolist()
        names = [self.object_ids[i] for i in indices] if self.object_ids else indices
        raise NumericalError(
            f"non-finite {'loss' if not torch.isfinite(loss) else 'embedding'} at {stage} step {self.global_step} "
            f"(epoch {self.current_epoch}): loss={loss.item()}, rows with non-finite embeddings {bad_rows}, "
            f"batch indices {indices[:32]}, object ids {names[:32]}"
        )

    # ----------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        loss_params = {id(p) for p in self.loss.parameters()}
        decayed = [p for p in self.parameters() if self.loss_weight_decay or id(p) not in loss_params]
        undecayed = [p for p in self.parameters() if not self.loss_weight_decay and id(p) in loss_params]
        groups = [{"params": decayed, "weight_decay": self.weight_decay}]
        if undecayed:
            groups.append({"params": undecayed, "weight_decay": 0.0})
        optimizer = torch.optim.Adam(groups, lr=self.lr)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        max_epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = total_steps / max_epochs
        warmup_steps = int(round(self.warmup_epochs * steps_per_epoch))

        def factor(step: int) -> float:
            lr = warmup_cosine_lr(
                step, total_steps=total_steps, warmup_steps=warmup_steps, base_lr=self.lr, min_lr=self.min_lr
            )
            return lr / self.lr

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["captionless3d"] = {"format_version": CHECKPOINT_FORMAT_VERSION, **self.metadata}
