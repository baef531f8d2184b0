"""PointCLIP (Zhang et al., CVPR 2022): a training-free zero-shot point-cloud encoder built from a frozen CLIP teacher.

A cloud is projected onto a few multi-view depth maps, every map goes through the teacher's *image* tower, and the
per-view embeddings are combined by a weighted sum. The result lives in the teacher's joint space, so
:func:`captionless3d.evaluation.runner.evaluate_encoder` evaluates it exactly like the trained student: zero-shot
against the class-prompt embeddings, and photo<->shape retrieval against the photo embeddings.

Method (our implementation of the paper; the reference code was read, not copied)
---------------------------------------------------------------------------------
Input clouds are ``(B, P, 3)`` in object units, centred and inside the unit sphere (``embed_points`` normalises
them), y up, canonical front towards +z (the synthetic world's convention, and ModelNet's).

1. **Views.** Each view is a camera on a sphere around the origin, named by ``(azimuth, elevation)`` in degrees with
   the synthetic renderer's convention (azimuth 0 = camera on +z looking at the front, 90 = on +x, elevation 90 =
   above). Its basis has rows ``right, up, forward`` (world -> camera), built as ``orbit_camera`` does: ``right =
   forward x world_up`` (``+x`` when looking straight up/down) and ``up = right x forward``. The default 6 views are
   PointCLIP's axis-aligned set: front, right, back, left (the 4 side views around the vertical axis), top, bottom.
   ``n_views`` up to 10 adds the 4 diagonal side views of PointCLIP-V2 (azimuth 45+90k, elevation 20).
2. **Projection.** ``"orthographic"`` (default): pixel coordinates from ``zoom * (x_right, y_up)``, the unit disc
   filling the image at ``zoom = 1``. ``"perspective"``: PointCLIP-V1's code divides by the distance to a camera
   at ``camera_distance`` (1.6) in front of the centre, ``x / (d + camera_distance)``; here that is scaled by
   ``zoom * camera_distance`` so that ``zoom`` means the same on the centre plane in both modes (the reference
   code is ``perspective`` with ``zoom = 1 / 1.6``). Column ``floor((u + 1) S / 2)``, row ``floor((1 - v) S / 2)``
   (image up = world up); points that land outside the image are dropped.
3. **Z-buffer.** One ``scatter_reduce(amin)`` over all (batch, view, pixel) cells keeps the *nearest* depth per
   pixel (PointCLIP-V1 averages all depths that fall in a pixel; the nearest is the usual depth-map semantics).
   Depth ``d`` is the signed distance along the viewing direction from the plane through the origin, in object
   units: ``d = -1`` is the point of the unit sphere closest to the camera, ``+inf`` marks an empty pixel.
4. **Densification.** A ``dilation x dilation`` min-filter on depth (max-pool of ``-d``), so sparse samples form
   surfaces and the nearer surface still wins (PointCLIP-V2 max-pools its depth grid for the same purpose).
5. **Depth -> grey value.** With ``c = camera_distance`` (distance ``d + c`` from the camera, in ``[c-1, c+1]``):
   - ``"pointclip"``: ``255 (d + c) / (c + 1)``, the paper's depth maps, whose pixel value *is* the distance: far =
     bright (255), the nearest point of the unit sphere ``255 (c-1)/(c+1)`` (59 for c = 1.6), background 0 (black);
   - ``"near_bright"``: ``255 (c - d) / (c + 1)``, the reverse: near = 255, far = 59, background 0.
   ``invert=True`` then maps ``x -> 255 - x`` (white background; ``pointclip`` + ``invert`` is PointCLIP-V2's look:
   white background, near surfaces light, far ones dark). PointCLIP-V1 feeds raw depth values to CLIP without its
   mean/std normalisation; our teachers take uint8 images, so the linear uint8 map above stands in for that.
   Default ``"pointclip"`` with ``invert=True``, chosen on the synthetic world's *val* split: the synthetic teacher
   saw only white-background renders and sends every black-background depth map to one class (zero-shot 6.25% =
   chance with ``invert=False``, 19.4% with ``invert=True``; ``near_bright`` + invert 18.1%).
6. **Encode + aggregate.** The ``B * V`` grey maps are replicated to 3 channels (uint8 ``(B*V, S, S, 3)``, S = the
   teacher's input size unless ``image_size`` says otherwise) and encoded in one ``teacher.encode_images`` call;
   the L2-normalised view embeddings are summed with ``view_weights`` (default: equal) and L2-normalised.
   For zero-shot this ranks classes exactly as PointCLIP's ``concat(view feats) . repeat(text feat)`` with the
   same weights (the final normalisation is one positive constant per shape).

PointCLIP's own prompt is ``"point cloud depth map of a {}."`` (:data:`POINTCLIP_TEMPLATE`); the harness uses the
feature store's template. :func:`with_prompt_template` gives a feature-store view with other class prompts.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from captionless3d.data.pointcloud import check_points
from captionless3d.errors import ConfigError

#: PointCLIP's axis-aligned views as (azimuth, elevation) degrees: front, right, back, left, top, bottom.
DEFAULT_VIEW_ANGLES: tuple[tuple[float, float], ...] = ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0),
                                                        (0.0, 90.0), (0.0, -90.0))
VIEW_NAMES: tuple[str, ...] = ("front", "right", "back", "left", "top", "bottom")
#: Views 7-10 (``n_views > 6``): PointCLIP-V2's diagonal side views, raised by 20 degrees to show more surface.
EXTRA_VIEW_ANGLES: tuple[tuple[float, float], ...] = ((45.0, 20.0), (135.0, 20.0), (225.0, 20.0), (315.0, 20.0))
#: PointCLIP's zero-shot prompt template.
POINTCLIP_TEMPLATE = "point cloud depth map of a {}."
DEPTH_MAPPINGS = ("pointclip", "near_bright")
PROJECTIONS = ("orthographic", "perspective")


def view_bases(view_angles: Sequence[Sequence[float]]) -> torch.Tensor:
    """World -> camera rotations ``(V, 3, 3)`` float32 for ``(azimuth_deg, elevation_deg)`` cameras; rows are
    ``right, up, forward``. Computed in float64 and rounded to 12 decimals, so axis-aligned views are exact
    signed permutation matrices (a 90-degree rotation of the cloud then permutes views bit-exactly)."""
    bases = []
    for index, angle in enumerate(view_angles):
        if len(angle) != 2:
            raise ConfigError(f"view_angles[{index}]: expected (azimuth_deg, elevation_deg), got {angle!r}")
        az, el = math.radians(float(angle[0])), math.radians(float(angle[1]))
        eye = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
        right = np.array([1.0, 0.0, 0.0]) if np.linalg.norm(right) < 1e-8 else right / np.linalg.norm(right)
        up = np.cross(right, forward)
        bases.append(np.round(np.stack([right, up, forward]), 12) + 0.0)  # + 0.0: no negative zeros
    return torch.from_numpy(np.stack(bases)).float()


def _resolve_views(n_views: int | None, view_angles: Sequence[Sequence[float]] | None) -> list[tuple[float, float]]:
    if view_angles is not None:
        angles = [tuple(a) for a in view_angles]  # view_bases checks each is (azimuth_deg, elevation_deg)
        if not angles:
            raise ConfigError("view_angles: give at least one (azimuth_deg, elevation_deg) view")
        if n_views is not None and n_views != len(angles):
            raise ConfigError(f"n_views={n_views} disagrees with the {len(angles)} entries of view_angles")
        return angles  # type: ignore[return-value]
    available = DEFAULT_VIEW_ANGLES + EXTRA_VIEW_ANGLES
    n = 6 if n_views is None else n_views
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(available):
        raise ConfigError(f"n_views must be an integer in 1..{len(available)} (or give view_angles), got {n_views!r}")
    return list(available[:n])


class PointCLIPEncoder(nn.Module):
    """PointCLIP zero-shot encoder: points ``(B, P, 3)`` float -> ``(B, D)`` float32 L2-normalised teacher-space
    embeddings (see the module docstring for the method and every convention).

    Args:
        teacher: a frozen :class:`~captionless3d.teacher.base.Teacher` (``encode_images``, ``image_size``, ``dim``).
            It is held as a plain attribute, not a submodule: ``.to()``/``.train()`` of this module leave it alone.
        n_views: number of views (6: PointCLIP's axis-aligned set; 7-10 add PointCLIP-V2's diagonal views).
        view_angles: explicit ``(azimuth_deg, elevation_deg)`` cameras instead of ``n_views``.
        view_weights: one non-negative weight per view (PointCLIP searches them on the test set; default equal).
        image_size: side of the depth maps in pixels (default: the teacher's input size).
        projection: ``"orthographic"`` or ``"perspective"`` (PointCLIP-V1's code).
        zoom: object-to-image scale; 1.0 = the unit disc fills the image.
        camera_distance: camera distance from the centre in object units (> 1); sets the perspective and the
            grey-value range of the depth maps. PointCLIP uses 1.6.
        depth_mapping: ``"pointclip"`` (far = bright) or ``"near_bright"``; background 0.
        invert: map grey values ``x -> 255 - x`` (white background; default, see below).
        dilation: odd side of the densifying min-filter in pixels (1 = none; default ``round(S / 32)`` made odd).
        image_batch_size: images per teacher forward inside the one ``encode_images`` call.
    """

    def __init__(
        self,
        teacher: Any,
        *,
        n_views: int | None = None,
        view_angles: Sequence[Sequence[float]] | None = None,
        view_weights: Sequence[float] | None = None,
        image_size: int | None = None,
        projection: str = "orthographic",
        zoom: float = 0.9,
        camera_distance: float = 1.6,
        depth_mapping: str = "pointclip",
        invert: bool = True,
        dilation: int | None = None,
        image_batch_size: int = 256,
    ) -> None:
        super().__init__()
        for attr in ("encode_images", "image_size", "dim"):
            if not hasattr(teacher, attr):
                raise ConfigError(f"teacher: {type(teacher).__name__} has no '{attr}'; PointCLIP needs a Teacher")
        object.__setattr__(self, "teacher", teacher)  # never a submodule, even if the teacher is an nn.Module
        angles = _resolve_views(n_views, view_angles)
        self.register_buffer("bases", view_bases(angles), persistent=False)  # (V, 3, 3); validates the angles
        self.view_angles: list[tuple[float, float]] = [(float(a), float(e)) for a, e in angles]
        if view_weights is None:
            weights = torch.ones(len(angles))
        else:
            weights = torch.as_tensor([float(w) for w in view_weights], dtype=torch.float32)
            if weights.numel() != len(angles):
                raise ConfigError(f"view_weights has {weights.numel()} entries for {len(angles)} views")
            if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ConfigError(f"view_weights must be finite, non-negative and not all zero, got {weights.tolist()}")
        self.register_buffer("view_weights", weights, persistent=False)

        size = int(teacher.image_size if image_size is None else image_size)
        if size < 2:
            raise ConfigError(f"image_size must be at least 2 pixels, got {image_size!r}")
        self.image_size = size
        if projection not in PROJECTIONS:
            raise ConfigError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
        self.projection = projection
        if not (isinstance(zoom, (int, float)) and math.isfinite(zoom) and zoom > 0):
            raise ConfigError(f"zoom must be a positive number, got {zoom!r}")
        self.zoom = float(zoom)
        if not (isinstance(camera_distance, (int, float)) and math.isfinite(camera_distance) and camera_distance > 1):
            raise ConfigError(f"camera_distance must be > 1 (outside the unit sphere), got {camera_distance!r}")
        self.camera_distance = float(camera_distance)
        if depth_mapping not in DEPTH_MAPPINGS:
            raise ConfigError(f"depth_mapping must be one of {DEPTH_MAPPINGS}, got {depth_mapping!r}")
        self.depth_mapping = depth_mapping
        self.invert = bool(invert)
        if dilation is None:
            dilation = max(1, round(size / 32))
            dilation += 1 - dilation % 2
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1 or dilation % 2 == 0:
            raise ConfigError(f"dilation must be a positive odd integer (1 = no densification), got {dilation!r}")
        self.dilation = dilation
        if int(image_batch_size) < 1:
            raise ConfigError(f"image_batch_size must be positive, got {image_batch_size!r}")
        self.image_batch_size = int(image_batch_size)

    @property
    def n_views(self) -> int:
        return len(self.view_angles)

    def extra_repr(self) -> str:
        return (
            f"teacher={getattr(self.teacher, 'id', type(self.teacher).__name__)!r}, views={self.view_angles}, "
            f"weights={self.view_weights.tolist()}, image_size={self.image_size}, projection={self.projection!r}, "
            f"zoom={self.zoom}, camera_distance={self.camera_distance}, depth_mapping={self.depth_mapping!r}, "
            f"invert={self.invert}, dilation={self.dilation}"
        )

    # -- projection ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def depth_maps(self, points: torch.Tensor, *, densify: bool = True) -> torch.Tensor:
        """Nearest depth per pixel ``(B, V, S, S)`` float32 for clouds ``(B, P, 3)``: signed distance along each
        view's forward axis from the plane through the origin (object units; -1 = nearest point of the unit
        sphere), ``+inf`` where no point lands. ``densify`` applies the ``dilation`` min-filter."""
        check_points(points)
        pts = points.float()
        batch = pts.shape[0]
        size = self.image_size
        cam = torch.einsum("bpk,vjk->bvpj", pts, self.bases.to(pts.device))  # (B, V, P, [right, up, forward])
        u, v, depth = cam.unbind(-1)
        valid = torch.ones_like(depth, dtype=torch.bool)
        if self.projection == "perspective":
            distance = depth + self.camera_distance  # from the camera, along its axis
            valid = distance > 1e-6
            scale = self.zoom * self.camera_distance / distance.clamp_min(1e-6)
        else:
            scale = torch.full_like(depth, self.zoom)
        col = torch.floor((u * scale + 1.0) * (size / 2.0))
        row = torch.floor((1.0 - v * scale) * (size / 2.0))
        valid &= (col >= 0) & (col < size) & (row >= 0) & (row < size)
        n_maps = batch * self.n_views
        offset = torch.arange(n_maps, device=pts.device).view(batch, self.n_views, 1) * (size * size)
        flat = offset + row.long().clamp(0, size - 1) * size + col.long().clamp(0, size - 1)
        flat = torch.where(valid, flat, torch.full_like(flat, n_maps * size * size))  # out of frame -> spill cell
        zbuf = torch.full((n_maps * size * size + 1,), math.inf, device=pts.device)
        zbuf.scatter_reduce_(0, flat.reshape(-1), depth.reshape(-1), reduce="amin", include_self=True)
        maps = zbuf[:-1].view(n_maps, 1, size, size)
        if densify and self.dilation > 1:
            maps = -F.max_pool2d(-maps, self.dilation, stride=1, padding=self.dilation // 2)
        return maps.view(batch, self.n_views, size, size)

    def depth_to_grey(self, depth: torch.Tensor) -> torch.Tensor:
        """Depth maps (any shape, ``+inf`` = empty) -> uint8 grey values of the same shape (module doc, step 5)."""
        c = self.camera_distance
        d = depth.clamp(-1.0, 1.0)
        value = (d + c) / (c + 1.0) if self.depth_mapping == "pointclip" else (c - d) / (c + 1.0)
        grey = torch.where(torch.isfinite(depth), (value * 255.0).round(), torch.zeros_like(value))
        if self.invert:
            grey = 255.0 - grey
        return grey.to(torch.uint8)

    @torch.no_grad()
    def render(self, points: torch.Tensor) -> torch.Tensor:
        """Clouds ``(B, P, 3)`` -> uint8 depth images ``(B, V, S, S, 3)`` (grey replicated to 3 channels)."""
        grey = self.depth_to_grey(self.depth_maps(points))
        return grey.unsqueeze(-1).expand(*grey.shape, 3)

    # -- encoding ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def view_embeddings(self, points: torch.Tensor) -> torch.Tensor:
        """Per-view teacher embeddings ``(B, V, D)`` float32 (each L2-normalised), on the teacher's output device."""
        images = self.render(points)
        batch, n_views, size = images.shape[0], images.shape[1], images.shape[2]
        flat = images.reshape(batch * n_views, size, size, 3).cpu().numpy()
        feats = self.teacher.encode_images(flat, batch_size=self.image_batch_size, progress=False)
        return feats.float().reshape(batch, n_views, -1)

    @torch.no_grad()
    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Points ``(B, P, 3)`` -> ``(B, D)`` float32 L2-normalised embeddings on ``points.device``."""
        feats = self.view_embeddings(points)
        pooled = torch.einsum("bvd,v->bd", feats, self.view_weights.to(feats.device))
        pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return pooled.to(points.device)


def create_pointclip(teacher: Any, **cfg: Any) -> PointCLIPEncoder:
    """Factory for Hydra (``configs/baseline/pointclip.yaml``): ``instantiate(cfg.baseline, teacher)``.

    ``cfg`` holds the keyword arguments of :class:`PointCLIPEncoder`; ``null`` values take the defaults, lists
    (e.g. OmegaConf ``ListConfig`` view weights) are converted to plain Python."""
    known = {
        "n_views", "view_angles", "view_weights", "image_size", "projection", "zoom", "camera_distance",
        "depth_mapping", "invert", "dilation", "image_batch_size",
    }
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"baseline: unknown PointCLIP options {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in cfg.items():
        if value is None:
            continue
        if key == "view_angles":
            value = [tuple(float(x) for x in angle) for angle in value]
        elif key == "view_weights":
            value = [float(x) for x in value]
        kwargs[key] = value
    return PointCLIPEncoder(teacher, **kwargs)


class _PromptOverride:
    """A feature store seen through other class-prompt embeddings (every other attribute is the store's)."""

    def __init__(self, base: Any, prompt_emb: np.ndarray, template: str) -> None:
        self._base = base
        self.prompt_emb = prompt_emb
        self.prompt_template = template

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def with_prompt_template(features: Any, teacher: Any, categories: Sequence[str],
                         template: str = POINTCLIP_TEMPLATE) -> Any:
    """``features`` with ``prompt_emb`` ``(C, D)`` float32 re-encoded from ``template`` (e.g. PointCLIP's own
    ``"point cloud depth map of a {}."``; underscores in class names become spaces, as PointCLIP does)."""
    if "{}" not in template:
        raise ConfigError(f"prompt template {template!r} has no '{{}}' placeholder for the category name")
    texts = [template.format(str(c).replace("_", " ")) for c in categories]
    prompt_emb = teacher.encode_texts(texts, progress=False).float().numpy()
    return _PromptOverride(features, prompt_emb, template)


__all__ = [
    "DEFAULT_VIEW_ANGLES",
    "EXTRA_VIEW_ANGLES",
    "POINTCLIP_TEMPLATE",
    "VIEW_NAMES",
    "PointCLIPEncoder",
    "create_pointclip",
    "view_bases",
    "with_prompt_template",
]
