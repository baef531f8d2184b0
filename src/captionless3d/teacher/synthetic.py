"""The project's own small CLIP teacher, trained contrastively on the synthetic world's (image, caption) pairs.

A real OpenCLIP ViT-B/32 cannot be downloaded here and runs at ~10 images/s on this CPU, so the synthetic world
brings its own teacher: an ordinary OpenCLIP ``CLIP`` with a tiny JSON config (``synthetic-clip-tiny``), trained
from scratch with the standard CLIP objective (symmetric InfoNCE, learnable logit scale, ``open_clip.loss.ClipLoss``).
It is saved as an ordinary OpenCLIP checkpoint (``{"state_dict": ...}``) plus its model config JSON, and loaded back
with exactly the call a downloaded checkpoint uses::

    create_teacher("synthetic-clip-tiny", checkpoint=d / CHECKPOINT_NAME, model_config=d / "synthetic-clip-tiny.json")

Training data: the caller passes, for each teacher-split object, K images (renders and "photos" concatenated along
K) and its captions. Each step draws a batch of objects and, per object, one random image and one random caption
(so an epoch is one pass over the *objects*). Light batched augmentation: random resized crop (scale 0.6-1, mild
aspect jitter), horizontal flip, brightness/contrast jitter (no hue change: captions name colours). Caption
augmentation: word dropout (half the time a caption keeps a random half of its words, in order) so that short,
partial descriptions such as a bare category name land near the full captions, and a generic prefix ("a photo of
...", "a 3d render of ...", "a point cloud model of ...") so the text tower also understands prompt templates. No
label-derived text is added: zero-shot prompts are never trained on directly.

Photos: a web-trained CLIP has seen photos of everything; this one has only ~1k objects. So each step also draws a
second image of every object from the *other* domain (a render for a photo, a photo for a render; photos include
the same photos with their background masked to black, the "w/o background" query domain), both images get the
caption loss, and an image-image InfoNCE between the pair (weight ``cross_domain_weight``, as SLIP adds
self-supervision to CLIP) teaches the photo/render invariance: without it the teacher classifies photos barely above
chance and cannot retrieve objects from photos (the measurements: docs/method.md, Measured tuning notes).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import ConfigError, DataError
from captionless3d.teacher.openclip import OpenCLIPTeacher, create_teacher, load_model_config, register_model_config
from captionless3d.utils.atomic import atomic_write_json, atomic_write_with
from captionless3d.utils.cache import load_or_build
from captionless3d.utils.manifest import load_manifest, stable_hash, write_manifest
from captionless3d.utils.threads import torch_threads

log = logging.getLogger(__name__)

MODEL_NAME = "synthetic-clip-tiny"
CHECKPOINT_NAME = "open_clip_pytorch_model.bin"
MANIFEST_KIND = "synthetic_teacher"
MANIFEST_VERSION = 1

#: The default architecture: an ordinary ``open_clip.model.CLIP`` config whose image tower is OpenCLIP's
#: ``ModifiedResNet`` (the CLIP-RN design: 3-conv stem, one bottleneck per stage, attention pooling) at 64x64, and
#: a 3-layer text transformer with the real OpenCLIP BPE vocabulary. Convolutional, not a ViT: a convolutional prior
#: matters when training from scratch on ~1k objects for a few hundred steps (docs/method.md, Measured tuning notes).
SYNTHETIC_CLIP_TINY: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 24, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3, "mlp_ratio": 4.0},
}

#: Training defaults for the default synthetic world (960 teacher objects, 16 categories, 64x64; 76.8k images, about
#: 10 min with one thread on the 2-core CPU). Each value is the one that served both the render zero-shot accuracy
#: and the photo->object retrieval best among the settings measured (docs/method.md, Measured tuning notes).
DEFAULT_TRAIN: dict[str, Any] = {
    "epochs": 40,
    "batch_size": 32,
    "lr": 1e-3,
    "weight_decay": 0.1,
    "warmup_frac": 0.05,
    "augment": True,
    "prefix_prob": 0.5,
    "word_dropout": 0.5,
    "photo_share": None,
    # probability that a drawn *render* gets its white background replaced (half black, as the "w/o background"
    # masked photos; half a random colour gradient, as photos). Off by default: it cost render zero-shot accuracy far
    # more than it gained on masked photos (docs/method.md, Measured tuning notes).
    "background_swap": 0.0,
    # weight of an image-image InfoNCE term between two images of the same object from different domains (a render
    # and a photo), as SLIP adds self-supervision to CLIP; both images also get the caption loss. 0 = captions only.
    "cross_domain_weight": 0.25,
    # also train on each photo with its background masked to black (the "w/o background" query domain)
    "masked_photos": True,
}

CAPTION_PREFIXES = (
    "a photo of {}",
    "a 3d render of {}",
    "a picture of {}",
    "a point cloud model of {}",
    "an image of {}",
    "a 3d model of {}",
)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3) with antialiased bicubic, chunked to bound memory."""
    if images.shape[1:3] == (size, size):
        return images
    out = []
    for start in range(0, len(images), 1024):
        x = images[start : start + 1024].permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        out.append(x.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Batched random resized crop + flip + brightness/contrast on float images (B, 3, S, S) in [0, 1]."""
    b = x.shape[0]
    scale = torch.empty(b).uniform_(0.6, 1.0, generator=gen)  # crop area fraction
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)
    ratio = torch.exp(log_ratio)
    sx = torch.sqrt(scale * ratio).clamp(max=1.0)  # half-extent fraction of the crop along x
    sy = torch.sqrt(scale / ratio).clamp(max=1.0)
    tx = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b, generator=gen) * 2 - 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    bright = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * bright
    return x.clamp_(0.0, 1.0)


def _sample_caption(caps: Sequence[str], rng: np.random.Generator, prefix_prob: float, word_dropout: float) -> str:
    """One random caption of an object; with probability ``word_dropout`` keep a random half of its words (in
    order), so short, partial descriptions ("red chair", "chair wheels") map near the full ones; with probability
    ``prefix_prob`` wrap it in a generic prefix ("a photo of ...")."""
    caption = caps[int(rng.integers(len(caps)))]
    if word_dropout > 0 and rng.random() < word_dropout:
        words = caption.split()
        keep = rng.random(len(words)) < 0.5
        if not keep.any():
            keep[int(rng.integers(len(words)))] = True
        caption = " ".join(w for w, k in zip(words, keep) if k)
    if prefix_prob > 0 and rng.random() < prefix_prob:
        caption = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))].format(caption)
    return caption


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "embedding" in name or "bn" in name or "ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def subtype_phrase(subtype: str) -> str:
    """``"chair/office swivel"`` -> ``"office swivel chair"`` (a noun phrase for prompts)."""
    if "/" in subtype:
        cat, sub = subtype.split("/", 1)
        sub, cat = sub.strip(), cat.strip()
        return sub if cat.lower() in sub.lower() else f"{sub} {cat}"
    return subtype


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def zero_shot_accuracy(
    teacher: Any,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    *,
    template: str = "a photo of {}",
    image_emb: torch.Tensor | None = None,
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy in percent of nearest class prompt (``template`` filled with "a"/"an" + name)."""
    labels = np.asarray(labels)
    emb = image_emb if image_emb is not None else teacher.encode_images(images, batch_size=batch_size, progress=False)
    prompts = [template.format(_article(n)) for n in class_names]
    text = teacher.encode_texts(prompts, progress=False)
    pred = (emb @ text.T).argmax(dim=1).numpy()
    return float((pred == labels).mean() * 100.0)


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------
def _normalise_hparams(*, epochs, batch_size, lr, weight_decay, warmup_frac, augment, prefix_prob, word_dropout, seed,
                       max_steps, image_weights, background_swap=0.0, render_views=0, cross_domain_weight=0.0,
                       masked_photos=False) -> dict[str, Any]:
    """The canonical training hyper-parameters (what the manifest's ``config_hash`` is made of)."""
    if image_weights is not None:
        w = np.asarray(image_weights, dtype=np.float64)
        image_weights = [round(float(v), 6) for v in w / w.sum()]
    return dict(
        epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), weight_decay=float(weight_decay),
        warmup_frac=float(warmup_frac), augment=bool(augment), prefix_prob=float(prefix_prob),
        word_dropout=float(word_dropout), seed=int(seed), max_steps=None if max_steps is None else int(max_steps),
        image_weights=image_weights, background_swap=float(background_swap), render_views=int(render_views),
        cross_domain_weight=float(cross_domain_weight), masked_photos=bool(masked_photos),
    )


