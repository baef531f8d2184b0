"""Import released weights into PointNet++, Point-BERT and OpenShape's PointPatchTransformer (and our own files).

The backbones of :mod:`~captionless3d.models.pointnet2`, :mod:`~captionless3d.models.pointbert` and
:mod:`~captionless3d.models.ppat` keep the original module trees, so a released ``state_dict`` maps onto them by
*prefix*. Supported key layouts (``layout=``; ``"auto"`` detects them, after stripping DDP's ``module.`` and
``torch.compile``'s ``_orig_mod.``; the ``state_dict`` may sit under ``state_dict`` / ``model`` / ``base_model`` /
... containers):

=================  ======================================================  =============================================
layout             keys in the file                                        where they come from
=================  ======================================================  =============================================
``ulip``           ``point_encoder.<backbone>``, ``pc_projection (F, D)``  ULIP-1 / ULIP-2 ``main.py`` checkpoints
                                                                           (``{"state_dict": ..., "args": ...}``); the
                                                                           image / text towers, ``logit_scale``,
                                                                           ``open_clip_model.*`` are ignored
``openshape``      ``ppat.<backbone>`` + ``proj.*``                        OpenShape's trainer (``{"state_dict":
                                                                           ...}``) and the ViT-bigG-14 release
                   ``pc_encoder.<backbone>``                               the ViT-B/32 release (no projection)
                   ``pc_encoder.ppat.*`` + ``pc_encoder.proj.*``           the ViT-L/14 release
``pointbert``      ``transformer_q.<backbone>``                            Point-BERT pre-training (``{"base_model":
                                                                           ...}``); ``lm_head``, ``cls_head``,
                                                                           ``mask_token``, ``transformer_k.*``,
                                                                           ``dvae.*`` are ignored
                   ``base_model.<backbone>`` or bare keys                  Point-BERT fine-tuned;
                                                                           ``cls_head_finetune`` ignored
``captionless3d``  ``[R]encoder.<backbone>`` + ``[R]head.head.*``          ``PointEncoder.state_dict()`` / our
                                                                           Lightning checkpoints (``R = "encoder."``)
``backbone``       ``<backbone>`` at the top level                         a bare backbone's ``state_dict``
=================  ======================================================  =============================================

The projection into the teacher's space goes to the :class:`~captionless3d.models.heads.ProjectionHead`'s final
``Linear``: ULIP's ``pc_projection`` ``P (F, D)`` (used as ``x @ P``) becomes ``weight = P.T``, ``bias = 0``;
OpenShape's ``proj`` goes to the backbone's own ``proj`` where it has one (``openshape_pointbert_g14``), else to the
head's final ``Linear`` unchanged. Released models have no hidden head layers: build them with ``head_mlps=[]``.

Strict, like :mod:`~captionless3d.models.weights`: every model key must be covered (except the head parts
``head=`` leaves out), every key under the file's point-encoder prefixes must be used, shapes must be equal;
otherwise :class:`~captionless3d.errors.CheckpointError` lists each missing / unexpected key and each mismatch as
``model key <- file key: checkpoint shape vs model shape``, with a diagnosis of the known traps (the ULIP-2
Point-BERT file of salesforce/ULIP#60, 3 vs 6 input channels, another depth or release). What was verified here is
shapes and key mapping, not numerics against the original code (no released file can be fetched in this project).

:func:`load_pretrained` is the entry point for every backbone: PointNeXt models are mapped by
:func:`captionless3d.models.weights.convert_state_dict` (its layouts), the others by :func:`convert_state_dict`; file
reading, the strict checks, the error's key lists and the report are :mod:`~captionless3d.models.weights`' for both.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captionless3d.errors import CheckpointError

from .pointnext import PointNextEncoder
from .weights import (
    HEAD_MODES,
    KeyMap,
    LoadReport,
    head_prefixes,
    load_converted,
    mismatch_lines,
    split_model,
    strip_wrappers,
)
from .weights import convert_state_dict as convert_pointnext

__all__ = ["LAYOUTS", "detect_layout", "embedding_width", "convert_state_dict", "load_pretrained"]

LAYOUTS = ("auto", "ulip", "openshape", "pointbert", "captionless3d", "backbone")
_SHOWN = 12

#: Point-BERT / fine-tuning heads that live next to the encoder in released files and are not part of it.
_EXTRA_HEADS = ("lm_head.", "cls_head.", "cls_head_finetune.", "mask_token")
_BLOCK = re.compile(r"^(blocks\.blocks|transformer\.layers)\.(\d+)\.")


@dataclass
class _Layout:
    name: str
    backbone: list[tuple[str, str]]  # (file prefix, backbone prefix)
    projection: str | None = None  # ULIP: key of pc_projection; OpenShape: prefix of proj.* (when not in backbone)
    head: str | None = None  # captionless3d: file prefix of the ProjectionHead ("[R]head.")
    subtree: tuple[str, ...] = ()  # file prefixes whose unmapped keys are *unexpected* (else ignored)


# ------------------------------------------------------------------------------------------------ layouts
def _resolve(keys: list[str], layout: str, source: str) -> _Layout:
    if layout not in LAYOUTS:
        raise CheckpointError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    root = next((k.split("head.head.", 1)[0] for k in keys if "head.head." in k), None)
    if layout == "auto":
        if "pc_projection" in keys or has("point_encoder."):
            layout = "ulip"
        elif has("ppat.") or has("pc_encoder."):
            layout = "openshape"
        elif has("transformer_q.") or has("base_model."):
            layout = "pointbert"
        elif root is not None and has(root + "encoder."):
            layout = "captionless3d"
        elif keys:
            layout = "backbone"
    if layout == "ulip":
        return _Layout("ulip", [("point_encoder.", "")], projection="pc_projection",
                       subtree=("point_encoder.", "pc_projection"))
    if layout == "openshape":
        if has("pc_encoder.ppat."):
            return _Layout("openshape", [("pc_encoder.ppat.", ""), ("pc_encoder.proj.", "proj.")],
                           projection="pc_encoder.proj.", subtree=("pc_encoder.",))
        if has("pc_encoder."):
            return _Layout("openshape", [("pc_encoder.", "")], subtree=("pc_encoder.",))
        return _Layout("openshape", [("ppat.", ""), ("proj.", "proj.")], projection="proj.", subtree=("ppat.", "proj."))
    if layout == "pointbert":
        if has("transformer_q."):
            return _Layout("pointbert", [("transformer_q.", "")], subtree=("transformer_q.",))
        if has("base_model."):
            return _Layout("pointbert", [("base_model.", "")], subtree=("base_model.",))
        return _Layout("pointbert", [("", "")], subtree=("",))
    if layout == "captionless3d":
        root = root or ""
        return _Layout("captionless3d", [(root + "encoder.", "")], head=root + "head.",
                       subtree=(root + "encoder.", root + "head."))
    if layout == "backbone":
        return _Layout("backbone", [("", "")], subtree=("",))
    raise CheckpointError(f"{source}: empty state_dict")


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """Name of the key layout of ``state_dict`` (module doc); ``backbone`` when no known prefix is present."""
    return _resolve([strip_wrappers(str(k)) for k in state_dict], "auto", "state_dict").name


def embedding_width(state_dict: Mapping[str, Tensor], layout: str = "auto") -> int | None:
    """Width of the space the file's point encoder embeds into, read from the file alone: ULIP's ``pc_projection``
    ``(F, D)`` -> D; OpenShape's ``proj`` -> its outputs, else (no projection: the B32 release) the cls token's
    width; our own head's final ``Linear``. ``None`` when the file does not tell (a bare backbone)."""
    sd = {strip_wrappers(str(k)): v for k, v in state_dict.items()}
    lay = _resolve(list(sd), layout, "state_dict")
    if lay.name == "ulip" and "pc_projection" in sd and sd["pc_projection"].dim() == 2:
        return int(sd["pc_projection"].shape[1])
    if lay.name == "openshape":
        for key in ("proj.weight", "pc_encoder.proj.weight"):
            if key in sd:
                return int(sd[key].shape[0])
        for key in ("pc_encoder.cls_token", "ppat.cls_token"):
            if key in sd:
                return int(sd[key].shape[-1])
    if lay.name == "captionless3d" and lay.head is not None:
        # the head's final Linear is the last "head.{i}.0.weight" without a BatchNorm ("head.{i}.1.*") next to it
        pre = lay.head + "head."
        finals = [int(m.group(1)) for k in sd if (m := re.fullmatch(re.escape(pre) + r"(\d+)\.0\.weight", k))
                  and f"{pre}{m.group(1)}.1.weight" not in sd]
        if finals:
            return int(sd[f"{pre}{max(finals)}.0.weight"].shape[0])
    return None


