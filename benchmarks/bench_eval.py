"""Timing of the evaluation functions on random embeddings (CPU by default). Prints numbers; no assertions.

    .venv/bin/python benchmarks/bench_eval.py [--n 10000] [--dim 512] [--device cpu] [--threads 0]

Full-gallery: Q images vs G = Q unique shapes (one image per shape, 20 categories), both directions, with and without
the same-category variant. Paper protocol: N pairs in shuffled batches of 128.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from captionless3d.evaluation import full_gallery_retrieval, paper_batch_retrieval, zero_shot_metrics


def run(n: int = 10_000, d: int = 512, device: str = "cpu", verbose: bool = True) -> dict[str, float]:
    """Time the evaluation functions on ``n`` random pairs; returns seconds per call (printed when ``verbose``)."""
    say = print if verbose else (lambda *a, **k: None)
    g = torch.Generator().manual_seed(0)
    shapes = torch.randn(n, d, generator=g)
    images = shapes + 4.0 * torch.randn(n, d, generator=g)
    ids = list(range(n))
    cats = [f"c{i % 20}" for i in range(n)]
    shapes, images = shapes.to(device), images.to(device)
    say(f"device={device} threads={torch.get_num_threads()} N={n} D={d}")
    out: dict[str, float] = {}

    t = time.perf_counter()
    res = full_gallery_retrieval(images, ids, shapes, ids)
    out["full_gallery_s"] = dt = time.perf_counter() - t
    say(f"full_gallery_retrieval {n}x{n} (both directions, no categories): {dt:.2f} s  "
        f"i2s_r1={res['i2s_r1']:.2f} i2s_map={res['i2s_map']:.2f}")

    t = time.perf_counter()
    res = full_gallery_retrieval(images, ids, shapes, ids, categories=cats)
    out["full_gallery_samecat_s"] = dt = time.perf_counter() - t
    say(f"full_gallery_retrieval {n}x{n} (+ same-category variant, per-category): {dt:.2f} s  "
        f"samecat i2s_r1={res['samecat']['i2s_r1']:.2f}")

    t = time.perf_counter()
    res = paper_batch_retrieval(images, shapes, batch_size=128, seed=0, categories=cats)
    out["paper_batch_s"] = dt = time.perf_counter() - t
    say(f"paper_batch_retrieval N={n}, batches of 128: {dt:.2f} s  i2s_top1={res['i2s_top1']:.2f}")

    classes = torch.randn(40, d, generator=g).to(device)
    labels = torch.randint(0, 40, (n,), generator=g)
    t = time.perf_counter()
    zero_shot_metrics(images, classes, labels.to(device))
    out["zero_shot_s"] = dt = time.perf_counter() - t
    say(f"zero_shot_metrics N={n}, C=40: {dt:.2f} s")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.n, args.dim, args.device)
    print(f"peak RSS: {res['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
