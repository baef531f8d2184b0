"""CLIP2Point (Huang et al., ICCV 2023) as a baseline: its image-depth pre-trained depth encoder on our multi-view
depth projection.

Released checkpoint format (tyhuang0428/CLIP2Point, ``pretraining.py`` / ``utils.read_state_dict``): ``best_eval.pth``
is ``torch.save(nn.DataParallel(CLIP2Point).state_dict())``, a flat dict with ``module.point_model.*`` (the depth
encoder: a copy of OpenAI CLIP ViT-B/32's visual tower, fine-tuned on depth maps), ``module.image_model.*`` (the
frozen CLIP visual tower) and ``module.weights`` (a loss-balancing scalar). The depth encoder's keys
(``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre.*``, ``transformer.resblocks.{i}.*``,
``ln_post.*``, ``proj``) are exactly those of OpenCLIP's ``ViT-B-32`` visual tower, so it loads into a copy of an
OpenCLIP teacher's ``model.visual`` strictly.

Requirements checked here:

* the teacher is an OpenCLIP teacher whose visual tower has the file's keys and shapes (ViT-B-32), else
  :class:`CheckpointError` listing the differences;
* the tower uses QuickGELU, OpenAI CLIP's activation (OpenCLIP ``ViT-B-32-quickgelu``, or ``ViT-B-32`` with
  ``pretrained=openai``); a GELU tower would compute another function with the same weights: :class:`ConfigError`;
* a teacher that is not OpenAI's ViT-B/32 (its text tower makes the class prompts) gets a warning: CLIP2Point's
  depth features live in OpenAI CLIP's space.

What differs from CLIP2Point's own evaluation: the depth maps are :class:`~captionless3d.baselines.pointclip.
PointCLIPEncoder`'s (orthographic, nearest depth, min-filter densification; CLIP2Point renders with PyTorch3D point
rasterisation and its own view selector), the prompt is the benchmark's (CLIP2Point: "image of a {}"), and views are
combined by summing the L2-normalised per-view embeddings (CLIP2Point sums the per-view logits: the same ranking).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captionless3d.baselines.pointclip import PointCLIPEncoder, create_pointclip
from captionless3d.errors import CheckpointError, ConfigError, DataError
from captionless3d.models.weights import read_checkpoint, strip_wrappers

log = logging.getLogger(__name__)

__all__ = ["read_depth_encoder", "DepthEncoderTeacher", "create_clip2point"]

_PREFIX = "point_model."
_SHOWN = 8


def read_depth_encoder(path: str | os.PathLike) -> dict[str, Tensor]:
    """The depth encoder's ``state_dict`` from a CLIP2Point checkpoint (``point_model.*``, ``module.`` stripped);
    :class:`CheckpointError` when the file is not a checkpoint or holds no depth encoder."""
    sd = {strip_wrappers(k): v for k, v in read_checkpoint(path).items()}
    tower = {k[len(_PREFIX):]: v for k, v in sd.items() if k.startswith(_PREFIX)}
    if not tower:
        raise CheckpointError(f"{os.fspath(path)}: no CLIP2Point depth encoder (no 'module.point_model.*' keys); "
                              f"first keys: {', '.join(list(sd)[:_SHOWN])}")
    return tower


def _uses_quick_gelu(module: torch.nn.Module) -> bool:
    return any(type(m).__name__ == "QuickGELU" for m in module.modules())


class DepthEncoderTeacher:
    """The teacher seen through another visual tower: ``encode_images`` runs ``teacher``'s own preprocessing and then
    ``visual`` (L2-normalised ``(B, dim)``); ``encode_texts``, ``dim``, ``image_size`` are the teacher's."""

    def __init__(self, teacher: Any, visual: torch.nn.Module, *, tag: str) -> None:
        self.teacher = teacher
        self.visual = visual.eval()
        for param in self.visual.parameters():
            param.requires_grad_(False)
        self.id = f"{teacher.id}+{tag}"
        self.dim = int(teacher.dim)
        self.image_size = int(teacher.image_size)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, *, batch_size: int = 256, progress: bool | None = None) -> Tensor:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"encode_images expects a uint8 array (B, H, W, 3), got {type(images).__name__}")
        dtype = next(self.visual.parameters()).dtype
        out = []
        for start in range(0, len(images), batch_size):
            pixels = self.teacher.preprocess_uint8(images[start:start + batch_size]).to(dtype)
            feats = self.visual(pixels).float()
            out.append((feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def encode_texts(self, texts, **kwargs) -> Tensor:
        return self.teacher.encode_texts(texts, **kwargs)


def create_clip2point(teacher: Any, *, pretrained: str | os.PathLike | None, **pointclip: Any) -> PointCLIPEncoder:
    """Factory for Hydra (``configs/baseline/clip2point.yaml``): PointCLIP's depth projection (options as
    :func:`~captionless3d.baselines.pointclip.create_pointclip`) through CLIP2Point's depth encoder loaded into a
    copy of ``teacher``'s visual tower (module doc for the checks)."""
    if not pretrained:
        raise ConfigError("baseline.clip2point.pretrained: name CLIP2Point's released checkpoint (best_eval.pth)")
    model = getattr(teacher, "model", None)
    visual = getattr(model, "visual", None)
    if visual is None or not hasattr(teacher, "preprocess_uint8"):
        raise ConfigError(f"baseline clip2point needs an OpenCLIP teacher (its visual tower takes the depth encoder's "
                          f"weights); the teacher in use is {getattr(teacher, 'id', type(teacher).__name__)}")
    path = os.fspath(pretrained)
    tower = read_depth_encoder(path)
    own = visual.state_dict()
    missing = sorted(set(own) - set(tower))
    unexpected = sorted(set(tower) - set(own))
    mismatched = [f"{k}: checkpoint {tuple(tower[k].shape)} vs teacher {tuple(own[k].shape)}"
                  for k in own if k in tower and tower[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{path}: CLIP2Point's depth encoder (an OpenAI CLIP ViT-B/32 visual tower) does not fit the "
                 f"visual tower of the teacher in use, {teacher.id}:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
            if items:
                more = f" ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:_SHOWN])}{more}")
        parts.append("use an OpenCLIP ViT-B-32 teacher (ViT-B-32-quickgelu with pretrained=openai)")
        raise CheckpointError("\n  ".join(parts))
    if not _uses_quick_gelu(visual):
        raise ConfigError(
            f"baseline clip2point: the teacher in use, {teacher.id}, has a GELU visual tower; CLIP2Point's depth "
            "encoder is OpenAI CLIP ViT-B/32's tower (QuickGELU) and computes another function under GELU. Use the "
            "OpenCLIP architecture ViT-B-32-quickgelu (pretrained=openai)"
        )
    if "openai" not in str(teacher.id):
        log.warning("baseline clip2point: CLIP2Point was trained against OpenAI CLIP ViT-B/32; the teacher in use is "
                    "%s, whose text tower makes the class prompts of another joint space", teacher.id)
    depth = copy.deepcopy(visual)
    depth.load_state_dict({k: v.to(own[k].dtype) for k, v in tower.items()}, strict=True)
    return create_pointclip(DepthEncoderTeacher(teacher, depth, tag=f"clip2point:{os.path.basename(path)}"),
                            **pointclip)