def _swap_white_background(x: torch.Tensor, swap: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Replace the near-white background of the images flagged in ``swap`` (B,) bool.

    ``x``: float (B, 3, S, S) in [0, 1]. Background = pixels with every channel >= 0.98 (renders are composited on
    white). Half of the flagged images get black (the masked-photo domain), half a random two-colour gradient.
    """
    if not bool(swap.any()):
        return x
    b, _, s, _ = x.shape
    background = (x >= 0.98).all(dim=1, keepdim=True) & swap.view(b, 1, 1, 1)
    ramp = torch.linspace(0, 1, s).view(1, 1, s, 1)
    c0, c1 = torch.rand(b, 3, 1, 1, generator=gen), torch.rand(b, 3, 1, 1, generator=gen)
    gradient = c0 + (c1 - c0) * ramp
    black = torch.rand(b, 1, 1, 1, generator=gen) < 0.5
    fill = torch.where(black, torch.zeros_like(gradient), gradient)
    return torch.where(background, fill, x)


def _other_domain(view: np.ndarray, render_views: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """For each drawn image index in ``view`` (B,), a random index of the other domain: a photo (index in
    ``[render_views, k)``) for a render, a render (``[0, render_views)``) for a photo."""
    photo = rng.integers(render_views, k, size=len(view))
    render = rng.integers(0, render_views, size=len(view))
    return np.where(view < render_views, photo, render)


def _manifest_key(data_fingerprint: str, model_name: str, cfg: Mapping[str, Any],
                  hparams: Mapping[str, Any]) -> dict[str, str]:
    return {
        "data_fingerprint": str(data_fingerprint),
        "config_hash": stable_hash({"model_name": model_name, "model_config": dict(cfg), "train": dict(hparams)}),
    }


def train_synthetic_teacher(
    images: np.ndarray,
    captions: Sequence[Sequence[str]],
    out_dir: str | os.PathLike,
    *,
    model_config: Mapping[str, Any] | str | os.PathLike | None = None,
    model_name: str = MODEL_NAME,
    epochs: int = DEFAULT_TRAIN["epochs"],
    batch_size: int = DEFAULT_TRAIN["batch_size"],
    lr: float = DEFAULT_TRAIN["lr"],
    weight_decay: float = DEFAULT_TRAIN["weight_decay"],
    warmup_frac: float = DEFAULT_TRAIN["warmup_frac"],
    augment: bool = DEFAULT_TRAIN["augment"],
    prefix_prob: float = DEFAULT_TRAIN["prefix_prob"],
    word_dropout: float = DEFAULT_TRAIN["word_dropout"],
    max_steps: int | None = None,
    seed: int = 0,
    data_fingerprint: str = "unknown",
    progress: bool = True,
    extra: Mapping[str, Any] | None = None,
    num_threads: int | None = None,
    image_weights: Sequence[float] | None = None,
    background_swap: float = 0.0,
    render_views: int = 0,
    cross_domain_weight: float = 0.0,
    masked_photos: bool = False,
) -> Path:
    """Train a small CLIP on (image, caption) pairs and save it as an OpenCLIP checkpoint in ``out_dir``.

    Args:
        images: uint8 ``(M, K, H, W, 3)``: K images of each of M objects (renders and photos concatenated).
        captions: M lists of captions (each non-empty).
        out_dir: where ``CHECKPOINT_NAME``, ``<model_name>.json`` and ``manifest.json`` (last) are written.
        model_config: an OpenCLIP CLIP config (dict or JSON path); default :data:`SYNTHETIC_CLIP_TINY`.
        data_fingerprint: identifies the data (goes into the manifest key with the config/hyper-parameter hash).
        max_steps: stop after this many optimizer steps (smoke tests); the schedule still spans ``epochs``.
        num_threads: torch threads while training (``None``: the cores not busy now, see ``auto_threads``).
        image_weights: K non-negative weights: how often each of an object's K images is drawn (default uniform);
            e.g. to draw photos more often than renders.
        background_swap, render_views: the first ``render_views`` of the K images are white-background renders;
            each drawn render has its background replaced with probability ``background_swap``.
        cross_domain_weight: weight of an image-image InfoNCE between each drawn image and a second image of the
            same object from the other domain (render <-> photo; needs ``0 < render_views < K``).
        masked_photos: recorded in the manifest key only (the caller already put masked photos among the K images).

    Returns:
        ``out_dir`` as a :class:`Path`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 5 or images.shape[-1] != 3:
        raise DataError(f"train_synthetic_teacher: images must be uint8 (M, K, H, W, 3), got {images.dtype} "
                        f"{images.shape}")
    m, k = images.shape[:2]
    if len(captions) != m:
        raise DataError(f"train_synthetic_teacher: {m} objects of images but {len(captions)} caption lists")
    empty = [i for i, c in enumerate(captions) if len(c) == 0]
    if empty:
        raise DataError(f"train_synthetic_teacher: objects {empty[:5]} have no captions")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    if not lr > 0:
        raise ConfigError(f"lr: must be > 0, got {lr}")
    if cross_domain_weight < 0:
        raise ConfigError(f"cross_domain_weight: must be >= 0, got {cross_domain_weight}")
    if cross_domain_weight > 0 and not 0 < render_views < k:
        raise ConfigError(f"cross_domain_weight: needs renders and photos among the {k} images per object, got "
                          f"render_views={render_views}")
    out_dir = Path(out_dir)
    if image_weights is not None:
        w = np.asarray(image_weights, dtype=np.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"image_weights: need {k} non-negative weights with a positive sum, got {image_weights}")
    cfg = load_model_config(model_config if model_config is not None else SYNTHETIC_CLIP_TINY)
    register_model_config(model_name, cfg)
    hparams = _normalise_hparams(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_frac=warmup_frac,
        augment=augment, prefix_prob=prefix_prob, word_dropout=word_dropout, seed=seed, max_steps=max_steps,
        image_weights=image_weights, background_swap=background_swap, render_views=render_views,
        cross_domain_weight=cross_domain_weight, masked_photos=masked_photos,
    )
    key = _manifest_key(data_fingerprint, model_name, cfg, hparams)

    with torch_threads(num_threads) as threads:
        return _train(images, cap_lists_in=captions, out_dir=out_dir, cfg=cfg, model_name=model_name, hparams=hparams,
                      key=key, progress=progress, extra={**dict(extra or {}), "torch_threads": threads})


def _train(images, *, cap_lists_in, out_dir, cfg, model_name, hparams, key, progress, extra) -> Path:
    import open_clip
    from open_clip.loss import ClipLoss

    m, k = images.shape[:2]
    epochs, batch_size, lr = hparams["epochs"], hparams["batch_size"], hparams["lr"]
    weight_decay, warmup_frac, augment = hparams["weight_decay"], hparams["warmup_frac"], hparams["augment"]
    prefix_prob, word_dropout, seed, max_steps = (
        hparams["prefix_prob"], hparams["word_dropout"], hparams["seed"], hparams["max_steps"])
    probs = (np.asarray(hparams["image_weights"]) / np.sum(hparams["image_weights"]) if hparams.get("image_weights")
             else None)
    cross_domain, render_views = hparams.get("cross_domain_weight", 0.0), hparams.get("render_views", 0)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    model.train()
    tokenizer = open_clip.get_tokenizer(model_name)
    size = int(cfg["vision_cfg"]["image_size"])
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    mean = torch.tensor(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)

    # --- images to one uint8 tensor (M, K, S, S, 3) once; captions are sampled and tokenised per step ------------
    flat = _resize_uint8(torch.from_numpy(np.ascontiguousarray(images.reshape(m * k, *images.shape[2:]))), size)
    flat = flat.view(m, k, size, size, 3)
    cap_lists = [[str(c) for c in caps] for caps in cap_lists_in]

    steps_per_epoch = max(1, math.ceil(m / batch_size))
    total_steps = steps_per_epoch * int(epochs)
    run_steps = total_steps if max_steps is None else min(total_steps, int(max_steps))
    warmup = max(1, int(warmup_frac * total_steps))
    # fused: one pass per step over all parameters instead of ~8 elementwise ops per tensor; the per-tensor loop was
    # 23 % of a teacher step on CPU (torch profiler), most of it the 6.3 M-entry token embedding (docs/first_run.md)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total_steps - warmup))),
    )
    loss_fn = ClipLoss()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=run_steps, desc="train synthetic teacher", unit="step")
    t0 = time.perf_counter()
    step, seen, last_loss = 0, 0, float("nan")
    while step < run_steps:
        for idx in np.array_split(rng.permutation(m), steps_per_epoch):
            if step >= run_steps:
                break
            if len(idx) < 2:
                continue
            view = rng.choice(k, size=len(idx), p=probs) if probs is not None else rng.integers(0, k, size=len(idx))
            text = tokenizer([_sample_caption(cap_lists[i], rng, prefix_prob, word_dropout) for i in idx])
            x = flat[torch.from_numpy(idx), torch.from_numpy(view)].permute(0, 3, 1, 2).float().div_(255.0)
            if hparams.get("background_swap", 0.0) > 0 and render_views > 0:
                is_render = torch.from_numpy(view < render_views)
                swap = is_render & (torch.rand(len(idx), generator=gen) < hparams["background_swap"])
                x = _swap_white_background(x, swap, gen)
            if cross_domain > 0:
                other = _other_domain(view, render_views, k, rng)
                other_views = flat[torch.from_numpy(idx), torch.from_numpy(other)]
                x = torch.cat([x, other_views.permute(0, 3, 1, 2).float().div_(255.0)])
            if augment:
                x = _augment(x, gen)
            x = (x - mean) / std
            img_f, txt_f, scale = model(x, text)
            if cross_domain > 0:
                first, second = img_f.chunk(2)
                loss = 0.5 * (loss_fn(first, txt_f, scale) + loss_fn(second, txt_f, scale)) \
                    + cross_domain * loss_fn(first, second, scale)
            else:
                loss = loss_fn(img_f, txt_f, scale)
            if not torch.isfinite(loss):
                from captionless3d.errors import NumericalError

                raise NumericalError(f"synthetic teacher loss is {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            seen += len(x)
            last_loss = float(loss.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}", T=f"{float(scale.detach()):.1f}")
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    ips = seen / max(train_s, 1e-9)
    log.info("synthetic teacher: %d steps, %d images in %.1f s (%.1f images/s), final loss %.3f", step, seen, train_s,
             ips, last_loss)

    # --- save: checkpoint, config, manifest (last) ---------------------------------------------------------------
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)  # never leave an old manifest over new payload files
    state = {"state_dict": {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}}
    atomic_write_with(out_dir / CHECKPOINT_NAME, lambda p: torch.save(state, p))
    atomic_write_json(out_dir / f"{model_name}.json", cfg)
    stats = {
        "model_name": model_name,
        "steps": step,
        "images_seen": seen,
        "train_seconds": round(train_s, 2),
        "train_images_per_s": round(ips, 1),
        "final_loss": last_loss,
        "num_objects": m,
        "images_per_object": k,
        "train": hparams,
        **dict(extra or {}),
    }
    write_manifest(
        out_dir, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=key,
        files=[CHECKPOINT_NAME, f"{model_name}.json"], extra=stats,
    )
    return out_dir


