"""PointNeXt-S (+ [512, 256] head + 256->512 projection) speed on this CPU. Prints numbers; asserts nothing.

    .venv/bin/python benchmarks/bench_pointnext.py                 # batch 32 x {512, 1024, 2048} train, 8192 fwd
    .venv/bin/python benchmarks/bench_pointnext.py --quick         # batch 8, fewer repeats
    .venv/bin/python benchmarks/bench_pointnext.py --reference     # plain-autograd path instead of the fused one

Each configuration runs in its own subprocess (so peak RSS is per configuration). Reported:

* samples/s of a train step (forward + backward of encoder + head) and of forward-only (no grad, eval);
* peak RSS of the subprocess;
* FLOPs: the OpenPoints architecture's forward FLOPs per sample (``torch.utils.flop_counter`` on the plain-autograd
  path, plus the first grouped conv counted as OpenPoints computes it, i.e. on every neighbour) and the FLOPs this
  implementation actually executes per train step (FlopCounterMode over forward + backward);
* this CPU's fp32 matmul GFLOP/s (square 2048 GEMM, same thread count, same process) and achieved % of it;
* share of step time in FPS + ball query + gathers (wrappers around the ops) and in the fused op's index
  gathers/scatters (``index_select``/``index_add_``, from the profiler).

The cores may be shared with other processes: the load average is printed with every run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def openpoints_forward_flops(N: int) -> float:
    """Forward FLOPs per sample of the OpenPoints PointNeXt-S + [512,256] head + 256->512 (analytic, 2 per MAC)."""
    from captionless3d.models import build_point_encoder

    model = build_point_encoder("pointnext_s")
    macs = 0
    n = N
    for stage in model.encoder.encoder:
        for block in stage:
            if block.is_head:
                macs += n * block.convs[0].in_channels * block.convs[0].out_channels
            elif block.all_aggr:
                macs += n * sum(c.in_channels * c.out_channels for c in block.convs)
            else:
                m = n // block.stride
                rows = m * block.nsample
                macs += rows * sum(c.in_channels * c.out_channels for c in block.convs)
                if block.use_res and not isinstance(block.skipconv, torch.nn.Identity):
                    macs += m * block.skipconv.in_channels * block.skipconv.out_channels
                n = m
    for mod in model.head.modules():
        if isinstance(mod, torch.nn.Linear):
            macs += mod.in_features * mod.out_features
    return 2.0 * macs


def run_one(cfg: dict) -> dict:
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    import captionless3d.models.pointnext as pn
    from captionless3d.models import build_point_encoder

    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    B, N, train = cfg["batch"], cfg["points"], cfg["train"]
    backend = cfg.get("backend", "torch")
    model = build_point_encoder("pointnext_s", fused=not cfg.get("reference", False))
    x = torch.randn(B, N, 3)
    x = x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)
    max_diff = None
    if backend != "torch":
        from captionless3d.models.factory import apply_ops_backend

        twin = build_point_encoder("pointnext_s", fused=not cfg.get("reference", False))
        twin.load_state_dict(model.state_dict())
        apply_ops_backend(model, backend)

    op_time = {"t": 0.0}

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                op_time["t"] += time.perf_counter() - t0

        return wrapper

    for name in ("furthest_point_sample", "ball_query", "gather_points", "group_points"):
        setattr(pn, name, timed(getattr(pn, name)))

    def step():
        if train:
            model.train()
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    t0 = time.perf_counter()
    if backend != "torch":  # same weights and BN statistics: compare before any train step changes them
        # train configs compare the backbone in train mode (batch statistics; the head's dropout draws differ
        # between eager and compiled code), forward configs the whole model in eval mode
        model.train(train)
        twin.train(train)
        with torch.no_grad():
            if train:
                max_diff = (model.encoder(x) - twin.encoder(x)).abs().max().item()
            else:
                max_diff = (model(x) - twin(x)).abs().max().item()
    step()  # warm-up (includes compilation for backend=compile)
    warmup_s = time.perf_counter() - t0
    times, op_share = [], []
    for _ in range(cfg["repeats"]):
        op_time["t"] = 0.0
        t0 = time.perf_counter()
        step()
        dt = time.perf_counter() - t0
        times.append(dt)
        op_share.append(op_time["t"] / dt)
    t = statistics.median(times)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the profiler's own memory

    executed = gather_share = None
    if cfg.get("details", True):
        # FlopCounterMode and the profiler only see the calling thread: count with the hot loops on it alone
        import captionless3d.models.ops as ops

        ops.HOT_LOOP_WORKERS = 1
        try:
            with FlopCounterMode(display=False) as fc:
                step()
            executed = fc.get_total_flops()
        except Exception:  # noqa: BLE001 - e.g. a compiled graph that the flop counter cannot see into
            executed = None
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            ev = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
            total = sum(ev.values())
            gather_share = (ev.get("aten::index_select", 0) + ev.get("aten::index_add_", 0)) / max(total, 1)
        except Exception:  # noqa: BLE001
            gather_share = None
        ops.HOT_LOOP_WORKERS = None

    gf = matmul_gflops()
    ref_fwd = openpoints_forward_flops(N)
    arch_flops = ref_fwd * B * (3 if train else 1)
    return {
        **cfg,
        "threads_used": torch.get_num_threads(),
        "step_s": t,
        "step_s_all": times,
        "samples_per_s": B / t,
        "peak_rss_mb": peak_rss_mb,
        "openpoints_fwd_gflop_per_sample": ref_fwd / 1e9,
        "executed_gflop_per_step": executed / 1e9 if executed is not None else None,
        "arch_gflop_per_s": arch_flops / t / 1e9,
        "executed_gflop_per_s": executed / t / 1e9 if executed is not None else None,
        "backend": backend,
        "warmup_s": warmup_s,
        "max_abs_diff_vs_torch": max_diff,
        "matmul_peak_gflop_per_s": gf,
        "ops_share": statistics.median(op_share),
        "fused_gather_share": gather_share,
        "load_avg": os.getloadavg(),
    }


def _f(value, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def run_config(cfg: dict) -> dict:
    """:func:`run_one` in a fresh subprocess (so peak RSS is per configuration); raises RuntimeError on failure."""
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-600:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--points", type=int, nargs="*", default=[512, 1024, 2048])
    ap.add_argument("--fwd-points", type=int, nargs="*", default=[8192])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--reference", action="store_true", help="plain-autograd grouped layers instead of fused")
    ap.add_argument("--quick", action="store_true", help="batch 8, 1024 points, 1 repeat")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    if args.quick:
        args.batch, args.points, args.fwd_points, args.repeats = 8, [1024], [2048], 1
    cfgs = [dict(points=n, train=True) for n in args.points] + [dict(points=n, train=False) for n in args.fwd_points]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads={args.threads or torch.get_num_threads()}, "
          f"path={'reference' if args.reference else 'fused'}, batch={args.batch}")
    header = (f"{'mode':<6}{'N':>6}{'step s':>9}{'samp/s':>9}{'RSS MB':>9}{'OP GF/s':>9}{'fwd GF':>8}"
              f"{'exec GF':>9}{'exec/s':>8}{'peak':>7}{'%peak':>7}{'%exec':>7}{'ops%':>6}{'gath%':>6}  load")
    print(header)
    for c in cfgs:
        cfg = dict(c, batch=args.batch, repeats=args.repeats, threads=args.threads, reference=args.reference)
        try:
            r = run_config(cfg)
        except RuntimeError as exc:
            print(f"{'train' if c['train'] else 'fwd':<6}{c['points']:>6}  FAILED: {str(exc)[-300:]}")
            continue
        print(
            f"{'train' if r['train'] else 'fwd':<6}{r['points']:>6}{r['step_s']:>9.2f}{r['samples_per_s']:>9.1f}"
            f"{r['peak_rss_mb']:>9.0f}{r['arch_gflop_per_s']:>9.1f}{r['openpoints_fwd_gflop_per_sample']:>8.2f}"
            f"{_f(r['executed_gflop_per_step'], 9, 1)}{_f(r['executed_gflop_per_s'], 8, 1)}"
            f"{r['matmul_peak_gflop_per_s']:>7.0f}"
            f"{100 * r['arch_gflop_per_s'] / r['matmul_peak_gflop_per_s']:>7.1f}"
            f"{_f(r['executed_gflop_per_s'] and 100 * r['executed_gflop_per_s'] / r['matmul_peak_gflop_per_s'], 7, 1)}"
            f"{100 * r['ops_share']:>6.1f}{_f(r['fused_gather_share'] and 100 * r['fused_gather_share'], 6, 1)}  "
            f"{' '.join(f'{x:.1f}' for x in r['load_avg'])}",
            flush=True,
        )
    print("OP GF/s: OpenPoints-architecture FLOPs (fwd x3 for train) / step time; exec: FLOPs this code runs; "
          "peak: fp32 2048^3 GEMM; ops%: FPS+ball query+gathers outside the fused op; gath%: index_select/"
          "index_add_ (profiler self time)")


if __name__ == "__main__":
    main()
