"""PointNeXt-S (+ [512, 256] head + 256->512 projection) on a CUDA GPU, per point-op backend: ``torch`` (our pure-
PyTorch ops), ``triton`` (``captionless3d.models.triton_ops``, compiled at run time) and ``cuda`` (OpenPoints' compiled
kernels, when the ``pointnext`` package or ``pointnet2_batch_cuda`` is importable). Prints measured numbers as JSON
lines; asserts nothing.

    python benchmarks/bench_pointnext_gpu.py --json bench_gpu.json          # the full run, one GPU, < 5 min
    python benchmarks/bench_pointnext_gpu.py --quick                        # smaller sizes
    python benchmarks/bench_pointnext_gpu.py --cpu-smoke                    # no GPU: tiny sizes, Triton interpreted

Sections (each printed as it finishes; ``--json`` writes everything at the end):

1. ``parity``: on identical GPU inputs, whole FPS index sequences (first difference reported), ball-query rows
   (mismatching rows checked for a pair within 1e-5 of the sphere boundary) and kNN rows (mismatching rows checked for
   a near tie at the k-th distance), for triton vs torch, compiled vs torch and triton vs compiled. Plus the result of
   the Triton self-check that ``ops_backend=triton`` runs. Exact agreement is expected from triton vs torch except at
   rounding-level near ties (torch's CUDA kernels may contract to FMA; ours do not).
2. ``ops``: FPS, ball query and kNN alone, per backend, at the sizes PointNeXt-S and Point-BERT use (FPS also at
   16,384 points, the largest cloud kept on chip, and at 32,768, the tiled kernel). Median of 5 CUDA-synchronised
   calls after warm-up (which includes Triton's compilation), in ms.
3. ``throughput``: samples/s of a train step (forward + backward) and of a forward pass (eval, no grad), at 32 x 2048
   and 128 x 1024 points, fp32 and bf16 autocast, plus forward 32 x 8192 fp32; per backend, plain-autograd grouped
   layers; median of 5 steps after 2 warm-up steps; peak GPU memory.
4. ``summary``: the issue's targets: train 32 x 2048 samples/s, triton vs compiled kernels (target >= 1.0x) and vs
   torch; FPS alone, triton vs torch (target >= 20x).

``--budget-s`` (default 270) skips the remaining throughput rows once the run has taken that long, so one call fits
in 5 minutes of GPU time; skipped rows are listed. ``--cpu-smoke`` checks the script itself on a machine without a
GPU: the same sections at tiny sizes on CPU, Triton in its interpreter (``TRITON_INTERPRET=1`` is set before Triton
is imported), small block constants, model tensors routed to the kernels by ``ops.kernels_on_cpu()``; its
timings mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

if __name__ == "__main__" and "--cpu-smoke" in sys.argv[1:]:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton: its library is built for one mode

import torch  # noqa: E402

from captionless3d.errors import ConfigError  # noqa: E402
from captionless3d.models import build_point_encoder, ops, triton_ops  # noqa: E402
from captionless3d.utils.timing import time_calls  # noqa: E402

#: (label, B, N, npoint): PointNeXt-S's first FPS at 2048 points; larger clouds; the tiled kernel above 16,384.
FPS_CASES = [("pointnext 32x2048->1024", 32, 2048, 1024), ("32x8192->2048", 32, 8192, 2048),
             ("on-chip max 8x16384->4096", 8, 16384, 4096), ("tiled 4x32768->2048", 4, 32768, 2048)]
#: (label, B, N support, M queries, radius, nsample): PointNeXt-S's first set abstraction; a denser cloud.
BALL_CASES = [("pointnext 32x2048, 1024 centres, r 0.15", 32, 2048, 1024, 0.15, 32),
              ("32x8192, 2048 centres, r 0.1", 32, 8192, 2048, 0.1, 32)]
#: (label, B, N, M, k): Point-BERT grouping (ULIP: 8192 points, 512 groups of 32); a small cloud.
KNN_CASES = [("point-bert 32x8192, 512 groups, k 32", 32, 8192, 512, 32),
             ("32x1024, 64 groups, k 32", 32, 1024, 64, 32)]
#: (mode, B, N, precision)
MODEL_CASES = [("train", 32, 2048, "fp32"), ("train", 32, 2048, "bf16"), ("train", 128, 1024, "fp32"),
               ("train", 128, 1024, "bf16"), ("fwd", 32, 2048, "fp32"), ("fwd", 32, 2048, "bf16"),
               ("fwd", 128, 1024, "fp32"), ("fwd", 128, 1024, "bf16"), ("fwd", 32, 8192, "fp32")]

#: parity: (B, N, npoint, k) on one cloud batch, and (N, npoint) of a second FPS above FPS_ON_CHIP_MAX (tiled)
PARITY = dict(main=(16, 2048, 512, 32), large=(20000, 256))
FULL = dict(fps=FPS_CASES, ball=BALL_CASES, knn=KNN_CASES, model=MODEL_CASES, parity=PARITY)
QUICK = dict(fps=[("16x2048->1024", 16, 2048, 1024), ("tiled 2x20000->512", 2, 20000, 512)],
             ball=[("16x2048, 512 centres, r 0.15", 16, 2048, 512, 0.15, 32)],
             knn=[("16x2048, 128 groups, k 32", 16, 2048, 128, 32)],
             model=[("train", 8, 2048, "fp32"), ("train", 8, 2048, "bf16"), ("fwd", 32, 1024, "fp32")],
             parity=PARITY)
#: --cpu-smoke: every section once at sizes Triton's interpreter runs in seconds (it pays ~5 ms per tl.* call).
#: The "large" FPS is tiled because smoke mode lowers FPS_ON_CHIP_MAX (see _interpreter_sizes).
SMOKE = dict(fps=[("1x24->6", 1, 24, 6)], ball=[("1x24, 6 centres, r 0.4", 1, 24, 6, 0.4, 8)],
             knn=[("1x24, 6 groups, k 4", 1, 24, 6, 4)], model=[("train", 2, 16, "bf16"), ("fwd", 2, 16, "fp32")],
             parity=dict(main=(2, 24, 6, 4), large=(20, 6)))


def _cloud(B: int, N: int, seed: int, device: str) -> torch.Tensor:
    """Points of a unit ball (normalised Gaussian clouds), as the PointNeXt data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    return (x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)).to(device)


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


