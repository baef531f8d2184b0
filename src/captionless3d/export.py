"""Export a trained point encoder: TorchScript, ONNX, or safetensors weights + JSON config + a model card.

``captionless3d export --ckpt C --format torchscript|onnx|safetensors --out DIR`` (or :func:`export`).

The exported graph is the whole inference path for raw clouds, :func:`reference_embeddings`: ``points (B, N, 3)``
float32 in object units (y up) -> :func:`~captionless3d.data.pointcloud.normalise_unit_sphere` -> the encoder's own
``forward`` (backbone + projection head) -> L2 normalisation -> ``embedding (B, D)`` float32. The batch axis is
dynamic; ``N`` is fixed to the training config's ``data.loader.n_points`` (farthest point sampling draws a fixed number
of centres per stage, so the unrolled sampling loop is specific to ``N``). Callers subsample or surface-sample to
``N`` points first (:mod:`captionless3d.api.inputs` does this for the Python API).

Nothing of the model is re-implemented here: :class:`ExportablePointEncoder` runs the encoder inside
:func:`captionless3d.models.ops.export_mode`, where the point ops (FPS, ball query, kNN) and the grouped layers
take their traceable paths with the same results, and ``torch.jit.trace`` / ``torch.onnx.export`` record that
``forward``. Every backbone of the registry exports this way (PointNeXt, PointNet++, Point-BERT, OpenShape's
PointPatchTransformer), provided its input features follow from xyz alone (:func:`check_exportable`).

The parity tests check the exported models against the PyTorch model on random clouds (max abs diff <= 1e-4).
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captionless3d.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx", "safetensors")
TORCHSCRIPT_FILE = "point_encoder.torchscript.pt"
ONNX_FILE = "point_encoder.onnx"
SAFETENSORS_FILE = "point_encoder.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "model_card.md"
#: Default ONNX opset (ArgMax/ArgMin/TopK/Gather/MatMul, and the transformer backbones' attention; onnxruntime >=
#: 1.16 runs it).
ONNX_OPSET = 17


# --------------------------------------------------------------------------------------------------- the graph
def _embed(model: nn.Module, points: Tensor) -> Tensor:
    """Raw clouds ``(B, N, 3)`` -> L2-normalised ``(B, D)``: unit sphere, the encoder's forward, L2."""
    from captionless3d.data.pointcloud import normalise_unit_sphere

    emb = model(normalise_unit_sphere(points.float()))
    return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def reference_embeddings(model: nn.Module, points: Tensor) -> Tensor:
    """What the PyTorch model gives for raw clouds ``(B, N, 3)``: normalise, encode, L2-normalise (``(B, D)``)."""
    return _embed(model.eval(), points)


def check_exportable(model: nn.Module, n_points: int) -> None:
    """Raise :class:`ConfigError` unless ``model`` can be exported for clouds of ``n_points`` points: a
    :class:`~captionless3d.models.heads.PointEncoder` whose backbone is one of the package's (PointNeXt or a
    :class:`~captionless3d.models.backbone.PointBackbone`), samples deterministically (FPS, not ``sampler=random``),
    needs at most ``n_points`` points and derives its input features from xyz (the exported graph's only input):
    ``in_channels`` 3, PointNeXt's 4 (xyz + height), or xyz + rgb with a ``constant_rgb``."""
    from captionless3d.models.backbone import PointBackbone
    from captionless3d.models.heads import PointEncoder
    from captionless3d.models.pointnext import PointNextEncoder, SetAbstraction

    if not isinstance(model, PointEncoder):
        raise ConfigError(f"export: expected a captionless3d.models.PointEncoder (backbone + projection head), "
                          f"got {type(model).__name__}")
    backbone = model.encoder
    name = type(backbone).__name__
    if isinstance(backbone, PointNextEncoder):
        if backbone.in_channels not in (3, 4):
            raise ConfigError(f"export: {name} with in_channels={backbone.in_channels} needs per-point features "
                              "besides xyz; the exported graph takes xyz only (in_channels 3, or 4 = xyz + height)")
        random = [m for m in backbone.modules() if isinstance(m, SetAbstraction) and m.sampler != "fps"
                  and not (m.is_head or m.all_aggr)]
        if random:
            raise ConfigError(f"export: {name} samples with sampler={random[0].sampler!r}; only sampler='fps' is "
                              "exportable (random sampling is not deterministic)")
    elif isinstance(backbone, PointBackbone):
        if backbone.in_channels != 3 and backbone.constant_rgb is None:
            raise ConfigError(f"export: {name} takes {backbone.in_channels} input channels and was built without "
                              "constant_rgb; the exported graph takes xyz only (in_channels 3, or xyz + rgb with "
                              "model.constant_rgb set, e.g. OpenShape's 0.4)")
    else:
        raise ConfigError(f"export: the backbone {name} is not one of captionless3d.models' backbones "
                          "(PointNextEncoder, PointNet2SSG, PointBERT, PointPatchTransformer); only those export")
    if n_points < backbone.min_points:
        raise ConfigError(f"export: n_points={n_points} is below {name}'s minimum {backbone.min_points}")


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


