"""Export a trained point encoder: TorchScript, ONNX, or safetensors weights + JSON config + a model card.

``captionless3d export --ckpt C --format torchscript|onnx|safetensors --out DIR`` (or :func:`export`).

The exported graph is the whole inference path for raw clouds: ``points (B, N, 3)`` float32 in object units (y up)
-> centre + scale into the unit sphere -> PointNeXt + projection head -> L2 normalisation -> ``embedding (B, D)``
float32. The batch axis is dynamic; ``N`` is fixed to the training config's ``data.loader.n_points`` (farthest point
sampling draws ``N // stride`` centres per stage, so the unrolled sampling loop is specific to ``N``). Callers
subsample or surface-sample to ``N`` points first (:mod:`captionless3d.api.inputs` does this for the Python API).

How the pure-PyTorch point ops are made exportable (here, without touching :mod:`captionless3d.models`):
:class:`ExportablePointEncoder` runs the same modules (same weights) through trace-friendly versions of the ops:

* farthest point sampling: the per-sample loop (``npoint - 1`` steps, vectorised over the batch) is unrolled by the
  tracer; the centre is gathered with ``torch.gather`` (no ``out=`` buffers, no batch-size constants);
* ball query: one ``(B, M, N)`` squared-distance matrix (no batch chunking, whose loop bounds the tracer would freeze),
  in-ball keys ``N..1`` as float32 (exact), ``topk``; the same semantics as :func:`captionless3d.models.ops.ball_query`;
* grouping: the reference (unfused) path of the grouped MLP: the fused op is a custom autograd function that neither
  TorchScript nor ONNX can record.

The parity tests check the exported models against the PyTorch model on random clouds (max abs diff <= 1e-4).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionless3d.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "safetensors")
TORCHSCRIPT_FILE = "point_encoder.torchscript.pt"
ONNX_FILE = "point_encoder.onnx"
SAFETENSORS_FILE = "point_encoder.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.md"
#: Default ONNX opset (ArgMax/TopK/Gather/MatMul only; onnxruntime >= 1.16 runs it).
ONNX_OPSET = 17


# --------------------------------------------------------------------------------------------------- export-friendly ops
def fps_export(xyz: Tensor, npoint: int) -> Tensor:
    """Farthest point sampling, ``xyz (B, N, 3)`` -> ``(B, npoint)`` int64, starting at index 0.

    Same arithmetic as :func:`captionless3d.models.ops.furthest_point_sample` (running minimum of
    ``(x-x_c)^2 + (y-y_c)^2 + (z-z_c)^2``, arg-max, lowest index on ties); the Python loop is unrolled when traced.
    """
    x0, x1, x2 = xyz[..., 0], xyz[..., 1], xyz[..., 2]  # (B, N)
    dist = torch.full_like(x0, 1e10)
    far = torch.zeros_like(x0[:, :1], dtype=torch.long)  # (B, 1)
    picks = [far]
    for _ in range(1, npoint):
        d0 = x0 - x0.gather(1, far)
        d1 = x1 - x1.gather(1, far)
        d2 = x2 - x2.gather(1, far)
        d = d0 * d0 + d1 * d1 + d2 * d2
        dist = torch.minimum(dist, d)
        far = dist.argmax(dim=1, keepdim=True)
        picks.append(far)
    return torch.cat(picks, dim=1)


def ball_query_export(support: Tensor, query: Tensor, radius: float, nsample: int) -> Tensor:
    """Ball query with the semantics of :func:`captionless3d.models.ops.ball_query`, without batch chunking.

    ``support (B, N, 3)``, ``query (B, M, 3)`` -> ``(B, M, nsample)`` int64: the first ``nsample`` support indices
    with squared distance ``< radius^2``, short balls padded with their first index, empty balls all 0.
    """
    n = support.shape[1]
    r2 = float(torch.tensor(radius, dtype=torch.float32) ** 2)
    k = min(nsample, n)
    sq_s = (support * support).sum(-1)  # (B, N)
    sq_q = (query * query).sum(-1)  # (B, M)
    d2 = torch.baddbmm(sq_s.unsqueeze(1), query, support.transpose(1, 2), alpha=-2.0) + sq_q.unsqueeze(-1)
    keys = torch.arange(n, 0, -1, dtype=torch.float32, device=support.device)  # N..1: larger = lower index
    key = torch.where(d2 < r2, keys, torch.zeros_like(keys))
    top = key.topk(k, dim=-1, largest=True, sorted=True).values  # (B, M, k); 0 = not in the ball
    idx = (n - top).long()
    valid = top > 0
    first = torch.where(valid[..., :1], idx[..., :1], torch.zeros_like(idx[..., :1]))
    idx = torch.where(valid, idx, first)
    if k < nsample:
        idx = torch.cat([idx, first.expand(-1, -1, nsample - k)], dim=-1)
    return idx


def _check_points(points: Tensor, n_points: int) -> Tensor:
    """Runtime input check kept in the traced TorchScript graph (scripted: a call is recorded, not evaluated)."""
    if points.dim() != 3 or points.size(1) != n_points or points.size(2) != 3:
        raise ValueError(f"points must have shape (batch, {n_points}, 3), got {points.shape}")
    return points


_SCRIPTED: dict[str, Any] = {}


def _scripted_check() -> Any:
    """:func:`_check_points` compiled with ``torch.jit.script`` on first use (not at import: torch.jit warns)."""
    if "check" not in _SCRIPTED:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            _SCRIPTED["check"] = torch.jit.script(_check_points)
    return _SCRIPTED["check"]


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, N, C)``, ``idx (B, M)`` -> ``(B, M, C)``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _group(x: Tensor, idx: Tensor) -> Tensor:
    """``x (B, N, C)``, ``idx (B, M, K)`` -> ``(B, M, K, C)``."""
    b, m, k = idx.shape
    return _gather(x, idx.reshape(b, m * k)).reshape(b, m, k, x.shape[-1])


def _bn_last(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Eval-mode BatchNorm over the last dimension as one affine map (running statistics)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return x * scale + (bn.bias - bn.running_mean * scale)


def _conv(block: nn.Module, x: Tensor) -> Tensor:
    """A :class:`~captionless3d.models.pointnext.ConvBlock` (conv [-> BN] [-> ReLU]) on channels-last ``x``."""
    y = F.linear(x, block.weight2d, block[0].bias)
    return _post(block, y)


def _post(block: nn.Module, y: Tensor) -> Tensor:
    if block.has_norm:
        y = _bn_last(block[1], y)
    if block.has_act:
        y = F.relu(y)
    return y


def _grouped(blocks: Sequence[nn.Module], p: Tensor, f: Tensor | None, centres: Tensor, nbr: Tensor, scale: float,
             reduction: str) -> Tensor:
    """``pool_k(blocks[1:](post0(W [dp/r; f_j])))`` via the split first conv (as the model's reference path)."""
    first = blocks[0]
    w = first.weight2d
    w_p = w[:, :3] * scale
    u = F.linear(p, w_p)
    if f is not None:
        u = u + F.linear(f, w[:, 3:])
    if first[0].bias is not None:
        u = u + first[0].bias
    v = F.linear(centres, w_p)
    h = _post(first, _group(u, nbr) - v.unsqueeze(2))
    for blk in blocks[1:]:
        h = _conv(blk, h)
    if reduction == "max":
        return h.max(dim=2).values
    if reduction == "mean":
        return h.mean(dim=2)
    return h.sum(dim=2)


class ExportablePointEncoder(nn.Module):
    """Raw clouds ``(B, n_points, 3)`` -> L2-normalised embeddings ``(B, D)``, traceable (module doc).

    Wraps (shares the weights of) a :class:`~captionless3d.models.heads.PointEncoder` in eval mode.
    """

    def __init__(self, model: nn.Module, n_points: int, *, normalize: bool = True, check_input: bool = False) -> None:
        super().__init__()
        from captionless3d.models.pointnext import InvResMLP, PointNextEncoder, SetAbstraction

        backbone = getattr(model, "encoder", None)
        if not isinstance(backbone, PointNextEncoder) or not hasattr(model, "head"):
            raise ConfigError(f"export: expected a PointEncoder (PointNeXt backbone + head), got {type(model).__name__}")
        for module in backbone.modules():
            if isinstance(module, SetAbstraction) and module.sampler != "fps" and not (module.is_head or module.all_aggr):
                raise ConfigError("export: only sampler='fps' is exportable (random sampling is not deterministic)")
        if n_points < backbone.min_points:
            raise ConfigError(f"export: n_points={n_points} is below the encoder's minimum {backbone.min_points}")
        self.model = model.eval()
        self.n_points = int(n_points)
        self.normalize = normalize
        self.check_input = check_input  # TorchScript only: ONNX runtimes check the static point axis themselves
        self._sa_type, self._inv_type = SetAbstraction, InvResMLP

    def _stages(self, p: Tensor, f: Tensor) -> Tensor:
        backbone = self.model.encoder
        for stage in backbone.encoder:
            cache: dict[tuple[float, int], Tensor] = {}
            for block in stage:
                if isinstance(block, self._sa_type):
                    if block.is_head:
                        for conv in block.convs:
                            f = _conv(conv, f)
                    elif block.all_aggr:
                        x = torch.cat([p, f], dim=-1)
                        for conv in block.convs:
                            x = _conv(conv, x)
                        f = x.max(dim=1, keepdim=True).values
                    else:
                        npoint = p.shape[1] // block.stride
                        idx = fps_export(p, npoint)
                        new_p = _gather(p, idx)
                        nbr = ball_query_export(p, new_p, block.radius, block.nsample)
                        scale = 1.0 / block.radius if block.normalize_dp else 1.0
                        out = _grouped(list(block.convs), p, f, new_p, nbr, scale, "max")
                        if block.use_res:
                            skip = _gather(f, idx)
                            if not isinstance(block.skipconv, nn.Identity):
                                skip = _conv(block.skipconv, skip)
                            out = F.relu(out + skip)
                        p, f = new_p, out
                elif isinstance(block, self._inv_type):
                    la = block.convs
                    key = (la.radius, la.nsample)
                    if key not in cache:
                        cache[key] = ball_query_export(p, p, la.radius, la.nsample)
                    scale = 1.0 / la.radius if la.normalize_dp else 1.0
                    h = _grouped(list(la.convs), p, f, p, cache[key], scale, la.reduction)
                    for conv in block.pwconv:
                        h = _conv(conv, h)
                    f = F.relu(h + f) if block.use_res else F.relu(h)
                else:
                    raise ConfigError(f"export: unsupported encoder block {type(block).__name__}")
        return f.max(dim=1).values

    def forward(self, points: Tensor) -> Tensor:
        if self.check_input:
            points = _scripted_check()(points, self.n_points)
        p = points.float()
        if self.normalize:
            p = p - p.mean(dim=1, keepdim=True)
            p = p / p.norm(dim=-1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        backbone = self.model.encoder
        if backbone.in_channels == 3:
            f = p
        elif backbone.in_channels == 4:
            h = p[..., backbone.height_dim:backbone.height_dim + 1]
            f = torch.cat([p, h - h.min(dim=1, keepdim=True).values], dim=-1)
        else:
            raise ConfigError(f"export: in_channels={backbone.in_channels} needs extra features; only 3 or 4 export")
        emb = self.model.head(self._stages(p, f))
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------------- exporters
def _example(n_points: int, batch: int = 2, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_points, 3, generator=g)


@torch.no_grad()
def reference_embeddings(model: nn.Module, points: Tensor) -> Tensor:
    """What the PyTorch model gives for raw clouds ``(B, N, 3)``: normalise, encode, L2-normalise (``(B, D)``)."""
    from captionless3d.data.pointcloud import normalise_unit_sphere

    emb = model.eval()(normalise_unit_sphere(points.float()))
    return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


def export_torchscript(model: nn.Module, n_points: int, path: str | os.PathLike) -> Path:
    """Trace :class:`ExportablePointEncoder` and save it (load with ``torch.jit.load``)."""
    import warnings

    from captionless3d.utils.atomic import atomic_write_with

    wrapper = ExportablePointEncoder(model, n_points, check_input=True).eval()
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream (torch 2.14) but works
        traced = torch.jit.trace(wrapper, (_example(n_points),), check_trace=False)
        atomic_write_with(path, lambda tmp: torch.jit.save(traced, str(tmp)))
    return path


def export_onnx(model: nn.Module, n_points: int, path: str | os.PathLike, *, opset: int = ONNX_OPSET) -> Path:
    """ONNX (``points (batch, n_points, 3)`` -> ``embedding (batch, D)``, dynamic ``batch``) via the TorchScript
    exporter (the FPS loop unrolled; no ``onnxscript`` needed)."""
    import io
    import warnings

    from captionless3d.utils.atomic import atomic_write_bytes

    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError as exc:
        raise ConfigError("export --format onnx needs the 'onnx' package: pip install -e '.[export]'") from exc
    wrapper = ExportablePointEncoder(model, n_points).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (_example(n_points),), buffer, dynamo=False, opset_version=opset,
            input_names=["points"], output_names=["embedding"],
            dynamic_axes={"points": {0: "batch"}, "embedding": {0: "batch"}},
        )
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _safetensors_metadata(info: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in info.items() if v is not None}


def export_safetensors(model: nn.Module, path: str | os.PathLike, info: dict[str, Any]) -> Path:
    """The encoder's ``state_dict`` (PointEncoder names, no ``encoder.`` prefix) as safetensors, with ``info``
    (teacher id, ...) in the header metadata."""
    try:
        from safetensors.torch import save
    except ImportError as exc:
        raise ConfigError("export --format safetensors needs the 'safetensors' package: pip install safetensors") from exc
    from captionless3d.utils.atomic import atomic_write_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    atomic_write_bytes(path, save(state, metadata=_safetensors_metadata(info)))
    return path


def load_safetensors_encoder(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the encoder from ``config.json`` + ``point_encoder.safetensors`` written by :func:`export`."""
    from safetensors.torch import load_file

    from captionless3d.api.model import build_encoder

    directory = Path(directory)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: unreadable export config ({exc})") from exc
    model = build_encoder({"config": {"model": config["model"]}, "teacher_dim": config["embedding_dim"]}, directory)
    try:
        state = load_file(str(directory / SAFETENSORS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{directory / SAFETENSORS_FILE}: unreadable weights ({type(exc).__name__}: {exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not fit config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), config


# --------------------------------------------------------------------------------------------------- config + card
def export_config(api_model: Any) -> dict[str, Any]:
    """What an exported model's user needs: I/O contract, preprocessing, architecture config, provenance."""
    return {
        "format": "captionless3d point encoder export",
        "format_version": 1,
        "input": {"name": "points", "shape": ["batch", api_model.n_points, 3], "dtype": "float32",
                  "units": "object units, y up; centred and scaled into the unit sphere inside the model"},
        "output": {"name": "embedding", "shape": ["batch", api_model.teacher_dim], "dtype": "float32",
                   "normalised": "L2 (cosine similarity = dot product)"},
        "preprocessing": api_model.preprocessing,
        "n_points": api_model.n_points,
        "embedding_dim": api_model.teacher_dim,
        "model": {k: v for k, v in (api_model.config.get("model") or {}).items()},
        "teacher_id": api_model.teacher_id,
        "data_fingerprint": api_model.data_fingerprint,
        "experiment": api_model.experiment,
        "prompt_template": api_model.prompt_template,
        "checkpoint": str(api_model.checkpoint) if api_model.checkpoint else None,
        "checkpoint_sha256": api_model.checkpoint_sha256,
    }


def _run_dir(api_model: Any) -> Path | None:
    candidates = []
    if api_model.checkpoint is not None:
        candidates.append(api_model.checkpoint.resolve().parent.parent)  # <run>/checkpoints/best.ckpt
    run_dir = (api_model.config.get("paths") or {}).get("run_dir")
    if run_dir:
        candidates.append(Path(str(run_dir)))
    return next((c for c in candidates if (c / "summary.json").is_file() or (c / "results").is_dir()), None)


def _results_summary(run_dir: Path | None) -> str:
    if run_dir is None:
        return "No results found next to the checkpoint (no `summary.json` or `results/` in its run directory)."
    parts = [f"From the training run directory `{run_dir}`."]
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text("utf-8"))
        except (OSError, ValueError):
            summary = {}
        for bench, metrics in (summary.get("metrics") or {}).items():
            if not isinstance(metrics, dict):
                continue
            keys = [k for k in metrics if k.startswith(("zeroshot/top", "retrieval/")) and isinstance(metrics[k], (int, float))]
            keys.sort(key=lambda k: (not k.startswith("zeroshot/"), k))  # zero-shot first, then retrieval
            rows = "\n".join(f"| {k} | {float(metrics[k]):.2f} |" for k in keys[:24])
            parts.append(f"\n### {bench} (summary.json, percent)\n\n| metric | value |\n| --- | --- |\n{rows}")
    for md in sorted((run_dir / "results").glob("*/results.md")) if (run_dir / "results").is_dir() else []:
        try:
            parts.append(f"\n### {md.parent.name} (results/{md.parent.name}/results.md)\n\n{md.read_text('utf-8').strip()}")
        except OSError:
            continue
    return "\n".join(parts)


def model_card(api_model: Any, files: Sequence[str]) -> str:
    """A short Markdown model card: provenance, I/O contract, protocol, results summary."""
    from captionless3d.evaluation.runner import PROTOCOL

    cfg = api_model.config
    model_cfg = cfg.get("model") or {}
    loss = (cfg.get("loss") or {}).get("_target_", "?")
    mining = cfg.get("mining") or {}
    return f"""# captionless3d point encoder: `{api_model.experiment or 'model'}`

A PointNeXt student trained to embed 3D point clouds into the frozen CLIP teacher's joint image/text space
(captionless training: rendered views only, hard negatives mined from CLIP knowledge).

| | |
| --- | --- |
| teacher id | `{api_model.teacher_id}` |
| embedding dim | {api_model.teacher_dim} |
| data fingerprint | `{api_model.data_fingerprint}` |
| experiment | `{api_model.experiment}` |
| backbone | `{model_cfg.get('name', '?')}` (in_channels {model_cfg.get('in_channels', '?')}, head {model_cfg.get('head_mlps', '?')}) |
| mining | kinds {mining.get('kinds', [])}, scope {mining.get('scope', 'category')} |
| loss | `{loss}` |
| checkpoint | `{api_model.checkpoint}` (sha256 `{api_model.checkpoint_sha256[:16]}…`) |
| files | {', '.join(f'`{f}`' for f in files)} |

## Input and output

* input `points`: float32 `(batch, {api_model.n_points}, 3)`, object units, y up. The exported graphs centre each cloud
  on its centroid and scale it into the unit sphere themselves. Give exactly {api_model.n_points} points per cloud
  (random subset of a larger cloud; surface samples of a mesh).
* output `embedding`: float32 `(batch, {api_model.teacher_dim})`, L2-normalised; compare with the teacher's
  (L2-normalised) image/text embeddings by dot product. Zero-shot prompt used in evaluation:
  `{api_model.prompt_template}`.

## Evaluation protocol

{PROTOCOL}

## Results

{_results_summary(_run_dir(api_model))}
"""


def export(checkpoint: str | os.PathLike, formats: str | Sequence[str], out: str | os.PathLike) -> dict[str, Any]:
    """Export ``checkpoint`` in each of ``formats`` (:data:`FORMATS`) into directory ``out``, plus ``config.json`` and
    ``model_card.md`` listing every exported file (formats exported earlier into ``out`` from the same checkpoint are
    kept in the list). Returns ``{"files": [...], "seconds": ...}``."""
    from captionless3d.api.model import load
    from captionless3d.utils.atomic import atomic_write_bytes, atomic_write_json

    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"export: --format must be among {', '.join(FORMATS)}, got {unknown or 'nothing'}")
    started = time.perf_counter()
    api_model = load(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = api_model.encoder.cpu().eval()
    config = export_config(api_model)
    files: dict[str, str] = {}
    try:  # keep what an earlier export of the same checkpoint wrote here
        previous = json.loads((out / CONFIG_FILE).read_text("utf-8"))
        if previous.get("checkpoint_sha256") == config["checkpoint_sha256"]:
            files = {k: v for k, v in (previous.get("files") or {}).items() if (out / str(v)).is_file()}
            if "onnx_opset" in previous:
                config["onnx_opset"] = previous["onnx_opset"]
    except (OSError, ValueError):
        pass
    written = []
    for fmt in formats:
        if fmt == "torchscript":
            path = export_torchscript(model, api_model.n_points, out / TORCHSCRIPT_FILE)
        elif fmt == "onnx":
            path = export_onnx(model, api_model.n_points, out / ONNX_FILE)
            config["onnx_opset"] = ONNX_OPSET
        else:
            info = {k: config[k] for k in ("teacher_id", "data_fingerprint", "experiment", "n_points", "embedding_dim")}
            path = export_safetensors(model, out / SAFETENSORS_FILE, info)
        files[fmt] = path.name
        written.append(path.name)
    config["files"] = dict(sorted(files.items()))
    atomic_write_json(out / CONFIG_FILE, config)
    atomic_write_bytes(out / CARD_FILE, model_card(api_model, [*config["files"].values(), CONFIG_FILE]).encode("utf-8"))
    return {"files": [str(out / f) for f in [*written, CONFIG_FILE, CARD_FILE]],
            "seconds": round(time.perf_counter() - started, 2)}


__all__ = [
    "FORMATS",
    "ExportablePointEncoder",
    "fps_export",
    "ball_query_export",
    "reference_embeddings",
    "export_torchscript",
    "export_onnx",
    "export_safetensors",
    "load_safetensors_encoder",
    "export_config",
    "model_card",
    "export",
]
