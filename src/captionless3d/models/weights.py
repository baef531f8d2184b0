"""Import PointNeXt weights from OpenPoints and ULIP checkpoints (and our own) by mapping ``state_dict`` keys.

Our :class:`~captionless3d.models.PointNextEncoder` has OpenPoints' module tree, so only the *prefixes* differ between
checkpoint families. Supported key layouts (``layout=``; ``"auto"`` detects them, after stripping DDP's ``module.``
and ``torch.compile``'s ``_orig_mod.``):

==================  =====================================================  ===========================================
layout              backbone / head keys in the file                       file format
==================  =====================================================  ===========================================
``ulip``            ``point_encoder.encoder.encoder.{stage}.{block}.*``    ULIP ``main.py``: ``{"state_dict": ...,
                    ``point_encoder.prediction.head.{i}.{j}.*``            "args": Namespace, "optimizer": ...}``,
                    ``pc_projection`` (C, D), ``x @ P``, no bias           keys prefixed ``module.``; text/image
                                                                           towers are ignored
``openpoints``      ``encoder.encoder.{stage}...`` (``BaseCls``)           OpenPoints ``save_checkpoint``:
                    ``prediction.head.{i}.{j}.*`` (``ClsHead``)            ``{"model": ..., "optimizer", "epoch"}``
``encoder``         ``encoder.{stage}.{block}.*`` (a bare                  a plain ``state_dict``
                    ``PointNextEncoder``, OpenPoints' or ours)
``captionless3d``   ``[R]encoder.encoder.*`` + ``[R]head.head.*``          ``PointEncoder.state_dict()`` or a
                    (``R`` = ``""`` or e.g. ``"encoder."``)                Lightning checkpoint of the training module
==================  =====================================================  ===========================================

Heads are mapped by *position*, not by index: a source hidden block ``Linear -> BN -> ReLU`` is any ``head.{i}`` with
a ``.1`` (norm) child, the final linear is a ``head.{i}`` with only ``.0``; dropout layers hold no weights, so a head
built with or without dropout loads either way. ULIP's ``pc_projection`` ``P`` becomes the final ``Linear`` with
``weight = P.T`` and ``bias = 0`` (exactly ``x @ P``). ULIP's PointNeXt-S uses ``in_channels=4`` (xyz + height along
y): build the model with ``in_channels=4`` (:func:`checkpoint_in_channels` reads it from the file).

Anything wrong raises :class:`~captionless3d.errors.CheckpointError` listing the missing keys (model keys nothing
maps to), the unexpected keys (keys under the checkpoint's point-encoder prefixes that map to nothing) and shape
mismatches; keys outside the point encoder (ULIP's CLIP towers, a classifier left out with ``head="hidden"``, a
Lightning module's loss parameters) are reported as ``ignored``, never silently loaded.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from captionless3d.errors import CheckpointError

from .heads import PointEncoder, ProjectionHead
from .pointnext import PointNextEncoder

__all__ = [
    "LAYOUTS",
    "LoadReport",
    "read_checkpoint",
    "extract_state_dict",
    "detect_layout",
    "convert_state_dict",
    "checkpoint_in_channels",
    "load_pretrained",
    "strip_wrappers",
]

LAYOUTS = ("auto", "ulip", "openpoints", "encoder", "captionless3d")
HEAD_MODES = ("all", "hidden", "none")

#: Container keys a state dict may sit under (OpenPoints' ``load_checkpoint`` list, ULIP's and Lightning's).
_CONTAINER_KEYS = ("state_dict", "model", "net", "network", "base_model", "module")
_STAGE = re.compile(r"^encoder\.\d+\.\d+\.")
_HEAD = re.compile(r"^head\.(\d+)\.(\d+)\.(.+)$")
_SHOWN = 12  # keys listed per category in an error message


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. Keys are the *model's* names for ``loaded``/``projection``, the file's
    (after ``module.`` stripping) for ``ignored``."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    source: str = ""

    def __str__(self) -> str:
        return (f"loaded {len(self.loaded)} tensors from {self.source or 'state_dict'} (layout {self.layout}); "
                f"ignored {len(self.ignored)} checkpoint keys outside the point encoder")


@dataclass
class _Layout:
    name: str
    backbone: str  # prefix of the encoder's own keys ("encoder.{stage}...")
    head: str | None = None  # prefix of "head.{i}.{j}.*"
    projection: str | None = None  # ULIP's pc_projection key
    subtree: tuple[str, ...] = ()  # prefixes whose unmapped keys are *unexpected* (else ignored)


# ------------------------------------------------------------------------------------------------ reading files
def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> dict[str, Tensor]:
    """Load a checkpoint file and return its flat ``state_dict`` (see :func:`extract_state_dict`).

    Loads with ``torch.load(weights_only=True)`` (tensors, containers, numbers and ``argparse.Namespace``, which ULIP
    stores under ``"args"``). ``trusted=True`` allows full unpickling for files whose origin you trust and that hold
    other Python objects (an OpenPoints ``EasyConfig``, say).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        if trusted:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, zipfile errors ...
        hint = ("" if trusted else " If the file is trusted and holds other Python objects, pass trusted=True "
                "(full unpickling).")
        raise CheckpointError(f"cannot read checkpoint {path!r}: {type(exc).__name__}: "
                              f"{str(exc)[:400]}.{hint}") from exc
    return extract_state_dict(obj, source=path)


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` inside ``obj``: ``obj`` itself or the mapping under ``state_dict`` / ``model`` /
    ``net`` / ``network`` / ``base_model`` / ``module`` (nested containers are followed)."""
    seen = 0
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj) and seen < 4:
        inner = next((obj[k] for k in _CONTAINER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj, seen = inner, seen + 1
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state_dict found (top-level type {type(obj).__name__})")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:_SHOWN]))
        raise CheckpointError(f"{source}: no tensors found; top-level keys: {keys}")
    return tensors


def _is_tensor_dict(obj: Mapping) -> bool:
    values = list(obj.values())
    return bool(values) and sum(isinstance(v, Tensor) for v in values) >= max(1, len(values) // 2)


def strip_wrappers(key: str) -> str:
    """A ``state_dict`` key without the prefixes of its training wrappers: DDP / DataParallel's ``module.`` (repeated)
    and ``torch.compile``'s ``_orig_mod.``."""
    key = key.replace("_orig_mod.", "")
    while key.startswith("module."):
        key = key[len("module."):]
    return key


_strip = strip_wrappers


# ------------------------------------------------------------------------------------------------ layouts
def _resolve_layout(keys: list[str], layout: str, source: str) -> _Layout:
    if layout not in LAYOUTS:
        raise CheckpointError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    ulip = _Layout("ulip", "point_encoder.encoder.", "point_encoder.prediction.", "pc_projection",
                   ("point_encoder.", "pc_projection"))
    openpoints = _Layout("openpoints", "encoder.", "prediction.", None, ("encoder.", "prediction."))
    bare = _Layout("encoder", "", None, None, ("",))
    if layout == "ulip":
        return ulip
    if layout == "openpoints":
        return openpoints
    if layout == "encoder":
        return bare
    root = next((k.split("head.head.", 1)[0] for k in keys if "head.head." in k), None)
    if layout == "captionless3d":
        root = root or ""
        return _Layout("captionless3d", root + "encoder.", root + "head.", None, (root + "encoder.", root + "head."))
    # auto
    if any(k == "pc_projection" or k.startswith("point_encoder.") for k in keys):
        return ulip
    if any(k.startswith("prediction.") for k in keys):
        return openpoints
    if root is not None and any(k.startswith(root + "encoder.encoder.") for k in keys):
        return _Layout("captionless3d", root + "encoder.", root + "head.", None, (root + "encoder.", root + "head."))
    if keys and all(_STAGE.match(k) for k in keys):
        return bare
    if any(k.startswith("encoder.") and _STAGE.match(k[len("encoder."):]) for k in keys):
        return _Layout("openpoints", "encoder.", None, None, ("encoder.",))  # BaseCls / PointEncoder without a head
    shown = ", ".join(keys[:_SHOWN])
    raise CheckpointError(
        f"{source}: unrecognised checkpoint layout (no PointNeXt keys like 'encoder.0.0.convs.0.0.weight' under any "
        f"known prefix); first keys: {shown}"
    )


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """Name of the key layout of ``state_dict`` (``ulip``, ``openpoints``, ``encoder`` or ``captionless3d``)."""
    keys = [_strip(k) for k in state_dict]
    return _resolve_layout(keys, "auto", "state_dict").name


def checkpoint_in_channels(state_dict: Mapping[str, Tensor], layout: str = "auto") -> int:
    """Input channels of the checkpoint's stem convolution (3 = xyz, 4 = ULIP's xyz + height)."""
    sd = {_strip(k): v for k, v in state_dict.items()}
    lay = _resolve_layout(list(sd), layout, "state_dict")
    key = lay.backbone + "encoder.0.0.convs.0.0.weight"
    if key not in sd:
        raise CheckpointError(f"checkpoint has no stem convolution {key!r}")
    return int(sd[key].shape[1])


# ------------------------------------------------------------------------------------------------ mapping
def _head_blocks(keys: dict[str, Tensor], prefix: str) -> tuple[list[dict[str, Tensor]], dict[str, Tensor] | None,
                                                                  list[str]]:
    """Split ``prefix + head.{i}.{j}.{p}`` keys into hidden blocks (ordered by i), the final linear and leftovers."""
    by_index: dict[int, dict[str, Tensor]] = {}
    leftovers = []
    for k, v in keys.items():
        m = _HEAD.match(k[len(prefix):])
        if m is None:
            leftovers.append(k)
            continue
        by_index.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = v
    hidden, final = [], None
    for i in sorted(by_index):
        block = by_index[i]
        if any(k.startswith("1.") for k in block):
            hidden.append({**block, "_src": f"{prefix}head.{i}."})  # type: ignore[dict-item]
        elif final is None and i == max(by_index):
            final = {**block, "_src": f"{prefix}head.{i}."}  # type: ignore[dict-item]
        else:
            leftovers.extend(f"{prefix}head.{i}.{p}" for p in block)
    return hidden, final, leftovers


# ------------------------------------------------------------------- the conversion core (models.released uses it too)
def split_model(model: nn.Module) -> tuple[nn.Module, ProjectionHead | None, str]:
    """A load target's backbone, its :class:`ProjectionHead` (``None`` for a bare backbone) and the backbone's key
    prefix in ``model.state_dict()`` (``"encoder."`` or ``""``)."""
    if isinstance(model, PointEncoder):
        return model.encoder, model.head, "encoder."
    if isinstance(getattr(model, "out_channels", None), int) and not isinstance(model, ProjectionHead):
        return model, None, ""
    raise CheckpointError(f"load target must be a PointEncoder or a point backbone, got {type(model).__name__}")


def head_prefixes(head: ProjectionHead) -> tuple[list[str], str | None]:
    """Key prefixes, relative to the :class:`ProjectionHead`, of its hidden blocks (``Linear -> BN -> ReLU``) and of
    its final ``Linear`` (``None``: no final projection)."""
    hidden, final = [], None
    for i, mod in enumerate(head.head):
        if isinstance(mod, nn.Sequential) and len(mod) == 3:
            hidden.append(f"head.{i}.")
        elif isinstance(mod, nn.Sequential) and len(mod) == 1:
            final = f"head.{i}."
    return hidden, final


class KeyMap:
    """A ``state_dict`` conversion in progress: model key -> tensor (``mapped``) and the file key it came from
    (``origin``), the file keys consumed (``used``) and those deliberately left out (``ignored``)."""

    def __init__(self, sd: dict[str, Tensor]) -> None:
        self.sd = sd
        self.mapped: dict[str, Tensor] = {}
        self.origin: dict[str, str] = {}
        self.used: set[str] = set()
        self.ignored: list[str] = []

    def put(self, name: str, value: Tensor, src: str) -> None:
        self.mapped[name], self.origin[name] = value, src

    def compare(self, target: Mapping[str, Tensor], subtree: tuple[str, ...], skip: tuple[str, ...]
                ) -> tuple[list[str], list[str], list[tuple[str, str, tuple, tuple]]]:
        """``(missing, unexpected, mismatched)`` against the model's ``target`` state dict. File keys nothing used
        are *unexpected* under the ``subtree`` prefixes, else ignored; model keys under ``skip`` may stay missing."""
        unexpected = []
        for k in self.sd:
            if k in self.used:
                continue
            if k.startswith(subtree):
                unexpected.append(k)
            else:
                self.ignored.append(k)
        missing = [k for k in target if k not in self.mapped and not k.startswith(skip)]
        unexpected += [self.origin[k] for k in self.mapped if k not in target]
        mismatched = [(k, self.origin[k], tuple(self.mapped[k].shape), tuple(target[k].shape))
                      for k in self.mapped if k in target and self.mapped[k].shape != target[k].shape]
        return missing, unexpected, mismatched

    def result(self, target: Mapping[str, Tensor], layout: str, source: str) -> tuple[dict[str, Tensor], LoadReport]:
        """The mapped tensors in the model's dtypes, and the report."""
        out = {k: v.detach().to(dtype=target[k].dtype) for k, v in self.mapped.items()}
        return out, LoadReport(layout, sorted(out), sorted(self.ignored), source)


def show_keys(items: Any) -> str:
    """At most ``_SHOWN`` items, comma-separated, with the count of the rest."""
    items = list(items)
    more = f" ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def mismatch_lines(header: str, missing: list[str], unexpected: list[str], mismatched: list[tuple]) -> list[str]:
    """The first lines of a mismatch error: ``header``, then the missing / unexpected keys and shape mismatches."""
    parts = [header]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {show_keys(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {show_keys(unexpected)}")
    if mismatched:
        parts.append(f"shape mismatches ({len(mismatched)}): "
                     + show_keys(f"{k} <- {o}: checkpoint {s} vs model {t}" for k, o, s, t in mismatched))
    return parts


def convert_state_dict(
    state_dict: Mapping[str, Tensor],
    model: nn.Module,
    *,
    layout: str = "auto",
    head: str = "all",
    source: str = "state_dict",
) -> tuple[dict[str, Tensor], LoadReport]:
    """Map ``state_dict`` (any supported layout) onto ``model``'s key names and check it completely.

    ``model`` is a :class:`PointEncoder` (backbone + head) or a bare :class:`PointNextEncoder`. ``head``: ``"all"``
    loads the hidden head layers and the final projection (ULIP's ``pc_projection`` or a ``ClsHead`` final linear),
    ``"hidden"`` keeps the model's own final projection (e.g. a 40-class ModelNet classifier or a different embedding
    size), ``"none"`` loads the backbone only. Returns the mapped dict (model names, model dtypes) and a report;
    raises :class:`CheckpointError` listing missing / unexpected keys and shape mismatches.
    """
    if head not in HEAD_MODES:
        raise CheckpointError(f"head must be one of {', '.join(HEAD_MODES)}; got {head!r}")
    backbone, proj_head, enc_prefix = split_model(model)
    if not isinstance(backbone, PointNextEncoder):
        raise CheckpointError(f"load target must be a PointNextEncoder, bare or in a PointEncoder; got a "
                              f"{type(backbone).__name__} (other backbones: captionless3d.models.released)")
    sd: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        sd[_strip(str(k))] = v
    lay = _resolve_layout(list(sd), layout, source)
    km = KeyMap(sd)

    # backbone: <backbone>encoder.{stage}... -> <enc_prefix>encoder.{stage}...
    for k, v in sd.items():
        if k.startswith(lay.backbone) and _STAGE.match(k[len(lay.backbone):]):
            km.put(enc_prefix + k[len(lay.backbone):], v, k)
            km.used.add(k)

    # head
    want_hidden = proj_head is not None and head in ("all", "hidden")
    want_final = proj_head is not None and head == "all"
    tgt_hidden, final = head_prefixes(proj_head) if proj_head is not None else ([], None)
    tgt_hidden = ["head." + p for p in tgt_hidden]
    tgt_final = "head." + final if final is not None else ""
    if lay.head is not None:
        head_keys = {k: v for k, v in sd.items() if k.startswith(lay.head) and k not in km.used}
        src_hidden, src_final, _ = _head_blocks(head_keys, lay.head)
        if want_hidden:
            for j, block in enumerate(src_hidden):
                src = block.pop("_src")
                if j >= len(tgt_hidden):
                    continue  # stays unused -> unexpected
                for p, v in block.items():
                    km.put(tgt_hidden[j] + p, v, src + p)
                    km.used.add(src + p)
        else:
            for block in src_hidden:
                src = block.pop("_src")
                km.ignored.extend(src + p for p in block)
                km.used.update(src + p for p in block)
        if src_final is not None:
            src = src_final.pop("_src")
            if want_final:
                for p, v in src_final.items():
                    km.put(tgt_final + p, v, src + p)
                    km.used.add(src + p)
            else:
                km.ignored.extend(src + p for p in src_final)
                km.used.update(src + p for p in src_final)
    if lay.projection is not None and lay.projection in sd:
        P = sd[lay.projection]
        km.used.add(lay.projection)
        if want_final and P.dim() == 2:
            km.put(tgt_final + "0.weight", P.t(), lay.projection)
            km.put(tgt_final + "0.bias", torch.zeros(P.shape[1], dtype=P.dtype), f"{lay.projection} (no bias: zeros)")
        elif want_final:
            km.used.discard(lay.projection)  # wrong rank -> unexpected
        else:
            km.ignored.append(lay.projection)

    # what is left: unexpected inside the point-encoder subtree, ignored outside
    target = model.state_dict()
    skip: tuple[str, ...] = ()
    if proj_head is not None and head != "all":
        skip = ("head.",) if head == "none" else (tgt_final,)
    missing, unexpected, mismatched = km.compare(target, lay.subtree, skip)
    if not any(k in target for k in km.mapped):
        shown = ", ".join(list(sd)[:_SHOWN])
        raise CheckpointError(f"{source}: no PointNeXt weights found for this model (layout {lay.name}); "
                              f"first keys: {shown}")
    if missing or unexpected or mismatched:
        raise CheckpointError(_mismatch_message(source, lay.name, missing, unexpected, mismatched, enc_prefix))
    return km.result(target, lay.name, source)


def _mismatch_message(source, layout, missing, unexpected, mismatched, enc_prefix) -> str:
    parts = mismatch_lines(f"{source} (layout {layout}) does not match the model:", missing, unexpected, mismatched)
    if mismatched:
        stem = enc_prefix + "encoder.0.0.convs.0.0.weight"
        for k, _, s, t in mismatched:
            if k == stem and len(s) > 1:
                parts.append(f"the checkpoint was trained with in_channels={s[1]}"
                             + (" (ULIP: xyz + height)" if s[1] == 4 else "")
                             + f", the model has in_channels={t[1]}: build it with in_channels={s[1]}")
            elif k.startswith("head.") and k.endswith("0.weight") and len(s) == 2 and s[1] == t[1] and s[0] != t[0]:
                parts.append(f"the checkpoint's final projection has {s[0]} outputs, the model {t[0]}: pass "
                             f"head='hidden' to keep the model's own projection")
    if missing and not unexpected and not mismatched:
        if all(k.startswith("head.") for k in missing):
            parts.append("the checkpoint has no (complete) head: pass head='none' (backbone only) or head='hidden' "
                         "(keep the model's final projection)")
        else:
            parts.append("(truncated checkpoint, or a model with more blocks than the checkpoint)")
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
    """Load a ULIP / OpenPoints / captionless3d checkpoint (file path or already loaded dict) into ``model``.

    Strict: every model key must be covered (except the head parts ``head`` leaves out) and every key under the
    checkpoint's point-encoder prefixes must be used, with equal shapes; otherwise :class:`CheckpointError`.
    """
    return load_converted(convert_state_dict, model, checkpoint, layout=layout, head=head, trusted=trusted)


def load_converted(
    convert: Callable[..., tuple[dict[str, Tensor], LoadReport]],
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    layout: str,
    head: str,
    trusted: bool,
) -> LoadReport:
    """Read ``checkpoint`` (a file, or an already loaded dict), map it with ``convert`` (a ``convert_state_dict``
    of this module or of :mod:`~captionless3d.models.released`) and load the result into ``model``."""
    if isinstance(checkpoint, Mapping):
        source = "state_dict"
        sd = extract_state_dict(checkpoint, source=source)
    else:
        source = os.fspath(checkpoint)
        sd = read_checkpoint(source, trusted=trusted)
    mapped, report = convert(sd, model, layout=layout, head=head, source=source)
    result = model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; keep the guarantee explicit
        raise CheckpointError(f"{source}: unexpected keys after mapping: {result.unexpected_keys[:_SHOWN]}")
    return report
