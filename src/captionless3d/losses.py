"""The paper's contrastive loss with a prior-weighted denominator (docs/method.md, Loss).

For a batch of N (image, shape) pairs with L2-normalised embeddings ``z^I``, ``z^P``:

``s_ij = τ·⟨z^I_i, z^P_j⟩ + b``  (``temperature="paper"``: τ learnable, used *linearly*, init ln 10; b learnable,
init −10) or ``s_ij = exp(t)·⟨z^I_i, z^P_j⟩`` (``temperature="exp"``: t init ln 10, i.e. CLIP's parametrisation).
b cancels in the softmax (up to the ``eps`` in the denominator, which makes its gradient ≈ 0 but not exactly 0), so the
"exp" form has no bias. Neither τ nor t is clamped (the official code does not clamp τ; OpenCLIP clamps exp(t) ≤ 100,
which a trainer can do on ``loss.scale`` if wanted).

Weights from pairwise priors ``l`` (a :class:`~captionless3d.mining.PriorStore` or anything with
``pairs(rows, cols) -> (R, C)``), see :func:`normalise_prior_weights`:
``m_i = (1/N)·Σ_{j≠i} l_ij``, ``w_ij = l_ij / m_i`` (j ≠ i), ``w_ii = 1``. Several priors (AVG): the
row-normalised weight matrices are averaged entrywise. No priors: all ``w = 1``, i.e. plain symmetric InfoNCE.

``ℓ_{I→P} = −(1/N) Σ_i [ s_ii − log( Σ_j w_ij·exp(s_ij) + eps ) ]``
``ℓ_{P→I}`` = the same on ``sᵀ`` (rows = shapes) with the **same** W, i.e. row j of ``sᵀ`` (shape j against all
images i) is weighted by ``W[j, i]``. This is what the official code does (the same ``weights`` tensor is passed
with ``logits`` and ``logits.T``). Because the priors are symmetric (``l_ij = l_ji``), ``W[j, i] = l_ji / m_j`` is
exactly the row normalisation of shape j's own prior row, so "the same W" (not ``Wᵀ``) is also the natural choice.
``L = (ℓ_{I→P} + ℓ_{P→I}) / 2``.

Numerics: everything is computed in float32 with autocast disabled (inputs in fp16/bf16 are upcast), as
``logaddexp(logsumexp_j(s_ij + log w_ij), log eps) − s_ii``, which never overflows.

Distributed (like OpenCLIP's ``ClipLoss``): with ``world_size > 1`` the normalised embeddings and the global object
indices are all-gathered (embeddings with gradient through ``torch.distributed.nn.functional.all_gather`` when
``gather_with_grad``). Columns are always the global batch (N = world_size·B) and the prior lookup uses global
indices. Every rank must pass the same local batch size B.

- ``local_loss=False``: every rank computes the loss over all N global rows, so each rank's loss equals the
  single-process loss on the global batch. Under DDP (gradient averaging over ranks) the parameter gradients are
  exactly the single-process ones, because the all-gather backward sums the world_size identical contributions.
- ``local_loss=True``: rows are only the B local samples (cost B·N instead of N² per rank); the returned value is
  the loss over the local rows, so the *mean over ranks* equals the global loss, and with ``gather_with_grad`` the
  DDP-averaged gradients are again exactly the single-process ones.
- ``gather_with_grad=False``: the gathered copies from other ranks are constants; only the local embeddings
  receive gradient (OpenCLIP's cheaper, inexact variant).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError

__all__ = ["PairwisePrior", "WeightedDenominatorLoss", "normalise_prior_weights", "weighted_denominator_ce"]


@runtime_checkable
class PairwisePrior(Protocol):
    """Anything that returns pairwise priors ``l`` (R, C) for global row/column object indices."""

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor: ...


def normalise_prior_weights(l: torch.Tensor, positive_cols: torch.Tensor) -> torch.Tensor:
    """Row-normalise priors into denominator weights (docs/method.md, Loss): ``(R, C), (R,) -> (R, C)`` float32.

    ``positive_cols[r]`` is the column of row r's positive pair. ``m_r = (1/C)·Σ_{c ≠ pos_r} l_rc`` (the mean over
    all C columns with the positive zeroed, as in the code), ``w_rc = l_rc / m_r`` for c ≠ pos_r and
    ``w_r,pos_r = 1``; hence ``Σ_{c≠pos} w_rc = C``. A row whose negatives all have ``l = 0`` (or a batch of one)
    gets zero negative weights instead of 0/0.
    """
    if l.ndim != 2:
        raise DataError(f"normalise_prior_weights: l must be (R, C), got shape {tuple(l.shape)}")
    rows, cols = l.shape
    positive_cols = positive_cols.to(device=l.device, dtype=torch.long).reshape(-1)
    if positive_cols.numel() != rows:
        raise DataError(f"normalise_prior_weights: {positive_cols.numel()} positive columns for {rows} rows")
    l = l.detach().to(torch.float32)
    pos_mask = torch.zeros(rows, cols, dtype=torch.bool, device=l.device)
    pos_mask[torch.arange(rows, device=l.device), positive_cols] = True
    off = l.masked_fill(pos_mask, 0.0)
    m = off.sum(dim=1, keepdim=True) / cols
    w = off / torch.where(m > 0, m, torch.ones_like(m))
    return w.masked_fill(pos_mask, 1.0)


def weighted_denominator_ce(
    logits: torch.Tensor, positive_cols: torch.Tensor, weights: torch.Tensor | None = None, eps: float = 1e-9
) -> torch.Tensor:
    """``−mean_r [ s_r,pos_r − log( Σ_c w_rc·exp(s_rc) + eps ) ]`` for ``logits (R, C)``, stably, in float32.

    ``weights=None`` means all ones (plain cross-entropy, up to ``eps``).
    """
    logits = logits.float()
    a = logits if weights is None else logits + torch.log(weights.to(device=logits.device, dtype=torch.float32))
    log_denom = torch.logsumexp(a, dim=1)
    if eps > 0:
        log_denom = torch.logaddexp(log_denom, torch.full_like(log_denom, math.log(eps)))
    pos = logits.gather(1, positive_cols.to(device=logits.device, dtype=torch.long).reshape(-1, 1)).squeeze(1)
    return (log_denom - pos).mean()


class WeightedDenominatorLoss(nn.Module):
    """Symmetric image↔shape contrastive loss with a prior-weighted denominator. See the module docstring.

    Args:
        temperature: ``"paper"`` (``τ·cos + b``, τ linear) or ``"exp"`` (``exp(t)·cos``).
        init_scale: initial τ ("paper") or t ("exp"); default ln 10.
        init_bias: initial b ("paper" only); default −10.
        learnable: τ/t and b are ``nn.Parameter`` s (else buffers).
        eps: the constant added to the denominator sum (code: 1e-9).
        local_loss, gather_with_grad, rank, world_size: distributed options (module docstring).
    """

    def __init__(
        self,
        temperature: Literal["paper", "exp"] = "paper",
        init_scale: float = math.log(10),
        init_bias: float = -10.0,
        learnable: bool = True,
        eps: float = 1e-9,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if temperature not in ("paper", "exp"):
            raise ConfigError(f"loss.temperature: unknown value {temperature!r}, expected 'paper' or 'exp'")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ConfigError(f"loss.eps: must be finite and >= 0, got {eps!r}")
        if world_size < 1 or not (0 <= rank < world_size):
            raise ConfigError(f"loss: invalid rank {rank} / world_size {world_size}")
        self.temperature = temperature
        self.eps = float(eps)
        self.local_loss = bool(local_loss)
        self.gather_with_grad = bool(gather_with_grad)
        self.rank = int(rank)
        self.world_size = int(world_size)

        def register(name: str, value: float) -> None:
            t = torch.tensor(float(value), dtype=torch.float32)
            if learnable:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

        register("scale", init_scale)
        if temperature == "paper":
            register("bias", init_bias)
        else:
            self.bias = None

    # ------------------------------------------------------------------ helpers
    def logit_scale(self) -> torch.Tensor:
        """The multiplier of the cosines: τ ("paper") or exp(t) ("exp"). For logging."""
        return self.scale if self.temperature == "paper" else self.scale.exp()

    def logits_from_cos(self, cos: torch.Tensor) -> torch.Tensor:
        cos = cos.float()
        if self.temperature == "paper":
            return self.scale.float() * cos + self.bias.float()
        return self.scale.float().exp() * cos

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather_with_grad:
            import torch.distributed.nn.functional as dist_fn

            return torch.cat(dist_fn.all_gather(x), dim=0)
        parts = [torch.zeros_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[self.rank] = x  # keep the local gradient path
        return torch.cat(parts, dim=0)

    def _gather_index(self, index: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(index) for _ in range(self.world_size)]
        dist.all_gather(parts, index.contiguous())
        return torch.cat(parts, dim=0)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image_emb: torch.Tensor,
        point_emb: torch.Tensor,
        index: torch.Tensor | None = None,
        priors: Sequence[PairwisePrior] = (),
    ) -> torch.Tensor:
        """Loss for a (local) batch: ``image_emb (B, D)``, ``point_emb (B, D)``, global object ``index (B,)``
        (needed when ``priors`` is non-empty). Returns a float32 scalar."""
        if image_emb.ndim != 2 or image_emb.shape != point_emb.shape:
            raise DataError(f"loss: image_emb {tuple(image_emb.shape)} and point_emb {tuple(point_emb.shape)} "
                            "must both be (B, D)")
        batch = image_emb.shape[0]
        if batch == 0:
            raise DataError("loss: empty batch")
        if isinstance(priors, PairwisePrior):  # a single store passed without a sequence
            priors = (priors,)
        priors = tuple(priors or ())
        if priors and index is None:
            raise DataError("loss: priors need the global object index of every sample")
        if index is not None:
            index = torch.as_tensor(index, device=image_emb.device).to(torch.long).reshape(-1)
            if index.numel() != batch:
                raise DataError(f"loss: index has {index.numel()} entries for a batch of {batch}")

        with torch.autocast(device_type=image_emb.device.type, enabled=False):
            img = F.normalize(image_emb.float(), dim=-1)
            pts = F.normalize(point_emb.to(img.device).float(), dim=-1)

            distributed = self.world_size > 1
            if distributed:
                if not (dist.is_available() and dist.is_initialized()):
                    raise ConfigError("loss.world_size > 1 but torch.distributed is not initialised")
                all_img, all_pts = self._gather(img), self._gather(pts)
                all_index = self._gather_index(index) if index is not None else None
            else:
                all_img, all_pts, all_index = img, pts, index
            n_cols = all_img.shape[0]

            if distributed and self.local_loss:
                row_index = index
                positive = torch.arange(batch, device=img.device) + self.rank * batch
                logits_ip = self.logits_from_cos(img @ all_pts.T)  # (B, N): images vs all shapes
                logits_pi = self.logits_from_cos(pts @ all_img.T)  # (B, N): shapes vs all images (rows of sᵀ)
            else:
                row_index = all_index
                positive = torch.arange(n_cols, device=img.device)
                logits_ip = self.logits_from_cos(all_img @ all_pts.T)
                logits_pi = logits_ip.T

            weights = None
            if priors:
                weights = torch.zeros(logits_ip.shape, dtype=torch.float32, device=img.device)
                for prior in priors:  # over the 1-2 priors, not over the batch
                    l = prior.pairs(row_index, all_index).to(device=img.device, dtype=torch.float32)
                    if l.shape != logits_ip.shape:
                        raise DataError(f"loss: prior returned shape {tuple(l.shape)}, expected "
                                        f"{tuple(logits_ip.shape)}")
                    weights = weights + normalise_prior_weights(l, positive)
                weights = weights / len(priors)

            loss_ip = weighted_denominator_ce(logits_ip, positive, weights, self.eps)
            loss_pi = weighted_denominator_ce(logits_pi, positive, weights, self.eps)
            return 0.5 * (loss_ip + loss_pi)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature!r}, eps={self.eps}, local_loss={self.local_loss}, "
            f"gather_with_grad={self.gather_with_grad}, rank={self.rank}, world_size={self.world_size}"
        )