class Backends:
    """Switches the process-wide point-op registry: ``use(name)`` for the model; the ops of each backend."""

    def __init__(self, device: str, smoke: bool):
        self.device, self.smoke = device, smoke
        self.available: dict[str, str] = {"torch": "pure PyTorch"}
        self.why_not: dict[str, str] = {}
        try:
            self.available["cuda"] = ops.enable_cuda_ops(require_device=not smoke)
        except ConfigError as exc:
            self.why_not["cuda"] = str(exc)
        try:  # with a GPU this runs the self-check; --cpu-smoke checks the kernels on CPU below
            ops.enable_triton_ops(require_device=not smoke)
            self.available["triton"] = f"triton {getattr(triton_ops.triton, '__version__', '?')}"
        except ConfigError as exc:
            self.why_not["triton"] = str(exc)
        ops.disable_cuda_ops()

    def use(self, name: str) -> None:
        if name == "torch":
            ops.disable_cuda_ops()
        elif name == "cuda":
            ops.enable_cuda_ops(require_device=not self.smoke)
        else:
            ops.enable_triton_ops(require_device=False)  # checked once in __init__

    def fps(self, name: str):
        if name == "triton":
            return triton_ops.furthest_point_sample
        self.use(name)
        return ops.furthest_point_sample

    def ball_query(self, name: str):
        if name == "triton":
            return triton_ops.ball_query
        self.use(name)
        return ops.ball_query

    def knn(self, name: str):
        if name == "triton":
            return triton_ops.knn
        self.use("torch")  # the compiled packages have no kNN: ops.knn is PyTorch unless Triton is registered
        return ops.knn


def _fps_compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    same = (a == b).all(dim=1)
    first = [int((x != y).nonzero()[0]) for x, y in zip(a, b) if not torch.equal(x, y)]
    return {"clouds": a.shape[0], "identical_sequences": int(same.sum()), "first_difference_at": first}


def _ball_compare(x, centres, radius, a, b) -> dict:
    bad = ~(a == b).all(dim=-1)
    boundary = 0
    for bi, mi in bad.nonzero().tolist():
        idx = torch.cat([a[bi, mi], b[bi, mi]]).unique()
        d2 = ((x[bi, idx].double() - centres[bi, mi].double()) ** 2).sum(-1)
        boundary += int(((d2 - radius**2).abs() < 1e-5).any())
    return {"radius": radius, "rows": int(bad.numel()), "identical_rows": int((~bad).sum()),
            "mismatches_at_boundary": boundary}


