"""Registry of point-encoder presets and ``build_point_encoder``.

One registry for every backbone kind: a name maps to a builder (the backbone's class) and a preset (its keyword
arguments); :func:`build_backbone` returns the bare backbone, :func:`build_point_encoder` backbone + head. The
PointNeXt presets are below; ``pointnet2_ssg[_small]`` (:mod:`~captionless3d.models.pointnet2`), ``pointbert``,
``pointbert_ulip2``, ``pointbert_small`` (:mod:`~captionless3d.models.pointbert`) and
``openshape_pointbert_b32[_small]``, ``openshape_pointbert_g14`` (:mod:`~captionless3d.models.ppat`) register themselves
in their modules (docs/backbones.md).

PointNeXt presets (OpenPoints configs; parameter counts exact, checked against ``openpoints==0.1.2``'s own constructor):

============  =============================  ==================  ===========  ==============  ============  ============
name          blocks / strides               SA / radius          encoder      + head [512,    + 256->512    total
                                                                  (in_ch 3)    256] (no out)   (bias)        (embed 512)
============  =============================  ==================  ===========  ==============  ============  ============
pointnext_s   [1,1,1,1,1,1] / [1,2,2,2,2,1]  2 layers, res;       968,480      1,363,232       131,584       1,494,816
                                             0.15 x1.5/stage
pointnext_b   [1,2,3,2,2] / [1,4,4,4,4]      1 layer; 0.1 x2      3,476,224    3,870,976       131,584       4,002,560
pointnext_l   [1,3,5,3,3] / [1,4,4,4,4]      1 layer; 0.1 x2      6,773,440    7,168,192       131,584       7,299,776
pointnext_xl  [1,4,7,4,4] / [1,4,4,4,4],     1 layer; 0.1 x2      40,174,848   40,831,744      131,584       40,963,328
              width 64                       (out 1024)                        (1024->512->256)
============  =============================  ==================  ===========  ==============  ============  ============

``in_channels=4`` adds ``width`` parameters (the stem conv), e.g. PointNeXt-S 968,512. PointNeXt-S with the ModelNet40
``ClsHead`` (40 classes) is 1,373,512 = OpenPoints' "1.374 M"; ULIP's header says 1.367 M for its modified head.
``pointnext_b/l/xl`` use the encoder settings of OpenPoints' ``pointnext-{b,l,xl}.yaml`` (S3DIS; there is no
classification config for them; ``radius_scaling`` is OpenPoints' default 2); their last stage keeps several points,
which :class:`PointNextEncoder` max-pools into the global feature.

``ops_backend`` (:func:`apply_ops_backend`): ``torch`` (default, pure PyTorch), ``cuda`` (compiled FPS / ball-query
kernels of the ``pointnext`` package or OpenPoints, for CUDA tensors; :class:`ConfigError` naming the package when
they are not importable), ``triton`` (run-time compiled Triton FPS / ball-query / kNN kernels for CUDA tensors,
nothing to build), ``auto`` (``triton`` when a GPU is visible and the kernels work there, else ``torch``; opt-in until
a GPU measurement shows it faster), ``compile`` (``torch.compile`` of the per-point MLPs and the head, in place, so
parameter names do not change; FPS, ball query and the fused grouped layers stay eager). ``pretrained`` loads a
checkpoint through :func:`captionless3d.models.released.load_pretrained` (PointNeXt: ULIP / OpenPoints / captionless3d
layouts of :mod:`~captionless3d.models.weights`; the other kinds: ULIP-1/2, OpenShape, Point-BERT, captionless3d).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from captionless3d.errors import ConfigError

from .heads import PointEncoder, ProjectionHead
from .pointnext import PointNextEncoder

__all__ = [
    "OPS_BACKENDS",
    "apply_ops_backend",
    "register_encoder",
    "list_encoders",
    "encoder_config",
    "create_encoder",
    "build_backbone",
    "backbone_class",
    "build_point_encoder",
]

#: name -> (builder, preset): ``builder(**preset(), **overrides)`` builds the bare backbone.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], Callable[[], dict[str, Any]]]] = {}


def register_encoder(name: str | None = None, *, builder: Callable[..., nn.Module] = PointNextEncoder) -> Callable:
    """Decorator (timm style): register a preset, a function returning the keyword arguments of ``builder``.

    ``builder`` is the backbone's class (one per kind: :class:`PointNextEncoder` by default, ``PointNet2SSG``,
    ``PointBERT``, ``PointPatchTransformer``); every backbone keeps the contract of
    :mod:`captionless3d.models.backbone` (``forward(xyz, features=None) -> (B, out_channels)``)."""

    def deco(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ConfigError(f"model name {key!r} is already registered")
        _REGISTRY[key] = (builder, fn)
        return fn

    return deco


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[Callable[..., nn.Module], Callable[[], dict[str, Any]]]:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown point encoder {name!r}; known: {', '.join(list_encoders())}")
    return _REGISTRY[name]


def backbone_class(name: str) -> Callable[..., nn.Module]:
    """The class (builder) a registered name builds."""
    return _entry(name)[0]


def encoder_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The preset's kwargs with ``overrides`` applied (unknown name, or a key the builder does not take ->
    :class:`ConfigError` naming the valid ones)."""
    builder, preset = _entry(name)
    cfg = dict(preset())
    valid = set(inspect.signature(builder).parameters) - {"self"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(
            f"model: unknown {builder.__name__} option(s) {unknown} for {name!r}; valid: {', '.join(sorted(valid))}"
        )
    cfg.update(overrides)
    return cfg


def build_backbone(name: str = "pointnext_s", **overrides: Any) -> nn.Module:
    """The bare backbone registered as ``name`` (no head): ``forward(xyz (B, N, 3), features=None) -> (B,
    out_channels)``, with ``overrides`` applied to the preset."""
    return backbone_class(name)(**encoder_config(name, **overrides))


#: The earlier name of :func:`build_backbone`.
create_encoder = build_backbone


def build_point_encoder(
    name: str = "pointnext_s",
    embed_dim: int = 512,
    head_mlps: Sequence[int] = (512, 256),
    in_channels: int | None = None,
    head_dropout: float = 0.5,
    ops_backend: str = "torch",
    pretrained: str | None = None,
    pretrained_head: str = "all",
    head_projection: bool = True,
    **overrides: Any,
) -> PointEncoder:
    """Backbone ``name`` (any registered kind) + :class:`ProjectionHead` (``head_mlps`` then ``Linear ->
    embed_dim``; ``head_projection=False`` leaves the final Linear out, for backbones that already end in the
    teacher's space, e.g. OpenShape's B32 release).

    ``in_channels``: per-point input channels (``None``: the preset's). ``overrides`` go to the backbone (e.g.
    ``constant_rgb`` for OpenShape). ``pretrained``: checkpoint path, key layout detected (PointNeXt: ULIP /
    OpenPoints / captionless3d; the other backbones: ULIP-1/2, OpenShape, Point-BERT, captionless3d; see
    :mod:`captionless3d.models.released`), loaded strictly with ``head=pretrained_head`` (``all`` / ``hidden`` /
    ``none``). ``ops_backend``: see :func:`apply_ops_backend`.
    """
    if ops_backend not in OPS_BACKENDS:
        raise ConfigError(f"model.ops_backend must be one of {', '.join(OPS_BACKENDS)}; got {ops_backend!r}")
    if in_channels is not None:
        overrides["in_channels"] = in_channels
    encoder = build_backbone(name, **overrides)
    head = ProjectionHead(encoder.out_channels, mlps=head_mlps, out_dim=embed_dim, dropout=head_dropout,
                          projection=head_projection)
    model = PointEncoder(encoder, head)
    if pretrained:
        from .released import load_pretrained

        load_pretrained(model, pretrained, head=pretrained_head)
    return apply_ops_backend(model, ops_backend)


OPS_BACKENDS = ("torch", "cuda", "compile", "triton", "auto")


def apply_ops_backend(model: nn.Module, backend: str = "torch") -> nn.Module:
    """Switch ``model`` (a :class:`PointEncoder` or :class:`PointNextEncoder`) to an operator backend, in place.

    * ``torch``: nothing to do (pure PyTorch). CUDA kernels registered earlier stay registered (process-wide;
      :func:`~captionless3d.models.ops.disable_cuda_ops` turns them off); their results are the same.
    * ``cuda``: :func:`~captionless3d.models.ops.enable_cuda_ops` (process-wide: FPS / ball query on CUDA tensors use
      the compiled kernels); :class:`ConfigError` naming the missing package, or when there is no CUDA device.
    * ``triton``: :func:`~captionless3d.models.ops.enable_triton_ops` (process-wide: FPS, ball query and kNN on CUDA
      tensors use :mod:`~captionless3d.models.triton_ops`); :class:`ConfigError` when Triton does not import, there
      is no CUDA device, or the kernels fail their self-check on it.
    * ``auto``: :func:`~captionless3d.models.ops.enable_auto_ops`: ``triton`` where that would succeed, otherwise the
      PyTorch ops (with a warning when a GPU is visible but Triton is not usable). Not the default: no GPU
      measurement has shown Triton faster yet.
    * ``compile``: ``nn.Module.compile()`` on the per-point MLP blocks (stem conv, InvResMLP ``pwconv``, SA skip
      convs, the "group all" stage) and the head's MLP; state-dict names are unchanged.
    """
    from . import ops

    if backend not in OPS_BACKENDS:
        raise ConfigError(f"model.ops_backend must be one of {', '.join(OPS_BACKENDS)}; got {backend!r}")
    if backend == "cuda":
        ops.enable_cuda_ops()
    elif backend == "triton":
        ops.enable_triton_ops()
    elif backend == "auto":
        ops.enable_auto_ops()
    elif backend == "compile":
        if not hasattr(nn.Module, "compile"):
            raise ConfigError(f"model.ops_backend='compile' needs torch >= 2.2 (nn.Module.compile); "
                              f"this is torch {torch.__version__}")
        for mod in _pointwise_modules(model):
            mod.compile()
    return model


def _pointwise_modules(model: nn.Module) -> list[nn.Module]:
    from .pointnext import InvResMLP, SetAbstraction

    out: list[nn.Module] = []
    for mod in model.modules():
        if isinstance(mod, SetAbstraction):
            if mod.is_head or mod.all_aggr:
                out.append(mod.convs)
            elif mod.use_res and not isinstance(mod.skipconv, nn.Identity):
                out.append(mod.skipconv)
        elif isinstance(mod, InvResMLP):
            out.append(mod.pwconv)
        elif isinstance(mod, ProjectionHead):
            out.append(mod.head)
    return out


# --------------------------------------------------------------------------------------------------- presets
_COMMON = dict(nsample=32, expansion=4, normalize_dp=True, aggr="max")


@register_encoder()
def pointnext_s() -> dict[str, Any]:
    """ULIP / No-Captions ``pointnext-s.yaml`` (= OpenPoints ModelNet40 PointNeXt-S)."""
    return dict(_COMMON, width=32, blocks=(1, 1, 1, 1, 1, 1), strides=(1, 2, 2, 2, 2, 1), radius=0.15,
                radius_scaling=1.5, sa_layers=2, sa_use_res=True)


@register_encoder()
def pointnext_b() -> dict[str, Any]:
    """OpenPoints ``pointnext-b.yaml`` encoder."""
    return dict(_COMMON, width=32, blocks=(1, 2, 3, 2, 2), strides=(1, 4, 4, 4, 4), radius=0.1, radius_scaling=2.0,
                sa_layers=1, sa_use_res=False)


@register_encoder()
def pointnext_l() -> dict[str, Any]:
    """OpenPoints ``pointnext-l.yaml`` encoder."""
    return dict(_COMMON, width=32, blocks=(1, 3, 5, 3, 3), strides=(1, 4, 4, 4, 4), radius=0.1, radius_scaling=2.0,
                sa_layers=1, sa_use_res=False)


@register_encoder()
def pointnext_xl() -> dict[str, Any]:
    """OpenPoints ``pointnext-xl.yaml`` encoder."""
    return dict(_COMMON, width=64, blocks=(1, 4, 7, 4, 4), strides=(1, 4, 4, 4, 4), radius=0.1, radius_scaling=2.0,
                sa_layers=1, sa_use_res=False)
