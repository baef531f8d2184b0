"""Released point encoders (ULIP PointNeXt / PointNet++ / Point-BERT, OpenShape PointBERT, or our own checkpoints)
evaluated as baselines in the same table as our models.

``python -m captionless3d.eval ckpt=... baseline=[ulip_pointnet2] baseline.ulip_pointnet2.pretrained=<file>`` (configs
in ``configs/baseline/``). The file's key layout is detected and loaded strictly
(:func:`captionless3d.models.released.load_pretrained`): the backbone and the projection must all be there.

Before anything is built, the width of the space the file embeds into (ULIP's ``pc_projection``, OpenShape's
``proj`` or, for OpenShape's B32 release, its 512-d output) is compared with the teacher in use: a release is only
meaningful next to the teacher it was trained against, and a different width is a :class:`CheckpointError` that
names that teacher (:data:`RELEASES`). An equal width with another teacher loads (the shapes fit) but the numbers
compare two different joint spaces; a warning says so.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from captionless3d.errors import CheckpointError, ConfigError
from captionless3d.models import build_point_encoder
from captionless3d.models.released import embedding_width
from captionless3d.models.weights import read_checkpoint

log = logging.getLogger(__name__)

__all__ = ["RELEASES", "Release", "create_pretrained_encoder"]


@dataclass(frozen=True)
class Release:
    """What a family of released checkpoints was trained against."""

    description: str
    teacher: str  # the teacher in words
    dim: int  # its embedding width
    teacher_ids: tuple[str, ...] = ()  # substrings of our teacher ids that name that teacher (empty: none of ours)


RELEASES: dict[str, Release] = {
    "ulip1": Release("ULIP-1 (PointNet++ / Point-BERT / PointNeXt, ShapeNet-55)", "SLIP ViT-B/16 (ULIP-1)", 512),
    "ulip2": Release("ULIP-2 (colored Point-BERT)", "OpenCLIP ViT-bigG-14 laion2b_s39b_b160k", 1280,
                     ("ViT-bigG-14:laion2b_s39b_b160k",)),
    "openshape_b32": Release("OpenShape openshape-pointbert-vitb32-rgb", "OpenAI CLIP ViT-B/32", 512,
                             ("ViT-B-32-quickgelu:openai", "ViT-B-32:openai", "openai/clip-vit-base-patch32")),
    "openshape_g14": Release("OpenShape openshape-pointbert-vitg14-rgb", "OpenCLIP ViT-bigG-14 laion2b_s39b_b160k",
                             1280, ("ViT-bigG-14:laion2b_s39b_b160k",)),
}


def create_pretrained_encoder(
    teacher: Any,
    *,
    pretrained: str | os.PathLike | None,
    name: str = "pointnext_s",
    in_channels: int | None = 3,
    head_mlps: Sequence[int] = (512, 256),
    head_projection: bool = True,
    release: str | None = None,
    **backbone: Any,
) -> Any:
    """A :class:`~captionless3d.models.heads.PointEncoder` into ``teacher``'s space, weights from ``pretrained``.

    Returns the encoder in eval mode: ``(B, P, 3)`` points -> ``(B, teacher.dim)`` embeddings. ``name``: the
    registered backbone; ``in_channels=4`` adds the height channel (ULIP's PointNeXt), ``6`` with
    ``constant_rgb=0.4`` (in ``backbone``) feeds OpenShape's grey to xyz-only clouds. ``head_mlps=[]`` for
    PointNet++ / Point-BERT / OpenShape (no hidden head layers), ``head_projection=False`` for OpenShape's B32 (no
    projection). ``release`` (a key of :data:`RELEASES`) names the teacher the file was trained against in the
    width check. ``backbone``: further backbone options (``constant_rgb``, ...).
    """
    if not pretrained:
        raise ConfigError("baseline: 'pretrained' must name the released checkpoint file (e.g. ULIP's PointNeXt .pt)")
    if release is not None and release not in RELEASES:
        raise ConfigError(f"baseline.release: unknown release {release!r}; known: {', '.join(RELEASES)}")
    path = os.fspath(pretrained)
    state = read_checkpoint(path)
    width = embedding_width(state)
    info = RELEASES.get(release) if release else None
    teacher_id = str(getattr(teacher, "id", type(teacher).__name__))
    if width is not None and width != int(teacher.dim):
        trained = (f" {info.description} was trained against {info.teacher} ({info.dim}-d)" if info else "")
        raise CheckpointError(
            f"{path}: the checkpoint embeds into a {width}-d space (the output width of its projection: ULIP's "
            f"pc_projection, OpenShape's proj, or OpenShape B32's own output), but the teacher in use, {teacher_id}, "
            f"is {int(teacher.dim)}-d.{trained}; evaluate it with that teacher (eval takes the teacher of the first "
            "checkpoint's config)"
        )
    if info is not None and not any(t in teacher_id for t in info.teacher_ids):
        log.warning("baseline %s: %s was trained against %s; the teacher in use is %s, so its embeddings live in "
                    "another joint space (the widths match, the numbers do not compare)", release, info.description,
                    info.teacher, teacher_id)
    model = build_point_encoder(
        name, embed_dim=int(teacher.dim), head_mlps=tuple(head_mlps), in_channels=in_channels, head_dropout=0.0,
        head_projection=head_projection, pretrained=path, pretrained_head="all", **backbone,
    )
    return model.eval()