def _knn_compare(x, centres, k, a, b) -> dict:
    bad = ~(a == b).all(dim=-1)
    near_tie = 0
    for bi, mi in bad.nonzero().tolist():
        d2 = ((x[bi].double() - centres[bi, mi].double()) ** 2).sum(-1).sort().values
        near_tie += int((d2[k] - d2[k - 1]).abs() < 1e-6 or ((d2[1:k] - d2[: k - 1]).abs() < 1e-6).any())
    return {"k": k, "rows": int(bad.numel()), "identical_rows": int((~bad).sum()),
            "mismatches_with_near_ties": near_tie}


def parity(bk: Backends, device: str, sizes: dict) -> dict:
    (B, N, npoint, k), (big_n, big_npoint) = sizes["main"], sizes["large"]
    out: dict = {"backends": bk.available, "unavailable": bk.why_not}
    x = _cloud(B, N, 0, device)
    seqs = {name: bk.fps(name)(x, npoint).cpu() for name in bk.available}
    big = _cloud(2, big_n, 1, device)
    tiled = {name: bk.fps(name)(big, big_npoint).cpu() for name in bk.available}
    centres = torch.gather(x, 1, seqs["torch"].to(device).unsqueeze(-1).expand(-1, -1, 3)).contiguous()
    for a, b in (("triton", "torch"), ("cuda", "torch"), ("triton", "cuda")):
        if a not in bk.available or b not in bk.available:
            continue
        row: dict = {"fps": {**_fps_compare(seqs[a], seqs[b]), "points": N, "npoint": npoint},
                     "fps_large": {**_fps_compare(tiled[a], tiled[b]), "points": big_n, "npoint": big_npoint,
                                   "triton_kernel": "tiled" if big_n > triton_ops.FPS_ON_CHIP_MAX else "on-chip"}}
        row["ball_query"] = [_ball_compare(x, centres, r, bk.ball_query(a)(x, centres, r, k),
                                           bk.ball_query(b)(x, centres, r, k)) for r in (0.1, 0.15, 0.3)]
        if "cuda" not in (a, b):
            row["knn"] = _knn_compare(x, centres, k, bk.knn(a)(x, centres, k), bk.knn(b)(x, centres, k))
        out[f"{a}_vs_{b}"] = row
    ops.disable_cuda_ops()
    return out