class ExportablePointEncoder(nn.Module):
    """Raw clouds ``(B, n_points, 3)`` -> L2-normalised embeddings ``(B, D)``: :func:`reference_embeddings` with the
    point ops in :func:`~captionless3d.models.ops.export_mode`, so a tracer records it (module doc).

    Wraps (shares the weights of) a :class:`~captionless3d.models.heads.PointEncoder`, put in eval mode;
    :func:`check_exportable` first. ``check_input`` (TorchScript only; ONNX runtimes check the static point axis
    themselves) keeps a shape check of ``points`` in the graph.
    """

    def __init__(self, model: nn.Module, n_points: int, *, check_input: bool = False) -> None:
        super().__init__()
        check_exportable(model, n_points)
        self.model = model.eval()
        self.n_points = int(n_points)
        self.check_input = check_input

    def forward(self, points: Tensor) -> Tensor:
        from captionless3d.models.ops import export_mode

        if self.check_input:
            points = _scripted_check()(points, self.n_points)
        with export_mode():
            return _embed(self.model, points)


# --------------------------------------------------------------------------------------------------- exporters
def _example(n_points: int, batch: int = 2, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_points, 3, generator=g)


def export_torchscript(model: nn.Module, n_points: int, path: str | os.PathLike) -> Path:
    """Trace :class:`ExportablePointEncoder` and save it (load with ``torch.jit.load``), without the tracer's debug
    records (:func:`_without_debug_records`)."""
    import io
    import warnings

    from captionless3d.utils.atomic import atomic_write_bytes

    wrapper = ExportablePointEncoder(model, n_points, check_input=True).eval()
    path = Path(path)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream (torch 2.14) but works
        traced = torch.jit.trace(wrapper, (_example(n_points),), check_trace=False)
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, _without_debug_records(buffer.getvalue()))
    return path


def _without_debug_records(archive: bytes) -> bytes:
    """A TorchScript archive without its ``*.debug_pkl`` records: they hold the Python call stack of the trace (the
    absolute paths of the exporting machine's source files and scripts) and are optional for ``torch.jit.load``,
    whose errors then cite the serialized code instead of the original source lines."""
    import io

    reader = torch._C.PyTorchFileReader(io.BytesIO(archive))
    out = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(out)
    for name in reader.get_all_records():
        if not name.endswith(".debug_pkl"):
            data = reader.get_record(name)
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return out.getvalue()


def export_onnx(model: nn.Module, n_points: int, path: str | os.PathLike, *, opset: int = ONNX_OPSET) -> Path:
    """ONNX (``points (batch, n_points, 3)`` -> ``embedding (batch, D)``, dynamic ``batch``) via the TorchScript
    exporter (the sampling loops unrolled; no ``onnxscript`` needed)."""
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
        raise ConfigError("export --format safetensors needs the 'safetensors' package: pip install "
                          "safetensors") from exc
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
        raise CheckpointError(f"{directory / SAFETENSORS_FILE}: unreadable weights ({type(exc).__name__}: "
                              f"{exc})") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{directory}: weights do not fit config.json: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}")
    return model.eval(), config


# --------------------------------------------------------------------------------------------------- machine paths
#: What the training run's ``paths.*`` directories become in exported files: the project's default relative ones
#: (``configs/paths/default.yaml`` with ``root_dir: .``), so ``captionless3d.load(..., cache_dir=...)`` re-roots them.
PORTABLE_ROOTS = {"output_dir": "./outputs", "cache_dir": "./.cache", "data_dir": "./data", "root_dir": "."}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def machine_paths(api_model: Any) -> list[tuple[str, str]]:
    """``(absolute path on the exporting machine, its portable replacement)``, longest first: the run's ``paths.*``
    directories (:data:`PORTABLE_ROOTS`; a run directory outside them becomes ``./outputs/<its name>``), the
    checkpoint file (its name), and the working and home directories (``.``, ``~``) as a last resort."""
    paths = api_model.config.get("paths") or {}
    found: dict[str, str] = {}

    def add(path: Any, portable: str) -> None:
        if isinstance(path, (str, os.PathLike)) and os.path.isabs(path):
            path = os.path.normpath(os.fspath(path))
            if len(Path(path).parts) > 1:  # never the file-system root itself
                found.setdefault(path, portable)

    for key, portable in PORTABLE_ROOTS.items():
        add(paths.get(key), portable)
    run_dir = paths.get("run_dir")
    if isinstance(run_dir, str) and os.path.isabs(run_dir) and not any(_under(run_dir, root) for root in found):
        add(run_dir, f"./outputs/{Path(run_dir).name}")
    if api_model.checkpoint is not None:
        add(api_model.checkpoint, api_model.checkpoint.name)
        add(api_model.checkpoint.resolve(), api_model.checkpoint.name)
    add(Path.cwd(), ".")
    add(Path.home(), "~")
    return sorted(found.items(), key=lambda item: -len(item[0]))