def load_synthetic_teacher(out_dir: str | os.PathLike, *, key: Mapping[str, Any] | None = None,
                           device: str = "cpu") -> OpenCLIPTeacher:
    """Verify ``out_dir``'s manifest (``CacheError`` if stale/corrupt) and load the teacher via
    :func:`create_teacher`."""
    out_dir = Path(out_dir)
    manifest = load_manifest(out_dir, kind=MANIFEST_KIND, version=MANIFEST_VERSION, key=key)
    model_name = manifest.get("extra", {}).get("model_name", MODEL_NAME)
    return create_teacher(
        model_name, checkpoint=out_dir / CHECKPOINT_NAME, model_config=out_dir / f"{model_name}.json", device=device
    )


# ----------------------------------------------------------------------------------------------------------------
# world -> teacher
# ----------------------------------------------------------------------------------------------------------------
def teacher_training_data(world: Any, split: str = "teacher", *,
                          masked_photos: bool = False) -> tuple[np.ndarray, list[list[str]]]:
    """Images ``(M, V+K[+K], H, W, 3)`` (views, then photos, then with ``masked_photos`` the photos with their
    background set to black) and captions of ``world``'s ``split`` objects."""
    idx = np.asarray(world.indices(split), dtype=np.int64)
    if len(idx) == 0:
        name = getattr(world, "name", "collection")
        raise DataError(f"{name}: no objects in split {split!r} to train the teacher on")
    parts = [np.asarray(world.views[idx])]
    photos = getattr(world, "photos", None)
    if photos is not None and np.asarray(photos[idx[:1]]).shape[2:4] == parts[0].shape[2:4]:
        parts.append(np.asarray(photos[idx]))
        masks = getattr(world, "masks", None)
        if masked_photos:
            if masks is None:
                raise DataError(f"{getattr(world, 'name', 'collection')}: masked_photos needs photo masks")
            parts.append(parts[-1] * np.asarray(masks[idx])[..., None].astype(np.uint8))
    images = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return images, [list(world.captions[i]) for i in idx]


