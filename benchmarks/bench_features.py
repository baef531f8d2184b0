"""Teacher feature-extraction throughput on this machine: ``encode_images`` images/s and ``encode_texts`` texts/s.

    .venv/bin/python -m benchmarks.bench_features [--quick] [--threads N] [--device cpu]

Teachers (all through their real ``Teacher`` classes, so preprocessing, batching and normalisation are included):

(a) the project's synthetic teacher (``synthetic-clip-tiny``, 64 px): the trained one from the cache
    (``$CAPTIONLESS3D_CACHE`` or ``.cache``, ``teachers/synthetic-clip-tiny-*``) if there is one, else an untrained
    one built from its OpenCLIP config (same architecture, so the same speed);
(b) OpenCLIP ViT-B-32 with random weights (``pretrained=None``) at 224 px: the paper's teacher architecture;
(c) a tiny random Hugging Face CLIP (``captionless3d.teacher.hf_clip.save_random_clip``, 32 px), and
(d) a random Hugging Face CLIP with the ViT-B/32 architecture (``CLIPConfig()`` defaults) at 224 px, to compare the
    two ViT-B/32 implementations.

Images are random uint8 at each teacher's own resolution (no resize: renders are made at the teacher's size); texts
are prompts "a point cloud model of a <class>" and short captions. Finally the wall time for 1.6 M images (the
ULIP-2-scale view count) is projected from the measured ViT-B-32 rate. Prints numbers only; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
PROJECT_IMAGES = 1_600_000
CLASSES = ["airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup",
           "curtain", "desk", "door", "dresser", "flower pot", "glass box", "guitar", "keyboard", "lamp"]


def _texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        c = CLASSES[i % len(CLASSES)]
        out.append(f"a point cloud model of a {c}" if i % 2 == 0 else f"a small wooden {c} with a rounded edge")
    return out


def synthetic_teacher(device: str = "cpu"):
    """The cached trained synthetic teacher (newest), else an untrained one from its config; and a label."""
    from captionless3d.teacher.openclip import create_teacher
    from captionless3d.teacher.synthetic import MODEL_NAME, SYNTHETIC_CLIP_TINY, load_synthetic_teacher

    cache = Path(os.environ.get("CAPTIONLESS3D_CACHE", ROOT / ".cache")) / "teachers"
    found = sorted(cache.glob(f"{MODEL_NAME}-*/manifest.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in found:
        try:
            return load_synthetic_teacher(manifest.parent, device=device), f"trained, {manifest.parent.name}"
        except Exception as exc:  # noqa: BLE001 - a stale cache: try the next one / fall back to random weights
            print(f"  (cached synthetic teacher {manifest.parent} not usable: {type(exc).__name__}: {exc})")
    return create_teacher(MODEL_NAME, model_config=SYNTHETIC_CLIP_TINY, device=device), "untrained, from its config"


def rate(fn, n: int, repeats: int) -> float:
    """Items/s of ``fn()`` processing ``n`` items: the best of ``repeats`` timed runs (after one warm-up call)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def measure(teacher, n_images: int, n_texts: int, *, batch_size: int, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    s = teacher.image_size
    images = rng.integers(0, 256, (n_images, s, s, 3), dtype=np.uint8)
    texts = _texts(n_texts)
    teacher.encode_images(images[: min(2, n_images)], progress=False)  # warm-up (allocations, lazy init)
    teacher.encode_texts(texts[:2], progress=False)
    ips = rate(lambda: teacher.encode_images(images, batch_size=batch_size, progress=False), n_images, repeats)
    tps = rate(lambda: teacher.encode_texts(texts, batch_size=batch_size, progress=False), n_texts, repeats)
    return ips, tps


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def run(quick: bool = False, device: str = "cpu") -> dict[str, dict[str, float | str]]:
    """Measure every teacher; returns ``{name: {"images_per_s", "texts_per_s", "dim", "image_size", "note"}}``."""
    from captionless3d.teacher.openclip import create_teacher

    small_n, small_t = (256, 128) if quick else (2048, 1024)
    vit_n, vit_t = (8, 32) if quick else (64, 256)
    repeats = 2 if quick else 3  # best of: the cores are shared, the minimum is the least disturbed run
    results: dict[str, dict[str, float | str]] = {}
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

    def one(name: str, build, n_img: int, n_txt: int, batch: int) -> None:
        t0 = time.perf_counter()
        try:
            teacher, note = build()
        except Exception as exc:  # noqa: BLE001 - e.g. transformers not installed: report and go on
            print(f"{name:<34s} not measured: {type(exc).__name__}: {exc}")
            return
        load_s = time.perf_counter() - t0
        ips, tps = measure(teacher, n_img, n_txt, batch_size=batch, repeats=repeats)
        results[name] = dict(images_per_s=ips, texts_per_s=tps, dim=teacher.dim, image_size=teacher.image_size,
                             note=note)
        print(f"{name:<34s} {teacher.image_size:>4d} px  dim {teacher.dim:>4d}  {ips:9.1f} images/s  "
              f"{tps:9.1f} texts/s  (n={n_img}/{n_txt}, batch {batch}, built in {load_s:.1f} s; {note})", flush=True)

    one("synthetic-clip-tiny (OpenCLIP)", lambda: synthetic_teacher(device), small_n, small_t, 256)
    one("ViT-B-32 (OpenCLIP, random init)",
        lambda: (create_teacher("ViT-B-32", pretrained=None, device=device), "pretrained=None"), vit_n, vit_t, 32)
    tmp = Path(tempfile.mkdtemp(prefix="c3d-bench-hf-"))
    try:
        def hf(subdir: str, **cfg):
            from captionless3d.teacher.hf_clip import create_hf_clip_teacher, save_random_clip

            return create_hf_clip_teacher(save_random_clip(tmp / subdir, **cfg), device=device), "random init"

        one("tiny HF CLIP (transformers)", lambda: hf("tiny"), small_n, small_t, 256)
        one("ViT-B/32 HF CLIP (transformers)",
            lambda: hf("vitb32", projection_dim=512, image_size=224, patch_size=32, width=768, layers=12, heads=12,
                       context_length=77), vit_n, vit_t, 32)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    vit = results.get("ViT-B-32 (OpenCLIP, random init)")
    if vit:
        secs = PROJECT_IMAGES / float(vit["images_per_s"])
        print(f"projected: {PROJECT_IMAGES / 1e6:.1f} M images with ViT-B-32 on this {device.upper()} at "
              f"{float(vit['images_per_s']):.1f} images/s = {_hours(secs)} ({secs / 86400:.1f} days) of wall time")
        results["projection"] = dict(images=PROJECT_IMAGES, seconds=secs)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (well under a minute of encoding)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    run(quick=args.quick, device=args.device)


if __name__ == "__main__":
    main()
