"""``make bench``: every benchmark of the project in one run. Prints measured numbers only; asserts nothing.

    .venv/bin/python -m benchmarks.run_all            # full sizes (tens of minutes on 2 cores)
    .venv/bin/python -m benchmarks.run_all --quick    # small sizes (a few minutes)
    .venv/bin/python -m benchmarks.run_all --sections 1,5 --json bench.json

Sections (each catches its own exceptions and prints ``section N failed: ...``, so one failure hides nothing):

1. PointNeXt-S (+ head): train step (forward + backward) samples/s and peak RSS at batch 32 x 2048 points and at the
   default run's 512 points, forward-only at 8192, per available ``ops_backend``; FLOPs per sample
   (``torch.utils.flop_counter``); this CPU's fp32 matmul GFLOP/s; achieved % of it; share of FPS + ball query +
   grouping in a step; which point count / batch size the default synthetic run (1280 train objects, 8 epochs,
   ~6 min of training) can afford.
2. Loss forward + backward at B = 1024, D = 512 (AVG: two priors) and its share of a training step.
3. Evaluation: 10k-gallery retrieval.
4. Synthetic world generation: objects/s and cache size per 1000 objects.
5. Teacher feature extraction images/s (synthetic-tiny and ViT-B-32 architectures, random weights) and the data
   module's read throughput from memmapped points + the sharded feature store vs the student's training throughput
   (target >= 5x).
6. Exact top-k neighbours (``benchmarks/bench_topk.py``, if present).
7. ``features``: teacher ``encode_images`` images/s and ``encode_texts`` texts/s per backend
   (``benchmarks/bench_features.py``: the synthetic teacher, OpenCLIP ViT-B-32 at 224 px, tiny and ViT-B/32 Hugging
   Face CLIPs) and the projected wall time for 1.6 M images at the ViT-B-32 rate. ``--sections features`` works too.
8. ``search``: shape-index search latency p50 / p95 over a 100 000-shape random fp16 index, 1 and 8 queries
   (``benchmarks/bench_search.py``). ``--sections search`` works too.
9. ``backbones``: train and forward samples/s of PointNeXt-S and the small presets of PointNet++, Point-BERT and
   OpenShape's PointPatchTransformer at batch 32 x 256 points (``benchmarks/bench_backbones.py``), on CPU and, when
   one is available, on the GPU. ``--sections backbones`` works too.

The cores may be shared with other processes: the load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

#: The default synthetic run (configs/data/synthetic.yaml, configs/trainer/cpu.yaml): 16 categories x 80 train
#: objects, 8 epochs, 512 points, batch 32; "~6 min" is the training budget the defaults were chosen for.
DEFAULT_RUN = dict(train_objects=1280, epochs=8, points=512, batch=32, budget_s=360.0)

SUMMARY: list[tuple[str, str, str]] = []
CTX: dict = {}


def record(section: str, metric: str, value: str) -> None:
    SUMMARY.append((section, metric, value))


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _fmt(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


# ------------------------------------------------------------------------------------------------------ section 1
def section_pointnext(quick: bool) -> None:
    from benchmarks.bench_pointnext import matmul_gflops, run_config
    from captionless3d.errors import ConfigError
    from captionless3d.models.ops import import_cuda_ops

    B = 8 if quick else 32  # batch of the main configurations
    main_n = 1024 if quick else 2048
    fwd_n = 2048 if quick else 8192
    repeats = 2 if quick else 3
    b_def, n_def = DEFAULT_RUN["batch"], DEFAULT_RUN["points"]
    b_other = 32 if quick else 8  # a second batch size at N=512: how per-sample time depends on the batch
    peak = matmul_gflops()
    print(f"fp32 matmul peak (2048^3 GEMM, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s")
    record("1 pointnext", "fp32 matmul GFLOP/s", f"{peak:.1f}")

    try:
        source, _ = import_cuda_ops()
        cuda = (f"{source} importable; CUDA tensors only, not measured on CPU" if torch.cuda.is_available()
                else f"{source} importable but no CUDA device; not measured")
    except ConfigError:
        cuda = "not available (neither 'pointnext' nor 'pointnet2_batch_cuda' importable)"
    print(f"ops_backend cuda: {cuda}")
    record("1 pointnext", "ops_backend cuda", cuda)

    cfgs = [dict(backend="torch", batch=B, points=n_def, train=True),
            dict(backend="torch", batch=B, points=main_n, train=True),
            dict(backend="torch", batch=b_other, points=n_def, train=True),
            dict(backend="torch", batch=B, points=fwd_n, train=False),
            dict(backend="compile", batch=B, points=n_def if quick else main_n, train=True)]
    if not quick:
        cfgs.append(dict(backend="compile", batch=B, points=fwd_n, train=False))
    header = (f"{'backend':<8}{'mode':<6}{'B':>4}{'N':>6}{'step s':>8}{'best s':>8}{'samp/s':>8}{'RSS MB':>8}"
              f"{'fwd GF/s':>9}{'exec GF/s':>10}{'%peak':>7}{'%pk ex':>7}{'ops%':>6}{'gath%':>6}{'warm s':>8}"
              f"{'max|d|':>9}  load")
    print(header)
    results = []
    for c in cfgs:
        cfg = dict(c, repeats=repeats, threads=0, reference=False, details=c["backend"] == "torch")
        try:
            r = run_config(cfg)
        except Exception as exc:  # noqa: BLE001
            print(f"{c['backend']:<8}{'train' if c['train'] else 'fwd':<6}{c['batch']:>4}{c['points']:>6}  FAILED: "
                  f"{str(exc)[-300:]}")
            continue
        r["best_s"] = min(r["step_s_all"])
        results.append(r)
        ex = r["executed_gflop_per_s"]
        print(f"{r['backend']:<8}{'train' if r['train'] else 'fwd':<6}{r['batch']:>4}{r['points']:>6}"
              f"{r['step_s']:>8.2f}{r['best_s']:>8.2f}{r['samples_per_s']:>8.1f}{r['peak_rss_mb']:>8.0f}"
              f"{r['arch_gflop_per_s']:>9.1f}{_fmt(ex, '.1f', 10)}"
              f"{100 * r['arch_gflop_per_s'] / peak:>7.1f}{_fmt(ex and 100 * ex / peak, '.1f', 7)}"
              f"{100 * r['ops_share']:>6.1f}{_fmt(r['fused_gather_share'] and 100 * r['fused_gather_share'], '.1f', 6)}"
              f"{r['warmup_s']:>8.1f}{_fmt(r['max_abs_diff_vs_torch'], '.1e', 9)}  "
              f"{' '.join(f'{x:.1f}' for x in r['load_avg'])}", flush=True)
    print("step s: median of the timed steps, best s: fastest (used for the fits below: the least disturbed by "
          "other processes); samp/s, GF/s from the median. fwd GF/s: OpenPoints-architecture FLOPs (forward analytic, "
          "x3 for a train step) / step time; exec: FLOPs this code executes (FlopCounterMode); %peak vs the matmul "
          "peak above (measured again in each subprocess); ops%: FPS + ball query + gathers outside the fused op; "
          "gath%: index_select/index_add_ inside it (profiler self time); warm s: first step (compilation for "
          "compile); max|d|: output difference to the torch backend with the same weights (train: backbone in train "
          "mode; fwd: model in eval mode)")

    def find(backend, b, n, train):
        return next((r for r in results if r["backend"] == backend and r["batch"] == b and r["points"] == n
                     and r["train"] == train), None)

    for r in results:
        if r["backend"] != "torch":
            continue
        tag = f"{'train' if r['train'] else 'fwd'} {r['batch']}x{r['points']}"
        record("1 pointnext", f"{tag} samples/s | peak RSS MB", f"{r['samples_per_s']:.1f} | {r['peak_rss_mb']:.0f}")
        flops = f"OpenPoints fwd {r['openpoints_fwd_gflop_per_sample']:.3f}"
        if r["executed_gflop_per_step"] is not None:
            flops += f", executed {'fwd+bwd' if r['train'] else 'fwd'} {r['executed_gflop_per_step'] / r['batch']:.3f}"
        print(f"FLOPs per sample, {tag}: {flops} GFLOP")
        record("1 pointnext", f"{tag} GFLOP/sample", flops)
        if r["train"]:
            ops = r["ops_share"] + (r["fused_gather_share"] or 0.0)
            print(f"{tag}: {100 * r['arch_gflop_per_s'] / peak:.1f}% of matmul peak (architecture FLOPs), "
                  f"{_fmt(r['executed_gflop_per_s'] and 100 * r['executed_gflop_per_s'] / peak, '.1f', 0)}% "
                  f"(executed); FPS + ball query + grouping: {100 * ops:.0f}% of the step "
                  f"({100 * r['ops_share']:.0f}% FPS/ball query/gathers + "
                  f"{100 * (r['fused_gather_share'] or 0):.0f}% gathers/scatters in the fused op)")
            record("1 pointnext", f"{tag} % of peak", f"{100 * r['arch_gflop_per_s'] / peak:.1f}")
            record("1 pointnext", f"{tag} FPS+ballquery+grouping share", f"{100 * ops:.0f}%")
    for c in results:
        if c["backend"] == "compile":
            base = find("torch", c["batch"], c["points"], c["train"])
            if base:
                speed = base["best_s"] / c["best_s"]
                tag = f"{'train' if c['train'] else 'fwd'} {c['batch']}x{c['points']}"
                print(f"compile vs torch, {tag}: {speed:.2f}x speed (best step {c['best_s']:.2f} s vs "
                      f"{base['best_s']:.2f} s), compilation {c['warmup_s']:.0f} s, max |diff| "
                      f"{c['max_abs_diff_vs_torch']:.1e}")
                record("1 pointnext", f"compile speed-up {tag}", f"{speed:.2f}x (compile {c['warmup_s']:.0f} s)")

    # what the default run can afford: fit step time T(B, N) = c0 + c1 B + c2 B N (per-step overhead, per-sample
    # and per-sample-point cost) and peak RSS M = m0 + m1 B N to the torch train runs, then solve for the budget
    rd = find("torch", b_def, n_def, True) or find("torch", B, n_def, True)
    if rd:
        CTX["student_samples_per_s"] = rd["batch"] / rd["best_s"]
        CTX["student_step_s_per_sample"] = rd["best_s"] / rd["batch"]
        CTX["student_batch"] = rd["batch"]
    train = [r for r in results if r["backend"] == "torch" and r["train"]]
    if len(train) >= 3:
        A = np.array([[1.0, r["batch"], r["batch"] * r["points"]] for r in train])
        c = np.linalg.lstsq(A, np.array([r["best_s"] for r in train]), rcond=None)[0]
        model = "least-squares fit"
        if (c < 0).any() or not rd:  # timings too noisy (shared cores) for 3 coefficients: cost per point-sample
            ref = rd or max(train, key=lambda r: r["batch"] * r["points"])
            c = np.array([0.0, 0.0, ref["best_s"] / (ref["batch"] * ref["points"])])
            model = f"noisy timings, proportional to B x N from the {ref['batch']}x{ref['points']} step"
        m = np.linalg.lstsq(A[:, [0, 2]], np.array([r["peak_rss_mb"] for r in train]), rcond=None)[0]
        ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        samples = DEFAULT_RUN["train_objects"] * DEFAULT_RUN["epochs"]

        def run_time(b, n):
            return (DEFAULT_RUN["epochs"] * math.ceil(DEFAULT_RUN["train_objects"] / b)
                    * (c[0] + c[1] * b + c[2] * b * n))

        def n_max(b):
            steps = DEFAULT_RUN["epochs"] * math.ceil(DEFAULT_RUN["train_objects"] / b)
            return (DEFAULT_RUN["budget_s"] / steps - c[0] - c[1] * b) / (c[2] * b)

        t_default = run_time(b_def, n_def)
        print(f"step time fit T = {c[0]:.3f} s + {1e3 * c[1]:.1f} ms x B + {1e6 * c[2]:.1f} us x B x N "
              f"({model}, {len(train)} train runs); peak RSS ~ {m[0]:.0f} MB + {1e3 * m[1]:.1f} KB x B x N")
        print(f"default synthetic run ({DEFAULT_RUN['train_objects']} train objects x {DEFAULT_RUN['epochs']} epochs "
              f"= {samples} samples, budget {DEFAULT_RUN['budget_s']:.0f} s of train steps): B={b_def}, N={n_def} "
              f"takes {t_default:.0f} s")
        rows = []
        for b in (16, 32, 64, 128):
            nm = n_max(b)
            n_fit = int(nm // 256 * 256) if nm >= 256 else 0
            mem = m[0] + m[1] * b * max(n_fit, n_def)
            rows.append(f"B={b}: N <= {n_fit if n_fit else '<256'} ({run_time(b, n_def):.0f} s at N={n_def}, "
                        f"peak RSS ~{mem / 1024:.1f} GiB)")
        print("  affordable within the budget: " + "; ".join(rows) + f"  [RAM {ram_mb / 1024:.0f} GiB]")
        nm = n_max(b_def)
        afford = (f"N <= {int(nm // 256 * 256)} at B={b_def}" if nm >= 256 else
                  f"N < 256 at B={b_def} (N={n_def} needs {t_default / DEFAULT_RUN['budget_s']:.1f}x the budget)")
        record("1 pointnext", f"default run: train steps at {b_def}x{n_def}", f"{t_default:.0f} s (budget 360 s)")
        record("1 pointnext", "default run affords", afford + f"; B=64: N <= {max(0, int(n_max(64) // 256 * 256))}")


# ------------------------------------------------------------------------------------------------------ section 2
def section_loss(quick: bool) -> None:
    from benchmarks.bench_loss import make_stores
    from captionless3d.losses import WeightedDenominatorLoss

    objects = 4096 if quick else 20000
    i2i, i2l2 = make_stores(objects, 8, 64)
    loss_fn = WeightedDenominatorLoss()
    g = torch.Generator().manual_seed(0)
    times = {}
    for B in (1024, DEFAULT_RUN["batch"]):
        img = torch.randn(B, 512, generator=g)
        pts = torch.randn(B, 512, generator=g).requires_grad_(True)
        index = torch.randperm(objects, generator=g)[:B]
        for name, priors in (("InfoNCE", ()), ("AVG", (i2i, i2l2))):
            def step():
                pts.grad = None
                loss_fn.zero_grad(set_to_none=True)
                loss_fn(img, pts, index, priors).backward()

            times[(B, name)] = t = median_time(step, 3 if quick else 10, warmup=2)
            print(f"loss fwd+bwd B={B} D=512 {name:8s}: {1e3 * t:8.2f} ms")
    t_loss = times[(1024, "AVG")]
    record("2 loss", "fwd+bwd B=1024 D=512 AVG", f"{1e3 * t_loss:.1f} ms")
    per_sample = CTX.get("student_step_s_per_sample")
    if per_sample:
        for B in (1024, DEFAULT_RUN["batch"]):
            student = per_sample * B
            share = times[(B, "AVG")] / (times[(B, "AVG")] + student)
            print(f"share of a training step at B={B} (student step {student:.2f} s extrapolated from the best "
                  f"{CTX['student_batch']}x{DEFAULT_RUN['points']} step): {100 * share:.2f}%")
            record("2 loss", f"share of train step B={B}", f"{100 * share:.2f}%")
    else:
        print("share of a training step: no student step time (section 1 did not run)")


# ------------------------------------------------------------------------------------------------------ section 3
def section_eval(quick: bool) -> None:
    from benchmarks.bench_eval import run

    n = 2000 if quick else 10_000
    res = run(n=n, d=512)
    record("3 eval", f"full-gallery retrieval {n}x{n}", f"{res['full_gallery_s']:.2f} s")
    record("3 eval", f"paper batch-128 retrieval N={n}", f"{res['paper_batch_s']:.2f} s")


# ------------------------------------------------------------------------------------------------------ section 4
def section_world(quick: bool) -> None:
    from captionless3d.data.synthetic import DEFAULT_CATEGORIES, build_world

    cats = list(DEFAULT_CATEGORIES[: 2 if quick else 4])
    counts = dict(n_teacher=2, n_train=4, n_val=2, n_test=2) if quick else dict(n_teacher=5, n_train=10, n_val=2,
                                                                                    n_test=3)
    per_cat = sum(counts.values())
    tmp = Path(tempfile.mkdtemp(prefix="c3d-bench-world-"))
    try:
        t0 = time.perf_counter()
        path = build_world(tmp, categories=cats, progress=False, **counts)
        dt = time.perf_counter() - t0
        n = len(cats) * per_cat
        size = sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())
        default_n = len(DEFAULT_CATEGORIES) * 170
        print(f"build_world {len(cats)} categories x {per_cat} objects = {n}: {dt:.1f} s = {n / dt:.1f} objects/s; "
              f"cache {size / 2**20:.1f} MiB = {size / n * 1000 / 2**20:.0f} MiB per 1000 objects "
              f"(default world {default_n} objects: ~{default_n / (n / dt):.0f} s, "
              f"~{size / n * default_n / 2**20:.0f} MiB)")
        record("4 world", "objects/s", f"{n / dt:.1f}")
        record("4 world", "cache MiB / 1000 objects", f"{size / n * 1000 / 2**20:.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ section 5
def section_features(quick: bool) -> None:
    from captionless3d.teacher.openclip import create_teacher
    from captionless3d.teacher.synthetic import MODEL_NAME, SYNTHETIC_CLIP_TINY
    from captionless3d.training.datamodule import PointViewDataset

    rng = np.random.default_rng(0)
    n_tiny = 128 if quick else 1024
    tiny = create_teacher(MODEL_NAME, model_config=SYNTHETIC_CLIP_TINY)
    images = rng.integers(0, 256, (n_tiny, 64, 64, 3), dtype=np.uint8)
    tiny.encode_images(images[:16], progress=False)
    t0 = time.perf_counter()
    tiny.encode_images(images, batch_size=256, progress=False)
    ips_tiny = n_tiny / (time.perf_counter() - t0)
    print(f"teacher {MODEL_NAME} (random init, {tiny.image_size}px, dim {tiny.dim}): {ips_tiny:.0f} images/s")
    record("5 features", f"{MODEL_NAME} images/s", f"{ips_tiny:.0f}")
    n_vit = 4 if quick else 32
    vit = create_teacher("ViT-B-32", pretrained=None)
    vit.encode_images(images[:2], progress=False)
    t0 = time.perf_counter()
    vit.encode_images(images[:n_vit], batch_size=32, progress=False)
    ips_vit = n_vit / (time.perf_counter() - t0)
    print(f"teacher ViT-B-32 (random init, {vit.image_size}px from 64px inputs): {ips_vit:.1f} images/s")
    record("5 features", "ViT-B-32 images/s", f"{ips_vit:.1f}")

    # the data module's reads: memmapped points (N, 2048, 3) fp32 + view embeddings (N, 8, D) fp16 read through the
    # feature store's ShardedArray (small shards of 256 objects, so every shuffled batch gathers across shards)
    from captionless3d.teacher.sharded import ShardedArray

    n_obj, dim, shard = DEFAULT_RUN["train_objects"], tiny.dim, 256
    tmp = Path(tempfile.mkdtemp(prefix="c3d-bench-store-"))
    try:
        np.save(tmp / "points.npy", rng.standard_normal((n_obj, 2048, 3), dtype=np.float32))
        bounds = list(range(0, n_obj, shard)) + [n_obj]
        paths = [tmp / f"view_emb-{k:05d}.npy" for k in range(len(bounds) - 1)]
        for k, path in enumerate(paths):
            np.save(path, rng.standard_normal((bounds[k + 1] - bounds[k], 8, dim)).astype(np.float16))
        points = np.load(tmp / "points.npy", mmap_mode="r")
        views = ShardedArray(paths, bounds, (8, dim), np.float16, name="view_emb")
        labels = rng.integers(0, 16, n_obj)
        ds = PointViewDataset(points, views, labels, np.arange(n_obj), n_points=DEFAULT_RUN["points"],
                              rotation_degrees=45.0, random_view=True)
        B = DEFAULT_RUN["batch"]
        order = rng.permutation(n_obj)
        epochs = 1 if quick else 3
        t0 = time.perf_counter()
        for _ in range(epochs):
            for i in range(0, n_obj, B):
                ds.__getitems__(order[i: i + B].tolist())
        read_sps = epochs * n_obj / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"data module reads (PointViewDataset.__getitems__, batch {B}, {DEFAULT_RUN['points']} of 2048 points, "
          f"memmapped points + sharded view embeddings in the page cache): {read_sps:.0f} samples/s")
    record("5 features", "data module read samples/s", f"{read_sps:.0f}")
    student = CTX.get("student_samples_per_s")
    if student:
        ratio = read_sps / student
        print(f"read / student training throughput ({student:.1f} samples/s at {CTX['student_batch']}x"
              f"{DEFAULT_RUN['points']}): {ratio:.0f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})")
        record("5 features", "read / train throughput", f"{ratio:.0f}x (target >= 5x)")
    else:
        print("read / student throughput: no student throughput (section 1 did not run)")


# ------------------------------------------------------------------------------------------------------ section 6
def section_topk(quick: bool) -> None:
    script = ROOT / "benchmarks" / "bench_topk.py"
    if not script.exists():
        print("benchmarks/bench_topk.py not present; skipped")
        return
    args = ["--n", "5000", "--check-rows", "50"] if quick else ["--n", "100000"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_topk", *args], capture_output=True, text=True,
                          cwd=ROOT)
    out = proc.stdout.strip()
    print("\n".join("  " + line for line in out.splitlines()))
    if proc.returncode != 0:
        raise RuntimeError(f"bench_topk exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    ours = next((line for line in out.splitlines() if line.startswith("ours  :")), None)
    record("6 topk", f"N={args[1]} exact top-k", ours.split(":", 1)[1].strip() if ours else
           f"{time.perf_counter() - t0:.1f} s")


# ------------------------------------------------------------------------------------------------------ section 7
def section_bench_features(quick: bool) -> None:
    from benchmarks.bench_features import run

    results = run(quick=quick)
    for name, r in results.items():
        if name == "projection":
            record("7 features", f"{r['images'] / 1e6:.1f} M images at the ViT-B-32 rate",
                   f"{r['seconds'] / 3600:.1f} h")
        else:
            record("7 features", f"{name} images/s | texts/s", f"{r['images_per_s']:.1f} | {r['texts_per_s']:.1f}")


# ------------------------------------------------------------------------------------------------------ section 8
def section_search(quick: bool) -> None:
    from benchmarks.bench_search import run

    shapes = 20_000 if quick else 100_000
    for name, r in run(shapes=shapes, dim=512, k=5, queries=(1, 8), repeats=20 if quick else 50).items():
        record("8 search", f"{shapes} shapes x 512 fp16, {name}: p50 | p95",
               f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} ms")


# ------------------------------------------------------------------------------------------------------ section 9
def section_backbones(quick: bool) -> None:
    from benchmarks.bench_backbones import run

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for r in run(quick=quick, device=device):
            record("9 backbones", f"{r['name']} {device} {r['batch']}x{r['points']} train | fwd samples/s",
                   f"{r['train_samples_per_s']:.1f} | {r['fwd_samples_per_s']:.1f} ({r['vs_pointnext_s']:.2f}x "
                   "PointNeXt-S)")


SECTIONS: dict[str, tuple[str, Callable[[bool], None]]] = {
    "1": ("PointNeXt-S throughput, FLOPs, memory", section_pointnext),
    "2": ("loss", section_loss),
    "3": ("evaluation", section_eval),
    "4": ("synthetic world generation", section_world),
    "5": ("teacher features and data-module reads", section_features),
    "6": ("exact top-k", section_topk),
    "7": ("features: teacher encode throughput per backend", section_bench_features),
    "8": ("shape-index search latency", section_search),
    "9": ("backbones: train throughput per family", section_backbones),
}
SECTION_ALIASES = {"features": "7", "search": "8", "backbones": "9"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated section numbers")
    ap.add_argument("--json", help="also write the summary rows to this JSON file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"captionless3d benchmarks ({'quick' if args.quick else 'full'}): torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads, load average {load()} "
          f"(shared cores make every number here an upper bound on time)")
    t_all = time.perf_counter()
    failed = []
    for key in [SECTION_ALIASES.get(s.strip(), s.strip()) for s in args.sections.split(",") if s.strip()]:
        if key not in SECTIONS:
            print(f"section {key} failed: unknown section (known: {', '.join(SECTIONS)})")
            failed.append(key)
            continue
        title, fn = SECTIONS[key]
        print(f"\n=== section {key}: {title} (load {load()}) ===", flush=True)
        t0 = time.perf_counter()
        try:
            fn(args.quick)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next section
            print(f"section {key} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3, file=sys.stdout)
            failed.append(key)
            record(f"{key} {title.split()[0]}", "FAILED", f"{type(exc).__name__}: {str(exc)[:80]}")
        print(f"(section {key}: {time.perf_counter() - t0:.0f} s)", flush=True)

    print(f"\n=== summary ({'quick' if args.quick else 'full'}, {time.perf_counter() - t_all:.0f} s, "
          f"load average now {load()}) ===")
    w1 = max((len(s) for s, _, _ in SUMMARY), default=7)
    w2 = max((len(m) for _, m, _ in SUMMARY), default=6)
    print(f"{'section':<{w1}}  {'metric':<{w2}}  value")
    for s, m, v in SUMMARY:
        print(f"{s:<{w1}}  {m:<{w2}}  {v}")
    if failed:
        print(f"failed sections: {', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps([dict(section=s, metric=m, value=v) for s, m, v in SUMMARY], indent=1))


if __name__ == "__main__":
    main()