def evaluate_teacher(teacher: Any, world: Any, split: str = "test", *, template: str = "a photo of {}",
                     max_objects: int = 2000) -> dict[str, float]:
    """Zero-shot accuracy (percent) of ``teacher`` on one view and one photo per object of ``split``.

    Reports category accuracy, sub-type accuracy among all sub-types, sub-type accuracy within the true category,
    and the matching chance levels.
    """
    idx = np.asarray(world.indices(split), dtype=np.int64)[:max_objects]
    if len(idx) == 0:
        return {}
    labels = np.asarray(world.labels)[idx]
    views = np.asarray(world.views[idx])
    v = views.shape[1]
    view_imgs = views[np.arange(len(idx)), np.arange(len(idx)) % v]  # one view per object, varying the angle
    out: dict[str, float] = {"objects": float(len(idx)), "chance_category": 100.0 / len(world.categories)}
    emb = teacher.encode_images(view_imgs, progress=False)
    out["view_category_acc"] = zero_shot_accuracy(teacher, None, labels, world.categories, template=template,
                                                  image_emb=emb)
    photo_emb = None
    if getattr(world, "photos", None) is not None:
        photos = np.asarray(world.photos[idx])
        photo_imgs = photos[np.arange(len(idx)), np.arange(len(idx)) % photos.shape[1]]
        photo_emb = teacher.encode_images(photo_imgs, progress=False)
        out["photo_category_acc"] = zero_shot_accuracy(teacher, None, labels, world.categories, template=template,
                                                       image_emb=photo_emb)
        masks = getattr(world, "masks", None)
        if masks is not None:
            mk = np.asarray(masks[idx])[np.arange(len(idx)), np.arange(len(idx)) % photos.shape[1]]
            masked_emb = teacher.encode_images(photo_imgs * mk[..., None].astype(np.uint8), progress=False)
            out["masked_photo_category_acc"] = zero_shot_accuracy(
                teacher, None, labels, world.categories, template=template, image_emb=masked_emb)
    sub_ids = np.asarray(getattr(world, "subtype_ids", np.full(len(world.labels), -1)))[idx]
    subtypes = list(getattr(world, "subtypes", []) or [])
    if subtypes and (sub_ids >= 0).all():
        phrases = [subtype_phrase(s) for s in subtypes]
        text = teacher.encode_texts([template.format(_article(p)) for p in phrases], progress=False)
        sub_cat = np.array([world.categories.index(s.split("/", 1)[0])
                            if "/" in s and s.split("/", 1)[0] in world.categories else -1 for s in subtypes])
        out["chance_subtype_all"] = 100.0 / len(subtypes)
        counts = np.array([(sub_cat == labels[i]).sum() for i in range(len(idx))])
        out["chance_subtype_within"] = float(np.mean(100.0 / np.maximum(counts, 1)))
        for dom, e in (("view", emb), ("photo", photo_emb)):
            if e is None:
                continue
            sims = (e @ text.T).numpy()
            out[f"{dom}_subtype_acc_all"] = float((sims.argmax(1) == sub_ids).mean() * 100)
            masked = np.where(sub_cat[None, :] == labels[:, None], sims, -np.inf)
            out[f"{dom}_subtype_acc_within"] = float((masked.argmax(1) == sub_ids).mean() * 100)
    return {k_: round(v_, 2) for k_, v_ in out.items()}


