"""Time WeightedDenominatorLoss forward+backward (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/bench_loss.py [--batch 1024] [--dim 512] [--device cpu] [--repeats 20]

Priors are real PriorStores (I2I and (I2L)²) over a synthetic 20k-object, 8-category collection, so the timing
includes the vectorised pair lookup and the row normalisation.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from captionless3d.losses import WeightedDenominatorLoss
from captionless3d.mining import PriorStore
from captionless3d.utils.timing import time_calls


def make_stores(n_objects: int, n_cat: int, dim: int):
    rng = np.random.default_rng(0)
    view = rng.normal(size=(n_objects, 2, dim)).astype(np.float16)
    labels = rng.integers(0, n_cat, n_objects)
    member = rng.random(n_objects) < 0.8
    lm_labels = np.repeat(np.arange(n_cat), 128)
    lm = rng.normal(size=(lm_labels.size, dim)).astype(np.float32)
    t0 = time.perf_counter()
    i2i = PriorStore.build("i2i", view, labels, member)
    t1 = time.perf_counter()
    i2l2 = PriorStore.build("i2l2", view, labels, member, lm, lm_labels)
    t2 = time.perf_counter()
    print(f"build: i2i {t1 - t0:.2f} s, i2l2 {t2 - t1:.2f} s  ({n_objects} objects, {n_cat} categories, "
          f"{i2i.nbytes / 2**20:.0f} MiB per store)")
    return i2i, i2l2


def bench(fn, repeats: int, device: str) -> tuple[float, float]:
    times = time_calls(fn, device, warmup=3, repeats=repeats)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    i2i, i2l2 = make_stores(args.objects, 8, 64)
    i2i.to(dev)
    i2l2.to(dev)
    loss_fn = WeightedDenominatorLoss().to(dev)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(args.batch, args.dim, generator=g).to(dev)
    pts = torch.randn(args.batch, args.dim, generator=g).to(dev).requires_grad_(True)
    index = torch.randperm(args.objects, generator=g)[: args.batch].to(dev)
    print(f"device={dev} threads={torch.get_num_threads()} B={args.batch} D={args.dim} torch={torch.__version__}")
    for name, priors in (("no prior (InfoNCE)", ()), ("one prior (I2I)", (i2i,)), ("two priors (AVG)", (i2i, i2l2))):
        def step():
            pts.grad = None
            loss_fn.zero_grad(set_to_none=True)
            loss_fn(img, pts, index, priors).backward()

        med, best = bench(step, args.repeats, dev)
        print(f"  {name:20s} fwd+bwd median {med:8.2f} ms   min {best:8.2f} ms")
    for name, priors in (("pairs() I2I", i2i),):
        med, best = bench(lambda: priors.pairs(index, index), args.repeats, dev)
        print(f"  {name:20s}         median {med:8.2f} ms   min {best:8.2f} ms")


if __name__ == "__main__":
    main()