def ops_alone(bk: Backends, device: str, cases: dict, warmup: int, repeats: int) -> list[dict]:
    rows = []
    jobs = [("fps", label, (B, N), lambda f, x, _n=npoint: f(x, _n)) for label, B, N, npoint in cases["fps"]]
    jobs += [("ball_query", label, (B, N, M), lambda f, x, q, _r=r, _k=k: f(x, q, _r, _k))
             for label, B, N, M, r, k in cases["ball"]]
    jobs += [("knn", label, (B, N, M), lambda f, x, q, _k=k: f(x, q, _k)) for label, B, N, M, k in cases["knn"]]
    for op, label, shape, call in jobs:
        x = _cloud(shape[0], shape[1], 2, device)
        args = (x,) if op == "fps" else (x, x[:, : shape[2]].contiguous())
        ref = None
        for name in bk.available:
            if op == "knn" and name == "cuda":
                continue
            fn = getattr(bk, op)(name)
            try:
                med = statistics.median(time_calls(lambda: call(fn, *args), device, warmup=warmup, repeats=repeats))
            except Exception as exc:  # noqa: BLE001 - report and go on
                row = {"op": op, "case": label, "backend": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            else:
                ref = med if name == "torch" else ref
                row = {"op": op, "case": label, "backend": name, "ms": round(med * 1e3, 3)}
                if ref is not None and name != "torch":
                    row["speedup_vs_torch"] = round(ref / med, 2)
            rows.append(row)
            _emit(row)
    ops.disable_cuda_ops()
    return rows


def throughput(bk: Backends, device: str, cases: list, warmup: int, repeats: int, deadline: float) -> list[dict]:
    rows = []
    dev_type = device.split(":")[0]
    for name in bk.available:
        for mode, B, N, precision in cases:
            if time.perf_counter() > deadline:
                rows.append({"backend": name, "mode": mode, "B": B, "N": N, "precision": precision,
                             "skipped": "time budget"})
                _emit(rows[-1])
                continue
            bk.use(name)
            torch.manual_seed(0)
            model = build_point_encoder("pointnext_s", fused=False).to(device)
            x = _cloud(B, N, 1, device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()

            def step():
                with torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    if mode == "train":
                        model.train()
                        model.zero_grad(set_to_none=True)
                        model(x).float().square().mean().backward()
                    else:
                        model.eval()
                        with torch.no_grad():
                            model(x)

            t0 = time.perf_counter()
            row = {"backend": name, "mode": mode, "B": B, "N": N, "precision": precision}
            try:
                med = statistics.median(time_calls(step, device, warmup=warmup, repeats=repeats))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                row.update(step_s=round(med, 4), samples_per_s=round(B / med, 1),
                           wall_s=round(time.perf_counter() - t0, 1))
                if device.startswith("cuda"):
                    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            rows.append(row)
            _emit(row)
            model = None  # free it (step() above reads the name, so it is rebound, not deleted)
    ops.disable_cuda_ops()
    return rows


def summary(op_rows: list[dict], model_rows: list[dict], cases: dict) -> dict:
    mode, B, N, precision = cases["model"][0]
    sps = {r["backend"]: r.get("samples_per_s") for r in model_rows
           if (r["mode"], r["B"], r["N"], r["precision"]) == (mode, B, N, precision)}
    out: dict = {f"{mode} {B}x{N} {precision} samples/s": sps}
    if sps.get("triton") and sps.get("cuda"):
        out["triton / compiled kernels (target >= 1.0)"] = round(sps["triton"] / sps["cuda"], 2)
    if sps.get("triton") and sps.get("torch"):
        out["triton / torch"] = round(sps["triton"] / sps["torch"], 2)
    fps_case = cases["fps"][0][0]
    ms = {r["backend"]: r.get("ms") for r in op_rows if r["op"] == "fps" and r["case"] == fps_case}
    out[f"FPS {fps_case} ms"] = ms
    if ms.get("triton") and ms.get("torch"):
        out["FPS torch / triton (target >= 20)"] = round(ms["torch"] / ms["triton"], 1)
    return out


@contextlib.contextmanager
def _interpreter_sizes():
    """--cpu-smoke: block constants small enough for Triton's interpreter (and FPS tiled above 16 points); restored
    afterwards. The kernels' own tests cover the real constants."""
    names = dict(FPS_ON_CHIP_MAX=16, FPS_TILE=8, BALL_QUERY_BLOCK_M=4, BALL_QUERY_BLOCK_N=8, KNN_BLOCK_M=4,
                 KNN_BLOCK_N=8)
    saved = {n: getattr(triton_ops, n) for n in names}
    for n, v in names.items():
        setattr(triton_ops, n, v)
    try:
        with ops.kernels_on_cpu():  # the model's CPU tensors go to the registered (interpreted) kernels
            yield
    finally:
        for n, v in saved.items():
            setattr(triton_ops, n, v)


def matmul_tflops(device: str, n: int = 8192) -> float:
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = time_calls(lambda: torch.mm(a, b), device, warmup=2, repeats=5)
    return 2 * n**3 / min(times) / 1e12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a first look)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: tiny sizes on CPU with Triton's interpreter, to check the script runs")
    ap.add_argument("--budget-s", type=float, default=270.0,
                    help="skip the remaining throughput rows after this many seconds (default 270)")
    ap.add_argument("--json", help="also write every result to this file")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        args.device = "cpu"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.cpu_smoke:
        if not triton_ops.available() or not triton_ops.interpreting():
            sys.exit("--cpu-smoke needs Triton in interpreter mode: run this script as the main program (it sets "
                     "TRITON_INTERPRET=1 before importing triton), or start the process with TRITON_INTERPRET=1")
        sizes, cases, warmup, repeats = "smoke", SMOKE, 0, 1
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible; use --cpu-smoke to check the script without a GPU")
    elif args.quick:
        sizes, cases, warmup, repeats = "quick", QUICK, 1, 3
    else:
        sizes, cases, warmup, repeats = "full", FULL, 2, 5
    result: dict = {"torch": torch.__version__, "triton": getattr(triton_ops.triton, "__version__", None),
                    "sizes": sizes}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["fp32_matmul_tflops_no_tf32"] = round(matmul_tflops(args.device), 1)
    _emit(result)
    with _interpreter_sizes() if args.cpu_smoke else contextlib.nullcontext():
        bk = Backends(args.device, smoke=args.cpu_smoke)
        result["parity"] = parity(bk, args.device, cases["parity"])
        _emit({"parity": result["parity"]})
        result["ops"] = ops_alone(bk, args.device, cases, warmup, repeats)
        result["throughput"] = throughput(bk, args.device, cases["model"], warmup, repeats,
                                          deadline=start + args.budget_s)
    result["summary"] = summary(result["ops"], result["throughput"], cases)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    _emit({"summary": result["summary"], "wall_s": result["wall_s"]})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
