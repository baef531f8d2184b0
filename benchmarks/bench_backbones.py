"""Training throughput of every backbone family at its small preset (the CPU world's models). Prints numbers;
asserts nothing.

    .venv/bin/python -m benchmarks.bench_backbones              # batch 32 x 256 points (docs/studies/backbones.yaml)
    .venv/bin/python -m benchmarks.bench_backbones --quick      # batch 8, fewer repeats
    .venv/bin/python -m benchmarks.bench_backbones --device cuda --batch 64 --points 1024

Each model is built as its ``configs/model/<name>.yaml`` builds it (backbone + head to a 512-d embedding; PointNeXt-S
with the paper's [512, 256] head, the others with ULIP's single projection) and timed on random clouds in the unit
ball:

* ``train samples/s``: forward + backward + Adam step, loss = mean squared embedding; median of ``repeats`` steps
  after one warm-up step (the first step pays for lazy initialisation);
* ``fwd samples/s``: eval mode, no grad;
* ``x PointNeXt-S``: train throughput relative to PointNeXt-S in the same run (the cores may be shared: ratios from
  one run are steadier than absolute numbers across runs).

The cores may be shared with other processes: the load average is printed at the start and the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import torch

#: (config name, build_point_encoder kwargs as configs/model/<name>.yaml sets them)
MODELS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("pointnext_s", dict(head_mlps=(512, 256))),
    ("pointnet2_ssg_small", dict(head_mlps=())),
    ("pointbert_small", dict(head_mlps=())),
    ("openshape_pointbert_b32_small", dict(head_mlps=(), in_channels=6, constant_rgb=0.4)),
)


def measure(name: str, kwargs: dict[str, Any], *, batch: int, points: int, repeats: int,
            device: torch.device) -> dict[str, Any]:
    """Train-step and forward throughput of one model (module doc)."""
    from captionless3d.models import build_point_encoder
    from captionless3d.utils.timing import time_calls

    torch.manual_seed(0)
    model = build_point_encoder(name, embed_dim=512, **kwargs).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, points, 3, generator=g)
    x = (x / x.norm(dim=-1, keepdim=True) * torch.rand(batch, points, 1, generator=g) ** (1 / 3)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    def forward() -> None:
        with torch.no_grad():
            model(x)

    model.train()
    t_train = statistics.median(time_calls(train_step, device, repeats=repeats))
    model.eval()
    t_fwd = statistics.median(time_calls(forward, device, repeats=repeats))
    return {"name": name, "params": sum(p.numel() for p in model.parameters()), "batch": batch, "points": points,
            "device": str(device), "train_step_s": t_train, "train_samples_per_s": batch / t_train,
            "fwd_samples_per_s": batch / t_fwd}


def run(*, quick: bool = False, device: str = "cpu", batch: int | None = None, points: int = 256,
        repeats: int | None = None) -> list[dict[str, Any]]:
    """Measure every model of :data:`MODELS`; prints one table and returns its rows."""
    dev = torch.device(device)
    batch = batch or (8 if quick else 32)
    repeats = repeats or (2 if quick else 3)
    rows = []
    print(f"backbones, {dev}, batch {batch} x {points} points, {torch.get_num_threads()} threads, load "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'model':<32}{'params':>12}{'train samp/s':>14}{'fwd samp/s':>12}{'x PointNeXt-S':>15}")
    for name, kwargs in MODELS:
        try:
            r = measure(name, kwargs, batch=batch, points=points, repeats=repeats, device=dev)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next model
            print(f"{name:<32}  FAILED: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        rows.append(r)
        base = next((row for row in rows if row["name"] == "pointnext_s"), None)
        ratio = r["train_samples_per_s"] / base["train_samples_per_s"] if base else float("nan")
        r["vs_pointnext_s"] = ratio
        print(f"{name:<32}{r['params']:>12,}{r['train_samples_per_s']:>14.1f}{r['fwd_samples_per_s']:>12.1f}"
              f"{ratio:>15.2f}", flush=True)
    print(f"(load average now {' '.join(f'{v:.1f}' for v in os.getloadavg())})")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 8, 2 repeats")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    run(quick=args.quick, device=args.device, batch=args.batch, points=args.points, repeats=args.repeats)


if __name__ == "__main__":
    main()
