"""Exact global top-k: captionless3d.mining.topk_similar vs faiss IndexFlatIP (if importable), same data, same threads.

    python benchmarks/bench_topk.py                 # N=100 000, d=512, k=64 (several minutes on 2 cores)
    python benchmarks/bench_topk.py --n 20000       # quick run
    python benchmarks/bench_topk.py --no-faiss

Data: unit vectors drawn around 200 random "category" centres (CLIP-like clustered embeddings), float32.
Reports wall time, peak RSS increase over the run (sampled every 5 ms from /proc/self/status, so it sees torch's
and faiss' native allocations, which tracemalloc does not), agreement with a float64 brute force on a row subsample,
agreement between the two methods, and an N² projection of the time to N = 1M (memory projected from the
algorithm: output + running keys + fixed block buffers). Prints numbers only; no asserts.
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch

from captionless3d.mining.topk import topk_similar


def rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak RSS increase (bytes) over a ``with`` block, sampled in a thread."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.delta = self.peak - self.base


def make_data(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, d)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + 1.5 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def brute_rows(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    xt = torch.from_numpy(x).double()
    s = xt[torch.from_numpy(rows)] @ xt.T
    s[torch.arange(rows.size), torch.from_numpy(rows)] = -float("inf")
    return torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k].numpy()


def set_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean fraction of common neighbours per row (order-free)."""
    return float(np.mean([len(set(p.tolist()) & set(q.tolist())) / len(p) for p, q in zip(a, b)]))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=4096)
    ap.add_argument("--check-rows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-faiss", action="store_true")
    args = ap.parse_args()
    n, d, k = args.n, args.d, args.k
    threads = torch.get_num_threads()
    print(f"N={n} d={d} k={k} block_size={args.block_size} threads={threads} cpus={os.cpu_count()}")
    x = make_data(n, d, args.seed)
    print(f"data: {gib(x.nbytes)} float32")

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        v, i = topk_similar(x, k, block_size=args.block_size, metric="ip", progress=False)
        t_ours = time.perf_counter() - t0
    mem_ours = mem.delta
    print(f"ours  : {t_ours:8.1f} s   peak RSS +{gib(mem_ours)}")

    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(n, size=min(args.check_rows, n), replace=False))
    ref = brute_rows(x, rows, k)
    ours_i = i.numpy()[rows]
    print(f"ours vs float64 brute force on {rows.size} rows: exact-order match {np.mean(ours_i == ref) * 100:.3f}%, "
          f"set overlap {set_agreement(ours_i, ref) * 100:.3f}%")

    t_faiss = mem_faiss = None
    if not args.no_faiss:
        try:
            import faiss
        except ImportError:
            print("faiss: not importable (pip install faiss-cpu); skipped")
        else:
            faiss.omp_set_num_threads(threads)
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                index = faiss.IndexFlatIP(d)
                index.add(x)
                fd, fi = index.search(x, k + 1)
                t_faiss = time.perf_counter() - t0
            mem_faiss = mem.delta
            # drop the self match (FAISS returns it first unless a duplicate ties with it)
            fi_ns = np.stack([r[r != q][:k] for q, r in enumerate(fi)])
            print(f"faiss : {t_faiss:8.1f} s   peak RSS +{gib(mem_faiss)}   (IndexFlatIP, search(x, k+1), self dropped)")
            print(f"faiss vs brute force: exact-order match {np.mean(fi_ns[rows] == ref) * 100:.3f}%, "
                  f"set overlap {set_agreement(fi_ns[rows], ref) * 100:.3f}%")
            print(f"ours vs faiss (all rows): set overlap {set_agreement(i.numpy()[:: max(1, n // 5000)], fi_ns[:: max(1, n // 5000)]) * 100:.3f}%")
            print(f"time ratio ours/faiss: {t_ours / t_faiss:.2f}")

    scale = (1_000_000 / n) ** 2
    block_bytes = args.block_size**2 * 12
    out_bytes = 1_000_000 * k * (8 + 4 + 8)  # values + indices + running keys
    print(f"projection to N=1M (time ∝ N²): ours {t_ours * scale / 3600:.2f} h"
          + (f", faiss {t_faiss * scale / 3600:.2f} h" if t_faiss else ""))
    print(f"projection to N=1M memory (ours, beyond the {gib(1_000_000 * d * 4)} input): "
          f"~{gib(out_bytes + block_bytes)} (output+running keys {gib(out_bytes)}, blocks {gib(block_bytes)})")


if __name__ == "__main__":
    main()
