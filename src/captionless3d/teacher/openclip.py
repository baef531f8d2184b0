"""Frozen OpenCLIP teachers: built-in models with a pretrained tag, local checkpoints, and custom JSON architectures.

``create_teacher`` is the one entry point; all three ways of naming weights end in the same OpenCLIP call
(``open_clip.create_model_and_transforms``), so a checkpoint trained by :mod:`captionless3d.teacher.synthetic` loads
exactly the way a downloaded OpenCLIP checkpoint does:

>>> create_teacher("ViT-B-32", pretrained="laion2b_s34b_b79k")           # the paper's teacher (needs the weights)
>>> create_teacher("ViT-B-32", pretrained="/ckpts/open_clip_pytorch_model.bin")   # a local file
>>> create_teacher("synthetic-clip-tiny", checkpoint="teacher/open_clip_model.pt",
...                model_config="teacher/synthetic-clip-tiny.json")       # a custom architecture
>>> create_teacher("ViT-B-32")                                            # random init (tests, smoke runs)

Image preprocessing
-------------------
OpenCLIP's evaluation transform for these models is: ``Resize(size)`` of the shortest side with bicubic
interpolation (antialiased) -> ``CenterCrop(size)`` -> ``ToTensor`` (``/255``) -> ``Normalize(mean, std)``.
For PIL inputs we call that transform itself. For uint8 arrays ``(B, H, W, 3)`` we run the same steps as batched
torch ops on the whole batch instead of one PIL round-trip per image:

- ``H == W == image_size`` (the common case: renders made at the teacher's resolution): PIL's resize is the
  identity there, so ``x / 255`` then ``(x - mean) / std`` is *exactly* the OpenCLIP result;
- otherwise ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on the shortest side (sizes computed
  as torchvision does), clamped and rounded back to the uint8 grid as PIL does, then the torchvision centre crop.
  This matches PIL's bicubic to within about one grey level (a documented, tested tolerance), not bit-exactly.
  The ``"squash"`` resize mode resizes both sides directly; ``"longest"`` falls back to the PIL transform.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.errors import CheckpointError, ConfigError, DataError
from captionless3d.teacher.base import batch_slices, l2_normalise
from captionless3d.utils.manifest import file_sha256, stable_hash

log = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz", ".npy")
_REGISTRY_DIR: Path | None = None
_REGISTERED: dict[str, str] = {}  # model name -> config hash registered by this process


# ----------------------------------------------------------------------------------------------------------------
# custom model configs
# ----------------------------------------------------------------------------------------------------------------
def load_model_config(model_config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read an OpenCLIP model config (a JSON file path or a dict) and check it has the three required keys."""
    if isinstance(model_config, Mapping):
        cfg = json.loads(json.dumps(dict(model_config)))
        where = "model_config (dict)"
    else:
        path = Path(model_config)
        if not path.is_file():
            raise ConfigError(f"model_config: the OpenCLIP model config file {path} does not exist")
        try:
            cfg = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"model_config: cannot read {path} as JSON ({exc})") from exc
        where = f"model_config {path}"
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: an OpenCLIP model config must be a JSON object")
    if "model_cfg" in cfg and isinstance(cfg["model_cfg"], dict):  # open_clip_config.json layout (HF hub style)
        cfg = cfg["model_cfg"]
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ConfigError(f"{where}: missing required OpenCLIP config keys {missing} "
                          "(need embed_dim, vision_cfg, text_cfg)")
    return cfg


