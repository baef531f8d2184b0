"""Shape-index search latency (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/bench_search.py [--shapes 100000] [--dim 512] [--k 5] [--queries 1,8] [--repeats 50]

Builds a random fp16 index of ``--shapes`` L2-normalised rows on disk (:meth:`ShapeIndex.write`, the format
``captionless3d index`` writes), opens it lazily (``np.load(mmap_mode="r")``) and times
:meth:`ShapeIndex.search_embeddings` (one fp16 matrix product + ``torch.topk``) for single queries and small query
batches: p50 / p95 over ``--repeats`` searches after a warm-up (the first search pages the file in; its time is
printed separately).
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

from captionless3d.shape_index import ShapeIndex


def make_index(directory: Path, shapes: int, dim: int, seed: int = 0) -> float:
    """Write a random index; returns the seconds it took."""
    rng = np.random.default_rng(seed)
    emb = np.empty((shapes, dim), np.float16)
    for start in range(0, shapes, 65536):  # bounded float32 temporaries
        block = rng.standard_normal((min(65536, shapes - start), dim), dtype=np.float32)
        emb[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    t0 = time.perf_counter()
    ShapeIndex.write(directory, emb, [f"shape_{i:06d}.npy" for i in range(shapes)], teacher_id="bench",
                     encoder_sha256="0" * 64)
    return time.perf_counter() - t0


def run(shapes: int = 100_000, dim: int = 512, k: int = 5, queries: tuple[int, ...] = (1, 8), repeats: int = 50,
        threads: int = 0) -> dict[str, dict[str, float]]:
    """Returns ``{"Q=<q>": {"p50_ms", "p95_ms", "first_ms"}}`` and prints a table."""
    if threads:
        torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="c3d-bench-search-"))
    results: dict[str, dict[str, float]] = {}
    try:
        write_s = make_index(tmp / "index", shapes, dim)
        size_mb = (tmp / "index" / "embeddings.npy").stat().st_size / 2**20
        print(f"index: {shapes} shapes x {dim} fp16 ({size_mb:.0f} MiB), written in {write_s:.1f} s; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
        rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        index = ShapeIndex.load(tmp / "index", teacher_id="bench")
        open_ms = (time.perf_counter() - t0) * 1e3
        print(f"ShapeIndex.load (lazy, manifest only): {open_ms:.2f} ms")
        print(f"{'queries':>8} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'shapes/s (p50)':>15}")
        for q in queries:
            batch = rng.standard_normal((repeats + 1, q, dim)).astype(np.float32)
            batch /= np.linalg.norm(batch, axis=2, keepdims=True)
            t0 = time.perf_counter()
            index.search_embeddings(batch[0], k)
            first = (time.perf_counter() - t0) * 1e3
            times = []
            for r in range(1, repeats + 1):
                t0 = time.perf_counter()
                index.search_embeddings(batch[r], k)
                times.append((time.perf_counter() - t0) * 1e3)
            p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
            results[f"Q={q}"] = {"p50_ms": p50, "p95_ms": p95, "first_ms": first}
            print(f"{q:>8} {first:>9.1f} {p50:>8.2f} {p95:>8.2f} {shapes * q / (p50 / 1e3):>15.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--queries", default="1,8", help="comma-separated query batch sizes")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    args = ap.parse_args()
    run(args.shapes, args.dim, args.k, tuple(int(q) for q in args.queries.split(",")), args.repeats, args.threads)


if __name__ == "__main__":
    main()