# ------------------------------------------------------------------------------------------------ mapping
def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    *,
    layout: str = "auto",
    head: str = "all",
    source: str = "state_dict",
) -> tuple[dict[str, Tensor], LoadReport]:
    """Map ``state_dict`` (a layout of the module doc) onto ``model``'s key names and check it completely.

    ``model``: a :class:`PointEncoder` with a PointNet++ / Point-BERT / PointPatchTransformer backbone, or the bare
    backbone. ``head``: ``"all"`` (also the projection: ULIP's ``pc_projection``, OpenShape's ``proj``, our head),
    ``"hidden"`` (our head's hidden layers, not its final Linear), ``"none"`` (backbone only). Returns the mapped
    dict (model names and dtypes) and a report; raises :class:`CheckpointError` (module doc).
    """
    if head not in HEAD_MODES:
        raise CheckpointError(f"head must be one of {', '.join(HEAD_MODES)}; got {head!r}")
    backbone, proj_head, enc = split_model(model)
    if isinstance(backbone, PointNextEncoder):
        raise CheckpointError("PointNeXt weights go through captionless3d.models.weights (load_pretrained dispatches)")
    sd = {strip_wrappers(str(k)): v for k, v in state_dict.items()}
    lay = _resolve(list(sd), layout, source)
    target = model.state_dict()
    hidden_t, final_t = head_prefixes(proj_head) if proj_head is not None else ([], None)
    backbone_keys = set(backbone.state_dict())
    km = KeyMap(sd)

    for k, v in sd.items():
        for src, dst in lay.backbone:
            if not k.startswith(src):
                continue
            rest = k[len(src):]
            if rest.startswith(_EXTRA_HEADS):
                km.ignored.append(k)
                km.used.add(k)
            elif dst == "proj." and "proj.weight" not in backbone_keys:
                break  # the release's proj without one in the backbone: the head's final Linear (below)
            else:
                km.put(enc + dst + rest, v, k)
                km.used.add(k)
            break

    # the projection into the teacher's space
    if lay.name == "ulip" and lay.projection in sd:
        P = sd[lay.projection]
        km.used.add(lay.projection)
        if head == "all":
            if final_t is None or P.dim() != 2:
                km.used.discard(lay.projection)  # nowhere to go -> unexpected (with a hint below)
            else:
                km.put(f"head.{final_t}0.weight", P.t(), f"{lay.projection}.T")  # x @ P = Linear(weight=P.T)
                km.put(f"head.{final_t}0.bias", torch.zeros(P.shape[1], dtype=P.dtype),
                       f"{lay.projection} (no bias: zeros)")
        else:
            km.ignored.append(lay.projection)
    if lay.name == "openshape" and lay.projection is not None and "proj.weight" not in backbone_keys:
        for part in ("weight", "bias"):
            key = lay.projection + part
            if key not in sd:
                continue
            km.used.add(key)
            if head != "all":
                km.ignored.append(key)
            elif final_t is not None:
                km.put(f"head.{final_t}0.{part}", sd[key], key)
            else:
                km.used.discard(key)
    if lay.head is not None and proj_head is not None:
        keep = {"all": (*hidden_t, final_t), "hidden": tuple(hidden_t), "none": ()}[head]
        for k, v in sd.items():
            if k.startswith(lay.head) and k not in km.used:
                rest = k[len(lay.head):]
                km.used.add(k)
                if any(p is not None and rest.startswith(p) for p in keep):
                    km.put("head." + rest, v, k)
                else:
                    km.ignored.append(k)

    skip: tuple[str, ...] = ()
    if proj_head is not None and head != "all":
        skip = ("head.",) if head == "none" else (f"head.{final_t}",) if final_t else ()
    missing, unexpected, mismatched = km.compare(target, lay.subtree, skip)
    if not any(k in target and k.startswith(enc) and not k.startswith("head.") for k in km.mapped):
        raise CheckpointError(f"{source}: no weights of this {type(backbone).__name__} found (layout {lay.name}); "
                              f"first keys: {', '.join(list(sd)[:_SHOWN])}")
    if missing or unexpected or mismatched:
        raise CheckpointError(_message(source, lay, backbone, proj_head, enc, sd, missing, unexpected, mismatched))
    return km.result(target, lay.name, source)


