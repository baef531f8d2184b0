"""PointNeXt-S (+ [512, 256] head + 256->512 projection) on a CUDA GPU. Prints measured numbers; asserts nothing.

    python benchmarks/bench_pointnext_gpu.py [--quick] [--json out.json] [--device cuda]

1. Parity: our pure-PyTorch FPS and ball query (run on the GPU) against the compiled OpenPoints kernels (as shipped
   by the ``pointnext`` package, ``pip install -e ".[cuda]"``) on identical inputs. FPS is compared as whole index
   sequences; where they differ, the position of the first difference is reported (the CUDA kernel contracts to FMA
   and breaks exact ties in thread order, so long sequences may part ways at a near-tie). Ball query is compared on
   the same centres per row; mismatching rows are checked for a pair within 1e-5 of the sphere boundary.
2. Throughput per configuration: point ops ``torch`` (ours) or ``cuda`` (compiled kernels) x grouped layers fused
   (the CPU-oriented chunked path) or plain autograd; train step (forward + backward, fp32 and bf16 autocast) at
   32 x 2048, forward (eval, no grad) at 128 x 1024 (the PointNeXt paper quotes ~2,000 samples/s for PointNeXt-S at
   1,024 points on a V100) and 32 x 8192. CUDA-event timing after warm-up; peak GPU memory per configuration.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from captionless3d.errors import ConfigError
from captionless3d.models import build_point_encoder
from captionless3d.models import ops


def _cloud(B: int, N: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    return (x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)).to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def parity(device: str) -> dict:
    try:
        source = ops.enable_cuda_ops(require_device=device.startswith("cuda"))
    except ConfigError as exc:
        return {"available": False, "why": str(exc)}
    cuda_fps, cuda_bq = ops._CUDA_OPS["fps"], ops._CUDA_OPS["ball_query"]
    ops.disable_cuda_ops()  # from here on ops.* run our PyTorch code, on the GPU
    out: dict = {"available": True, "kernels": source}
    x = _cloud(16, 2048, 0, device)
    ours = ops.furthest_point_sample(x, 512)
    theirs = cuda_fps(x.contiguous(), 512).long()
    same = (ours == theirs).all(dim=1)
    first_diff = [int((o != t).nonzero()[0]) for o, t in zip(ours, theirs) if not torch.equal(o, t)]
    out["fps"] = {"clouds": 16, "points": 2048, "npoint": 512, "identical_sequences": int(same.sum()),
                  "first_difference_at": first_diff}
    centres = torch.gather(x, 1, theirs.unsqueeze(-1).expand(-1, -1, 3)).contiguous()
    out["ball_query"] = []
    for radius in (0.1, 0.15, 0.3):
        a = ops.ball_query(x, centres, radius, 32)
        b = cuda_bq(x.contiguous(), centres, radius, 32).long()
        bad = ~(a == b).all(dim=-1)
        rows = bad.nonzero()
        boundary = 0
        for bi, mi in rows.tolist():
            idx = torch.cat([a[bi, mi], b[bi, mi]]).unique()
            d2 = ((x[bi, idx].double() - centres[bi, mi].double()) ** 2).sum(-1)
            boundary += int(((d2 - radius**2).abs() < 1e-5).any())
        out["ball_query"].append({"radius": radius, "rows": int(bad.numel()), "identical_rows": int((~bad).sum()),
                                  "mismatches_at_boundary": boundary})
    return out


def _time(fn, device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def throughput(device: str, quick: bool, cuda_ok: bool) -> list[dict]:
    rows = []
    configs = [("train", 32, 2048, "fp32"), ("train", 32, 2048, "bf16"), ("fwd", 128, 1024, "fp32"),
               ("fwd", 32, 8192, "fp32")]
    if quick:
        configs = [("train", 8, 1024, "fp32"), ("fwd", 16, 1024, "fp32")]
    for backend in ("cuda", "torch") if cuda_ok else ("torch",):
        for fused in (False, True):
            for mode, B, N, precision in configs:
                if fused and (mode != "train" or precision != "fp32"):
                    continue  # the fused path is CPU-oriented: one train configuration shows its GPU cost
                if backend == "cuda":
                    ops.enable_cuda_ops(require_device=device.startswith("cuda"))
                else:
                    ops.disable_cuda_ops()
                torch.manual_seed(0)
                model = build_point_encoder("pointnext_s", fused=fused).to(device)
                x = _cloud(B, N, 1, device)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()

                def step():
                    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                                        enabled=precision == "bf16"):
                        if mode == "train":
                            model.train()
                            model.zero_grad(set_to_none=True)
                            model(x).float().square().mean().backward()
                        else:
                            model.eval()
                            with torch.no_grad():
                                model(x)

                t0 = time.perf_counter()
                try:
                    times = _time(step, device, warmup=1 if quick else 2, repeats=2 if quick else 5)
                except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
                    rows.append({"backend": backend, "fused": fused, "mode": mode, "B": B, "N": N,
                                 "precision": precision, "error": f"{type(exc).__name__}: {exc}"[:300]})
                    continue
                med = statistics.median(times)
                row = {"backend": backend, "fused": fused, "mode": mode, "B": B, "N": N, "precision": precision,
                       "step_s": round(med, 4), "samples_per_s": round(B / med, 1),
                       "wall_s": round(time.perf_counter() - t0, 1)}
                if device.startswith("cuda"):
                    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ops.disable_cuda_ops()
    return rows


def matmul_tflops(device: str, n: int = 8192) -> float:
    torch.backends.cuda.matmul.allow_tf32 = False
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = _time(lambda: torch.mm(a, b), device, warmup=2, repeats=5)
    return 2 * n**3 / min(times) / 1e12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write every result to this file")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible; use --device cpu for a smoke run")
    result: dict = {"torch": torch.__version__}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["fp32_matmul_tflops_no_tf32"] = round(matmul_tflops(args.device), 1)
    print(json.dumps(result), flush=True)
    result["parity"] = parity(args.device)
    print(json.dumps(result["parity"]), flush=True)
    result["throughput"] = throughput(args.device, args.quick, result["parity"].get("available", False))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