def ensure_synthetic_teacher(
    world: Any,
    out_root: str | os.PathLike,
    *,
    model_config: Mapping[str, Any] | str | os.PathLike | None = None,
    model_name: str = MODEL_NAME,
    split: str = "teacher",
    eval_split: str | None = "test",
    device: str = "cpu",
    progress: bool = True,
    num_threads: int | None = None,
    **train_cfg: Any,
) -> OpenCLIPTeacher:
    """Load the synthetic teacher for ``world`` from ``out_root``, training it first if no matching manifest exists.

    The directory is ``out_root/<model_name>-<key hash>``; a file lock makes concurrent callers train it once. The
    manifest key holds the fingerprint of the world's ``split`` (plus the image domains) and the config/hyper-parameter
    hash. After training, zero-shot accuracy on ``eval_split`` is stored in the manifest's ``extra``.
    """
    unknown = set(train_cfg) - set(DEFAULT_TRAIN) - {"seed", "max_steps"}
    if unknown:
        raise ConfigError(f"teacher: unknown synthetic-teacher training option(s) {sorted(unknown)}")
    cfg = load_model_config(model_config if model_config is not None else SYNTHETIC_CLIP_TINY)
    hparams = {**DEFAULT_TRAIN, "seed": 0, "max_steps": None, **train_cfg}
    masked = bool(hparams.get("masked_photos", False))
    # a synthetic world fingerprints each split on its own, so worlds that differ only in their student splits share
    # one teacher; other collections are identified as a whole
    split_fp = getattr(world, "split_fingerprint", None)
    data_fp = stable_hash({"collection": split_fp(split) if split_fp else world.fingerprint, "split": split,
                           "images": "views+photos" + ("+masked" if masked else "")})
    n_views = int(world.views.shape[1])
    photos = getattr(world, "photos", None)
    n_photos = int(photos.shape[1]) if photos is not None and photos.shape[2:4] == world.views.shape[2:4] else 0
    n_photos *= 2 if masked else 1
    share = hparams.pop("photo_share")
    weights = None
    if share is not None and n_photos > 0:
        if not 0.0 <= float(share) <= 1.0:
            raise ConfigError(f"photo_share: must be in [0, 1], got {share}")
        weights = [(1 - share) / n_views] * n_views + [share / n_photos] * n_photos
    hparams = _normalise_hparams(**hparams, image_weights=weights, render_views=n_views)
    key = _manifest_key(data_fp, model_name, cfg, hparams)
    out_dir = Path(out_root) / f"{model_name}-{stable_hash(key, 12)}"

    def train() -> Any:
        (out_dir / "manifest.json").unlink(missing_ok=True)  # a stale teacher is retrained from scratch
        images, captions = teacher_training_data(world, split, masked_photos=masked)
        train_synthetic_teacher(
            images, captions, out_dir, model_config=cfg, model_name=model_name, data_fingerprint=data_fp,
            progress=progress, num_threads=num_threads, **hparams,
        )
        teacher = load_synthetic_teacher(out_dir, key=key, device=device)
        if eval_split is not None and len(world.indices(eval_split)) > 0:
            t0 = time.perf_counter()
            with torch_threads(num_threads):
                metrics = evaluate_teacher(teacher, world, eval_split)
            metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
            manifest_path = out_dir / "manifest.json"
            manifest = json.loads(manifest_path.read_text("utf-8"))
            manifest.setdefault("extra", {})["zero_shot"] = metrics
            atomic_write_json(manifest_path, manifest)  # extra is not covered by checksums or the key
            log.info("synthetic teacher zero-shot on %s: %s", eval_split, metrics)
        return teacher

    return load_or_build(out_dir, lambda: load_synthetic_teacher(out_dir, key=key, device=device), train,
                         what="synthetic teacher")