def portable_text(text: str, roots: Sequence[tuple[str, str]]) -> str:
    """``text`` with every occurrence of a :func:`machine_paths` prefix (whole path components only) replaced."""
    for path, portable in roots:
        text = re.sub(rf"(?<![\w.-]){re.escape(path)}(?![\w-]|\.[\w-])", lambda _, p=portable: p, text)
    return text


def portable_config(obj: Any, roots: Sequence[tuple[str, str]]) -> Any:
    """A nested dict/list config with :func:`portable_text` applied to every string; an absolute path still left (one
    outside the run's directories: a resumed checkpoint, released weights) keeps only its file name."""
    if isinstance(obj, dict):
        return {k: portable_config(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_config(v, roots) for v in obj]
    if isinstance(obj, str):
        obj = portable_text(obj, roots)
        return (Path(obj).name or obj) if os.path.isabs(obj) else obj
    return obj


# --------------------------------------------------------------------------------------------------- config + card
def export_config(api_model: Any) -> dict[str, Any]:
    """What an exported model's user needs: I/O contract, preprocessing, architecture config, provenance. No path of
    the exporting machine: the checkpoint is named by its file name (and hash), the model config by
    :func:`portable_config`."""
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
        "model": portable_config(dict(api_model.config.get("model") or {}), machine_paths(api_model)),
        "teacher_id": api_model.teacher_id,
        "data_fingerprint": api_model.data_fingerprint,
        "experiment": api_model.experiment,
        "prompt_template": api_model.prompt_template,
        "checkpoint": api_model.checkpoint.name if api_model.checkpoint else None,
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
    parts = [f"From the training run directory (`{run_dir.name}`)."]
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text("utf-8"))
        except (OSError, ValueError):
            summary = {}
        for bench, metrics in (summary.get("metrics") or {}).items():
            if not isinstance(metrics, dict):
                continue
            keys = [k for k in metrics
                    if k.startswith(("zeroshot/top", "retrieval/")) and isinstance(metrics[k], (int, float))]
            keys.sort(key=lambda k: (not k.startswith("zeroshot/"), k))  # zero-shot first, then retrieval
            rows = "\n".join(f"| {k} | {float(metrics[k]):.2f} |" for k in keys[:24])
            parts.append(f"\n### {bench} (summary.json, percent)\n\n| metric | value |\n| --- | --- |\n{rows}")
    for md in sorted((run_dir / "results").glob("*/results.md")) if (run_dir / "results").is_dir() else []:
        try:
            parts.append(f"\n### {md.parent.name} "
                         f"(results/{md.parent.name}/results.md)\n\n{md.read_text('utf-8').strip()}")
        except OSError:
            continue
    return "\n".join(parts)


def model_card(api_model: Any, files: Sequence[str]) -> str:
    """A short Markdown model card: provenance, I/O contract, protocol, results summary (paths of the exporting
    machine, e.g. in the run's ``results.md``, made portable by :func:`portable_text`)."""
    from captionless3d.evaluation.runner import PROTOCOL

    cfg = api_model.config
    model_cfg = cfg.get("model") or {}
    loss = (cfg.get("loss") or {}).get("_target_", "?")
    mining = cfg.get("mining") or {}
    backbone = (f"`{model_cfg.get('name', '?')}` (in_channels {model_cfg.get('in_channels', '?')}, head "
                f"{model_cfg.get('head_mlps', '?')})")
    checkpoint = api_model.checkpoint.name if api_model.checkpoint else None
    card = f"""# captionless3d point encoder: `{api_model.experiment or 'model'}`

A point-cloud student (backbone below) trained to embed 3D point clouds into the frozen CLIP teacher's joint
image/text space (captionless training: rendered views only, hard negatives mined from CLIP knowledge).

| | |
| --- | --- |
| teacher id | `{api_model.teacher_id}` |
| embedding dim | {api_model.teacher_dim} |
| data fingerprint | `{api_model.data_fingerprint}` |
| experiment | `{api_model.experiment}` |
| backbone | {backbone} |
| mining | kinds {mining.get('kinds', [])}, scope {mining.get('scope', 'category')} |
| loss | `{loss}` |
| checkpoint | `{checkpoint}` (sha256 `{api_model.checkpoint_sha256[:16]}…`) |
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
    return portable_text(card, machine_paths(api_model))


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
    "check_exportable",
    "reference_embeddings",
    "export_torchscript",
    "export_onnx",
    "export_safetensors",
    "load_safetensors_encoder",
    "export_config",
    "machine_paths",
    "portable_config",
    "portable_text",
    "model_card",
    "export",
]