def register_model_config(model_name: str, model_config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Register a custom architecture under ``model_name`` with ``open_clip.add_model_config``.

    OpenCLIP names a config by its file stem, so the config is written to ``<private dir>/<hash>/<model_name>.json``
    and that file is added; registering the same name again with another config makes the newer one win. A name
    that is already a built-in OpenCLIP architecture with a different config is refused (it would silently change
    what ``"ViT-B-32"`` means).
    """
    import open_clip

    global _REGISTRY_DIR
    if not model_name or any(c in model_name for c in "/\\:") or model_name.startswith("."):
        raise ConfigError(f"model_name: {model_name!r} cannot name a custom config (no '/', '\\', ':' or leading '.')")
    cfg = load_model_config(model_config)
    cfg_hash = stable_hash(cfg)
    if _REGISTERED.get(model_name) == cfg_hash:
        return cfg
    if model_name not in _REGISTERED and model_name in open_clip.list_models():
        existing = open_clip.get_model_config(model_name)
        if stable_hash(existing) != cfg_hash:
            raise ConfigError(
                f"model_config: {model_name!r} is already an OpenCLIP architecture with a different config; "
                "give the custom architecture its own model_name"
            )
    if _REGISTRY_DIR is None:
        _REGISTRY_DIR = Path(tempfile.mkdtemp(prefix="captionless3d-openclip-configs-"))
    path = _REGISTRY_DIR / cfg_hash / f"{model_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True), "utf-8")
    open_clip.add_model_config(path)
    _REGISTERED[model_name] = cfg_hash
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# factory
# ----------------------------------------------------------------------------------------------------------------
def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\", os.sep)) or value.lower().endswith(_CHECKPOINT_SUFFIXES)


def create_teacher(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    model_config: str | os.PathLike | Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    *,
    seed: int | None = 0,
) -> OpenCLIPTeacher:
    """Build a frozen OpenCLIP teacher.

    Args:
        model_name: an OpenCLIP architecture (``open_clip.list_models()``), or the name of the custom architecture
            given by ``model_config``.
        pretrained: an OpenCLIP pretrained tag (``open_clip.list_pretrained_tags_by_model(model_name)``) or a path to
            a local checkpoint file.
        checkpoint: a path to a local checkpoint file (same as a path in ``pretrained``; give one of the two).
        model_config: a JSON file (or dict) with an OpenCLIP model config; registered under ``model_name``.
        device, precision: passed to OpenCLIP (``"fp32"``, ``"fp16"``, ``"bf16"``, ``"amp"``, ...).
        seed: seeds the random initialisation when no weights are given (so random teachers are reproducible).

    Raises:
        ConfigError: unknown model name / pretrained tag, bad model config, both ``pretrained`` and ``checkpoint``.
        CheckpointError: the checkpoint file is missing or does not fit the architecture, or the pretrained weights
            cannot be downloaded (e.g. offline).
    """
    import open_clip

    if model_config is not None:
        register_model_config(model_name, model_config)
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and open_clip.get_model_config(model_name.replace("/", "-")) is None:
        raise ConfigError(
            f"model_name: unknown OpenCLIP architecture {model_name!r}. Built-in names are listed by "
            "`python -c 'import open_clip; print(open_clip.list_models())'` (e.g. 'ViT-B-32'); for a custom "
            "architecture pass model_config=<path to its JSON config>"
        )

    if pretrained is not None and checkpoint is not None:
        raise ConfigError("pretrained/checkpoint: give either a pretrained tag or a checkpoint path, not both")
    ckpt_path: Path | None = None
    tag: str | None = None
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
    elif pretrained is not None:
        p = str(pretrained)
        known = open_clip.list_pretrained_tags_by_model(model_name) if not has_schema else []
        if p in known:
            tag = p
        elif isinstance(pretrained, os.PathLike) or _looks_like_path(p) or Path(p).is_file():
            ckpt_path = Path(p)
        else:
            raise ConfigError(
                f"pretrained: {p!r} is neither a pretrained tag of {model_name!r} (known tags: {known or 'none'}) nor "
                "a path to a checkpoint file"
            )
    if ckpt_path is not None and not ckpt_path.is_file():
        raise CheckpointError(f"teacher checkpoint {ckpt_path} does not exist (model {model_name!r})")

    if ckpt_path is not None:
        teacher_id = f"openclip:{model_name}:sha256:{file_sha256(ckpt_path)[:12]}"
        weights: str | None = str(ckpt_path)
    elif tag is not None:
        teacher_id = f"openclip:{model_name}:{tag}"
        weights = tag
    else:
        cfg_hash = stable_hash(open_clip.get_model_config(model_name)) if not has_schema else "hub"
        teacher_id = f"openclip:{model_name}:random-init:cfg{cfg_hash[:8]}:seed{seed}"
        weights = None

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights, device=device, precision=precision
            )
        except RuntimeError as exc:
            if tag is not None and ("download" in str(exc).lower() or "hub" in str(exc).lower()):
                offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
                raise CheckpointError(
                    f"the pretrained weights {model_name}/{tag} are not available "
                    f"{'offline (HF_HUB_OFFLINE is set)' if offline else 'here (download failed)'}: {exc}. "
                    "Download them on a machine with internet access (they are cached under ~/.cache/huggingface) "
                    f"or pass a local file: create_teacher({model_name!r}, "
                    "checkpoint='/path/open_clip_pytorch_model.bin')"
                ) from exc
            if ckpt_path is not None:
                raise CheckpointError(f"teacher checkpoint {ckpt_path} does not fit {model_name!r}: {exc}") from exc
            raise
        except Exception as exc:  # noqa: BLE001 - state-dict / unpickling errors from torch
            if ckpt_path is not None:
                raise CheckpointError(
                    f"teacher checkpoint {ckpt_path} could not be loaded into {model_name!r}: {type(exc).__name__}: "
                    f"{exc}"
                ) from exc
            raise
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenCLIPTeacher(
        model, tokenizer, preprocess, teacher_id=teacher_id, device=device, precision=precision, model_name=model_name
    )


# ----------------------------------------------------------------------------------------------------------------
# the teacher
# ----------------------------------------------------------------------------------------------------------------
class OpenCLIPTeacher:
    """A frozen OpenCLIP model behind the :class:`~captionless3d.teacher.base.Teacher` interface."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        pil_preprocess: Any,
        *,
        teacher_id: str,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        model_name: str = "",
    ) -> None:
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        self.pil_preprocess = pil_preprocess
        self.id = teacher_id
        self.model_name = model_name
        self.device = torch.device(device)
        self.precision = precision
        cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = cfg.get("size", getattr(model.visual, "image_size", 224))
        size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        if size[0] != size[1]:
            raise ConfigError(f"model_config: only square teacher inputs are supported, got image size {size}")
        self.image_size = int(size[0])
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.interpolation = str(cfg.get("interpolation", "bicubic"))
        self.resize_mode = str(cfg.get("resize_mode", "shortest"))
        self.dim = int(_embed_dim(model))
        self.preprocess_id = (
            f"resize={self.resize_mode}:{self.interpolation}:{self.image_size}|centercrop={self.image_size}"
            f"|mean={','.join(f'{v:.6g}' for v in self.mean)}|std={','.join(f'{v:.6g}' for v in self.std)}"
        )
        self._param_dtype = next(self.model.parameters()).dtype
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0

    def __repr__(self) -> str:
        return f"OpenCLIPTeacher(id={self.id!r}, dim={self.dim}, image_size={self.image_size})"

    # -- images --------------------------------------------------------------------------------------------------
    def preprocess_uint8(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` -> normalised float ``(B, 3, S, S)`` on the teacher's device (see module doc)."""
        if isinstance(batch, np.ndarray) and not batch.flags.writeable:  # read-only memmaps (torch warns)
            batch = np.array(batch)
        x = torch.as_tensor(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            if self.resize_mode == "squash":
                new_hw = (s, s)
            else:  # "shortest", as torchvision.transforms.Resize(int)
                short, long = (h, w) if h <= w else (w, h)
                new_short, new_long = s, int(s * long / short)
                new_hw = (new_short, new_long) if h <= w else (new_long, new_short)
            mode = self.interpolation if self.interpolation in ("bicubic", "bilinear", "nearest") else "bicubic"
            kwargs = {"antialias": True, "align_corners": False} if mode != "nearest" else {}
            x = torch.nn.functional.interpolate(x, size=new_hw, mode=mode, **kwargs)
            x = x.clamp_(0.0, 255.0).round_()  # PIL resizes on the uint8 grid
            top = int(round((new_hw[0] - s) / 2.0))
            left = int(round((new_hw[1] - s) / 2.0))
            x = x[:, :, top : top + s, left : left + s]
        return (x - self._mean_t) / self._std_t

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            feats = self.model.encode_image(pixels.to(self._param_dtype))
        return l2_normalise(feats).cpu()

    @torch.no_grad()
    def encode_images(
        self, images: np.ndarray | Sequence, *, batch_size: int = 256, progress: bool | None = None
    ) -> torch.Tensor:
        """Embed images: uint8 array ``(B, H, W, 3)`` (batched torch preprocessing) or a list of PIL images."""
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise DataError(
                    f"encode_images expects a uint8 array (B, H, W, 3), got {images.dtype} {tuple(images.shape)}"
                )
            if self.resize_mode not in ("shortest", "squash") and images.shape[1:3] != (self.image_size,) * 2:
                from PIL import Image

                images = [Image.fromarray(im) for im in images]
            else:
                out = [
                    self._encode_pixels(self.preprocess_uint8(images[sl]))
                    for sl in batch_slices(len(images), batch_size, progress=progress, desc="encode images")
                ]
                return torch.cat(out) if out else torch.zeros(0, self.dim)
        images = list(images)
        out = []
        for sl in batch_slices(len(images), batch_size, progress=progress, desc="encode images"):
            pixels = torch.stack([self.pil_preprocess(im) for im in images[sl]]).to(self.device)
            out.append(self._encode_pixels(pixels))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    # -- texts ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256,
                     progress: bool | None = None) -> torch.Tensor:
        """Embed texts with the model's own OpenCLIP tokenizer (truncated to its context length)."""
        if isinstance(texts, str):
            raise DataError("encode_texts expects a list of strings, got a single string")
        texts = [str(t) for t in texts]
        out = []
        for sl in batch_slices(len(texts), batch_size, progress=progress, desc="encode texts"):
            tokens = self.tokenizer(texts[sl]).to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            out.append(l2_normalise(feats).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def _autocast(self):
        if self.precision.startswith("amp"):
            dtype = torch.bfloat16 if "bf16" in self.precision or self.device.type == "cpu" else torch.float16
            return torch.autocast(device_type=self.device.type, dtype=dtype)
        return _nullcontext()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _embed_dim(model: torch.nn.Module) -> int:
    visual = model.visual
    out = getattr(visual, "output_dim", None)
    if out:
        return int(out)
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    with torch.no_grad():  # last resort: one dummy forward
        size = getattr(visual, "image_size", (224, 224))
        size = size if isinstance(size, (tuple, list)) else (size, size)
        dev = next(model.parameters()).device
        return int(model.encode_image(torch.zeros(1, 3, *size, device=dev)).shape[-1])


__all__ = ["OpenCLIPTeacher", "create_teacher", "load_model_config", "register_model_config"]