def _count_blocks(keys: Any) -> int:
    found = {int(m.group(2)) for k in keys if (m := _BLOCK.match(k))}
    return max(found) + 1 if found else 0


def _message(source, lay, backbone, proj_head, enc, sd, missing, unexpected, mismatched) -> str:
    kind = type(backbone).__name__
    parts = mismatch_lines(f"{source} (layout {lay.name}) does not match the model ({kind}):", missing, unexpected,
                           mismatched)
    shapes = {k: (s, t) for k, _, s, t in mismatched}
    hints = []

    # Point-BERT: 3 vs 6 input channels, 512 vs 1280 projection (salesforce/ULIP#60)
    stem = shapes.get(enc + "encoder.first_conv.0.weight")
    final = next(((s, t) for k, (s, t) in shapes.items()
                  if k.startswith("head.") and k.endswith("0.weight") and s[0] != t[0]), None)
    if kind == "PointBERT" and lay.name == "ulip" and (stem or final):
        file_in = stem[0][1] if stem else backbone.in_channels
        file_d = final[0][0] if final else None
        parts.append(
            "ULIP#60 (salesforce/ULIP issue 60): ULIP's Point-BERT files differ in input channels and projection. "
            f"This file's Point-BERT takes {file_in} input channels ({'xyz' if file_in == 3 else 'xyz + rgb'})"
            + (f" and its pc_projection maps 768 -> {file_d}" if file_d else "") + "; "
            "ULIP-1 PointBERT (and the file released as 'pointbert_ULIP-2.pt') is xyz with 768 x 512 (512-d space); "
            "ULIP-2's colored PointBERT (PointTransformer_Colored, ULIP2_WITH_OPENCLIP) is xyz + rgb with 768 x 1280 "
            f"(OpenCLIP ViT-bigG-14). Build the model to match the file: in_channels={file_in}"
            + (f" and a {file_d}-d teacher" if file_d else "")
            + (" (model=pointbert, ULIP-1's 12 layers)" if file_in == 3 else " (model=pointbert_ulip2, 18 layers)"))
    elif stem:
        hints.append(f"the checkpoint's first convolution takes {stem[0][1]} input channels, the model "
                     f"{stem[1][1]}: build it with in_channels={stem[0][1]}")
    for key in (enc + "sa1.mlp_convs.0.weight", enc + "sa.mlp_convs.0.weight"):
        if key in shapes:
            s, t = shapes[key]
            extra = 3 if key.endswith("sa.mlp_convs.0.weight") else 0  # PPAT's SA sees [dp, xyz, rgb]
            hints.append(f"the checkpoint's first set abstraction takes {s[1]} channels, the model {t[1]}: build it "
                         f"with in_channels={s[1] - extra}")
    if final and not (kind == "PointBERT" and lay.name == "ulip"):
        hints.append(f"the checkpoint projects to {final[0][0]}-d, the model to {final[1][0]}-d (the teacher's "
                     "size): the release was trained against another teacher")
    if kind == "PointPatchTransformer" and enc + "sa.mlp_convs.2.weight" in shapes:
        s, t = shapes[enc + "sa.mlp_convs.2.weight"]
        hints.append(f"set-abstraction width {s[0]} in the file vs {t[0]} in the model: another OpenShape release "
                     "(B32 / L14: 128, G14: 256); pick the matching preset")
    file_blocks = _count_blocks([k[len(src):] for k in sd for src, _ in lay.backbone if k.startswith(src)])
    model_blocks = _count_blocks(backbone.state_dict())
    if file_blocks and model_blocks and file_blocks != model_blocks:
        hints.append(f"the checkpoint has {file_blocks} transformer layers, the model {model_blocks} "
                     "(ULIP-1 Point-BERT 12, ULIP-2 18; set depth)")
    head_missing = [k for k in missing if k.startswith("head.")]
    if head_missing and len(head_missing) == len(missing) and not unexpected and not mismatched:
        hints.append("the checkpoint has no weights for this model's head (e.g. OpenShape's B32 release has no "
                     "projection: it ends in its 512-d space): build with head_projection=False and head_mlps=[] "
                     "(a teacher of the backbone's width), or pass pretrained_head='none' to load the backbone only")
    if (lay.name != "captionless3d" and proj_head is not None and head_missing and head_prefixes(proj_head)[0]):
        hints.append("released models have no hidden head layers: build with head_mlps=[]")
    if any(o in ("pc_projection", "proj.weight", "pc_encoder.proj.weight") for o in unexpected):
        hints.append("the file's projection has nowhere to go: the model has no final projection "
                     "(head_projection=False); build with head_projection=True or pass pretrained_head='none'")
    parts.extend(hints)
    return "\n  ".join(parts)


# ------------------------------------------------------------------------------------------------ loading
def load_pretrained(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    layout: str = "auto",
    head: str = "all",
    trusted: bool = False,
) -> LoadReport:
    """Load a released / our own checkpoint (file path or loaded dict) into ``model`` (any backbone, bare or in a
    :class:`PointEncoder`). PointNeXt models go through :func:`captionless3d.models.weights.convert_state_dict` (its
    layouts); the others through :func:`convert_state_dict`. Strict (module doc)."""
    backbone, _, _ = split_model(model)
    convert = convert_pointnext if isinstance(backbone, PointNextEncoder) else convert_state_dict
    return load_converted(convert, model, checkpoint, layout=layout, head=head, trusted=trusted)
