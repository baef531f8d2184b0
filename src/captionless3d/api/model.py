"""``captionless3d.load(checkpoint)``: a trained student as a Python object.

>>> import captionless3d
>>> model = captionless3d.load("outputs/train/runs/avg/<date>/checkpoints/best.ckpt")
>>> model.encode_points("chair.obj").shape                        # (1, D), float32, L2-normalised
>>> model.classify("chair.obj", labels=["chair", "table", "mug"])  # [[("chair", 0.31), ("table", 0.12), ...]]
>>> model.index("my_shapes/", out="my_index")                      # embeddings + thumbnails + manifest
>>> model.search(text="a red office chair", k=5, index="my_index")  # [Hit(path, score), ...]

The point encoder comes from the checkpoint (loaded with ``weights_only=True`` and its format version checked by
:func:`captionless3d.training.checkpoint_io.load_checkpoint`); the teacher, needed only for images and texts, is rebuilt
lazily from the checkpoint's own training config through :func:`captionless3d.pipeline.build_teacher` (a synthetic
teacher that is already cached is found by its weights hash without rebuilding the world) and must have the checkpoint's
teacher id. Points are preprocessed as in evaluation: ``n_points`` = the training config's ``data.loader.n_points``, a
seeded random subset, centred and scaled into the unit sphere (:mod:`captionless3d.api.inputs`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captionless3d.api.inputs import (
    IMAGE_SUFFIXES,
    POINT_SUFFIXES,
    PointsInput,
    fit_points,
    gather_images,
    gather_points,
    kind_of_path,
    normalise_points,
    read_shape_file,
)
from captionless3d.errors import CacheError, CheckpointError, ConfigError, DataError, NumericalError
from captionless3d.shape_index import Hit, ShapeIndex, save_thumbnails, splat_thumbnails
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE
from captionless3d.training.checkpoint_io import encoder_state, load_checkpoint
from captionless3d.utils.config import with_cache_dir

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------------- teacher
def _cached_synthetic_teacher(teacher_cfg: Any, expected_id: str | None) -> Any | None:
    """The project's synthetic teacher straight from its cache, found by the checkpoint hash in ``expected_id``
    (``openclip:<model>:sha256:<12 hex>``), without building the world it was trained on; ``None`` if absent."""
    factory = teacher_cfg.get("factory") or {}
    if not str(factory.get("_target_", "")).endswith("ensure_synthetic_teacher") or not expected_id:
        return None
    match = re.fullmatch(r"openclip:([^/:]+):sha256:([0-9a-f]{12})", expected_id)
    out_root = factory.get("out_root")
    if match is None or not out_root:
        return None
    from captionless3d.teacher.synthetic import CHECKPOINT_NAME, MANIFEST_KIND, load_synthetic_teacher

    model_name, digest = match.groups()
    for manifest_path in sorted(Path(str(out_root)).glob(f"{model_name}-*/manifest.json")):
        try:
            manifest = json.loads(manifest_path.read_text("utf-8"))
        except (OSError, ValueError):
            continue
        if (manifest.get("kind") == MANIFEST_KIND
                and str(manifest.get("files", {}).get(CHECKPOINT_NAME, "")).startswith(digest)):
            try:
                return load_synthetic_teacher(manifest_path.parent)  # verifies the checksums
            except CacheError as exc:
                log.warning("cached synthetic teacher %s is unusable: %s", manifest_path.parent, exc)
    return None


def build_teacher_from_config(config: dict[str, Any], *, expected_id: str | None = None,
                              cache_dir: str | os.PathLike | None = None) -> Any:
    """The teacher a training ``config`` (resolved, as stored in checkpoints) describes.

    ``cache_dir`` re-roots every path under the training run's ``paths.cache_dir`` (the cache moved). A synthetic
    teacher that is already cached is loaded by its hash; otherwise :func:`captionless3d.pipeline.build_teacher` runs
    (building the collection first when the teacher is trained on it: ``teacher.trained_on_collection``).
    """
    from omegaconf import OmegaConf

    from captionless3d.pipeline import build_collection, build_teacher

    if "teacher" not in config:
        raise CheckpointError("the checkpoint's config has no 'teacher' section; cannot rebuild its teacher")
    cfg = OmegaConf.create(with_cache_dir(config, cache_dir))
    cached = _cached_synthetic_teacher(cfg.teacher, expected_id)
    if cached is not None:
        return cached
    collection = None
    if cfg.teacher.get("trained_on_collection", False):
        if "data" not in cfg:
            raise CheckpointError("the checkpoint's config has no 'data' section, which its teacher is trained on")
        collection = build_collection(cfg.data)
    return build_teacher(cfg.teacher, collection)


# --------------------------------------------------------------------------------------------------- the model
class Captionless3DModel:
    """A trained point encoder (eval mode) with its teacher id, lazily built teacher and point preprocessing.

    Attributes:
        encoder: the :class:`~captionless3d.models.heads.PointEncoder`, in eval mode, on ``device``.
        teacher_id, teacher_dim: the teacher the student was aligned to (from the checkpoint).
        n_points: points per cloud the encoder sees (the training config's ``data.loader.n_points``).
        config: the checkpoint's full resolved training config; ``metadata``: its ``captionless3d`` metadata.
        cache_dir: where the training caches live now when they moved since training (``None``: where the config
            says).
        checkpoint: the training checkpoint file (``None`` for a model from a pretrained directory or the Hub).
        source: where the weights came from (checkpoint path, ``hf-hub:<org>/<name>`` or a pretrained directory).
        last_index: the index most recently built or opened (the default of :meth:`search`).
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        metadata: dict[str, Any],
        *,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        teacher: Any | None = None,
        source: str | None = None,
    ) -> None:
        for field in ("teacher_id", "teacher_dim", "config"):
            if field not in metadata:
                raise CheckpointError(f"{checkpoint or 'checkpoint'}: metadata lacks {field!r}")
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.metadata = dict(metadata)
        self.config: dict[str, Any] = dict(metadata["config"])
        self.teacher_id = str(metadata["teacher_id"])
        self.teacher_dim = int(metadata["teacher_dim"])
        self.experiment = str(metadata.get("experiment", ""))
        self.data_fingerprint = str(metadata.get("data_fingerprint", ""))
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        # where the weights came from, for people: the checkpoint path, an hf-hub: reference or a pretrained directory
        self.source = source or (str(self.checkpoint) if self.checkpoint is not None else None)
        self.prompt_template = str(self.config.get("prompt_template") or DEFAULT_PROMPT_TEMPLATE)
        loader = (self.config.get("data") or {}).get("loader") or {}
        if not isinstance(loader.get("n_points"), int) or loader["n_points"] < 1:
            raise CheckpointError(f"{checkpoint or 'checkpoint'}: config data.loader.n_points is missing or invalid "
                                  f"({loader.get('n_points')!r}); cannot tell how many points the encoder expects")
        self.n_points = int(loader["n_points"])
        self.seed = 0
        self.cache_dir = cache_dir
        self._teacher = self._check_teacher(teacher) if teacher is not None else None
        self._sha256: str | None = None
        self._indexes: dict[Path, ShapeIndex] = {}
        self.last_index: ShapeIndex | None = None

    def __repr__(self) -> str:
        return (f"Captionless3DModel(experiment={self.experiment!r}, teacher={self.teacher_id!r}, "
                f"dim={self.teacher_dim}, n_points={self.n_points}, source={self.source!r})")

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How clouds are prepared before the encoder (what an exported model's users must replicate)."""
        return {
            "n_points": self.n_points,
            "subset": "seeded random subset without replacement (torch.Generator().manual_seed(seed), "
                      "captionless3d.data.pointcloud.subset_indices, one draw per cloud size); smaller clouds padded "
                      "with random repeats; meshes surface-sampled to n_points",
            "seed": self.seed,
            "normalization": "centre on the centroid, scale so the farthest point has norm 1 (unit sphere)",
            "axes": "y up (as the training data)",
        }

    # -- teacher --------------------------------------------------------------------------------------------------
    def _check_teacher(self, teacher: Any) -> Any:
        where = self.checkpoint or "checkpoint"
        if str(teacher.id) != self.teacher_id:
            raise CheckpointError(
                f"{where}: the student was trained against teacher {self.teacher_id}, but the teacher at hand is "
                f"{teacher.id}; its embeddings are not comparable (was the teacher cache rebuilt or moved? pass "
                "cache_dir=<the training cache>)"
            )
        if int(teacher.dim) != self.teacher_dim:
            raise CheckpointError(f"{where}: teacher {teacher.id} is {teacher.dim}-d, the student {self.teacher_dim}-d")
        return teacher

    @property
    def teacher(self) -> Any:
        """The frozen teacher (built on first use from the checkpoint's config; its id must match)."""
        if self._teacher is None:
            started = time.perf_counter()
            teacher = build_teacher_from_config(self.config, expected_id=self.teacher_id, cache_dir=self.cache_dir)
            self._teacher = self._check_teacher(teacher)
            log.info("teacher %s ready in %.1f s", teacher.id, time.perf_counter() - started)
        return self._teacher

    @property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the checkpoint file (of the encoder weights when the model did not come from a file)."""
        if self._sha256 is None:
            if self.checkpoint is not None and self.checkpoint.is_file():
                from captionless3d.utils.manifest import file_sha256

                self._sha256 = file_sha256(self.checkpoint)
            else:
                digest = hashlib.sha256()
                for name, tensor in sorted(self.encoder.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
                self._sha256 = digest.hexdigest()
        return self._sha256

    # -- encoders -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_clouds(self, clouds: np.ndarray, batch_size: int, sources: Sequence[str] | None = None) -> torch.Tensor:
        """``(B, n_points, 3)`` raw clouds -> ``(B, D)`` float32 L2-normalised (CPU)."""
        x = normalise_points(clouds)
        out = [self.encoder(x[s:s + batch_size].to(self.device)).float().cpu() for s in range(0, len(x), batch_size)]
        emb = torch.cat(out)
        bad = (~torch.isfinite(emb)).any(dim=1).nonzero().flatten().tolist()
        if bad:
            names = [sources[i] for i in bad] if sources else bad
            raise NumericalError(f"the point encoder produced non-finite embeddings for {names[:10]}")
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def encode_points(self, points: PointsInput, *, batch_size: int = 32) -> np.ndarray:
        """Shape embeddings ``(B, D)`` float32, L2-normalised.

        Args:
            points: an array/tensor ``(P, 3)`` or ``(B, P, 3)`` (object units, y up), a ``.ply/.obj/.off/.stl``
                file (meshes surface-sampled, point clouds read as is), a ``.npy/.npz`` array file, or a list of them.
            batch_size: clouds per encoder forward.
        """
        clouds, sources = gather_points(points, n_points=self.n_points, seed=self.seed)
        return self._encode_clouds(clouds, batch_size, sources).numpy()

    def encode_images(self, images: Any, *, batch_size: int = 64) -> np.ndarray:
        """Teacher image embeddings ``(B, D)`` float32, L2-normalised: uint8 ``(H, W, 3)`` / ``(B, H, W, 3)``
        arrays, PIL images or image paths (or a list of them)."""
        batch = gather_images(images, size=int(self.teacher.image_size))
        return self.teacher.encode_images(batch, batch_size=batch_size, progress=False).float().numpy()

    def encode_texts(self, texts: str | Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Teacher text embeddings ``(B, D)`` float32, L2-normalised (a single string gives ``B = 1``)."""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        if not texts:
            raise DataError("encode_texts: no texts given (empty list)")
        return self.teacher.encode_texts(texts, batch_size=batch_size, progress=False).float().numpy()

    # -- zero-shot classification -----------------------------------------------------------------------------------
    def class_embeddings(self, labels: Sequence[str], *,
                         template: str | Sequence[str] = DEFAULT_PROMPT_TEMPLATE) -> np.ndarray:
        """Zero-shot class embeddings ``(C, D)`` float32, L2-normalised: the teacher's text embeddings of
        ``template.format(label)`` (several templates averaged, as
        :func:`captionless3d.teacher.classifier.zero_shot_classifier`)."""
        from captionless3d.teacher.classifier import zero_shot_classifier

        if isinstance(labels, str) or not labels:
            raise DataError("classify: labels must be a non-empty list of class names")
        labels = [str(x) for x in labels]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise DataError(f"classify: duplicate labels {duplicates}")
        templates = [template] if isinstance(template, str) else list(template)
        for t in templates:
            if "{}" not in t:
                raise ConfigError(f"classify: template {t!r} has no '{{}}' placeholder for the label")
        return zero_shot_classifier(self.teacher, labels, templates).float().numpy()

    def classify(self, points: PointsInput, labels: Sequence[str], *,
                 template: str | Sequence[str] = DEFAULT_PROMPT_TEMPLATE,
                 top: int | None = None) -> list[list[tuple[str, float]]]:
        """Zero-shot classification: per input cloud, ``(label, cosine similarity)`` sorted best first (``top``:
        keep only the first ``top``). Classes are :meth:`class_embeddings` of ``labels`` with ``template``."""
        classes = self.class_embeddings(labels, template=template)  # (C, D)
        labels = [str(x) for x in labels]
        scores = self.encode_points(points) @ classes.T  # (B, C)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : top or len(labels)]
        return [[(labels[j], float(row[j])) for j in ranks] for row, ranks in zip(scores, order)]

    # -- shape index ------------------------------------------------------------------------------------------------
    def index(
        self,
        shapes_dir: str | os.PathLike,
        out: str | os.PathLike,
        *,
        batch_size: int = 32,
        thumbnails: bool = True,
        thumbnail_size: int = 64,
        progress: bool = True,
        on_error: str = "raise",
    ) -> ShapeIndex:
        """Embed every shape file under ``shapes_dir`` (recursively; ``.ply .obj .off .stl .npy .npz``) into a
        persistent :class:`~captionless3d.shape_index.ShapeIndex` at ``out``.

        Args:
            batch_size: shapes per encoder forward.
            thumbnails: also write ``thumbs/{position:06d}.png`` point-splat renders of ``thumbnail_size`` pixels.
            progress: show a tqdm progress bar.
            on_error: ``"raise"`` (default): the first unreadable file stops indexing with its DataError;
                ``"skip"``: unreadable files are logged, listed in the manifest's ``extra.skipped`` and left out.
        """
        from tqdm.auto import tqdm

        if on_error not in ("raise", "skip"):
            raise ConfigError(f"index: on_error must be 'raise' or 'skip', got {on_error!r}")
        root = Path(shapes_dir)
        if not root.is_dir():
            raise DataError(f"{root}: shapes directory does not exist")
        out = Path(out)
        out_resolved = out.resolve()
        files = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in POINT_SUFFIXES
             and out_resolved not in p.resolve().parents),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise DataError(f"{root}: no shape files ({', '.join(POINT_SUFFIXES)}) found")
        started = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)  # the old index is invalid from here on
        embeddings = np.empty((len(files), self.teacher_dim), np.float16)
        kept: list[str] = []
        skipped: list[dict[str, str]] = []
        bar = tqdm(total=len(files), desc="index shapes", unit="shape", disable=not progress)
        try:
            for start in range(0, len(files), batch_size):
                clouds, names = [], []
                for path in files[start:start + batch_size]:
                    rel = path.relative_to(root).as_posix()
                    try:
                        cloud = read_shape_file(path, n_samples=self.n_points, seed=self.seed)
                        if len(cloud) != 1:
                            raise DataError(f"{path}: holds {len(cloud)} clouds; an index entry is one shape per file")
                    except DataError as exc:
                        if on_error == "raise":
                            raise
                        log.warning("index: skipping %s", exc)
                        skipped.append({"path": rel, "error": str(exc)})
                        continue
                    clouds.append(fit_points(cloud, self.n_points, self.seed))
                    names.append(rel)
                if clouds:
                    batch = np.concatenate(clouds)
                    emb = self._encode_clouds(batch, batch_size, names)
                    embeddings[len(kept):len(kept) + len(names)] = emb.numpy().astype(np.float16)
                    if thumbnails:
                        images = splat_thumbnails(normalise_points(batch).numpy(), thumbnail_size)
                        save_thumbnails(out, len(kept), images)
                    kept.extend(names)
                bar.update(min(batch_size, len(files) - start))
        finally:
            bar.close()
        if not kept:
            raise DataError(f"{root}: none of the {len(files)} shape files could be read (first: "
                            f"{skipped[0]['error']})")
        extra = {
            "checkpoint": str(self.checkpoint.resolve()) if self.checkpoint else None,
            "experiment": self.experiment,
            "data_fingerprint": self.data_fingerprint,
            "preprocessing": self.preprocessing,
            "thumbnail_size": thumbnail_size if thumbnails else None,
            "skipped": skipped,
            "seconds": round(time.perf_counter() - started, 2),
        }
        index = ShapeIndex.write(out, embeddings[: len(kept)], kept, teacher_id=self.teacher_id,
                                 encoder_sha256=self.checkpoint_sha256, root=root, thumbnails=thumbnails, extra=extra)
        self._indexes[out_resolved] = index
        self.last_index = index
        return index

    def open_index(self, index: str | os.PathLike | ShapeIndex | None = None) -> ShapeIndex:
        """An index for this model's queries (``None``: :attr:`last_index`). CacheError if another teacher built it."""
        if index is None:
            if self.last_index is None:
                raise ConfigError("search: no index given; pass index=<index directory> or build one with .index()")
            return self.last_index
        if isinstance(index, ShapeIndex):
            if index.teacher_id != self.teacher_id:
                raise CacheError(f"{index.directory}: shape index was built with teacher {index.teacher_id}, but the "
                                 f"model queries with teacher {self.teacher_id}; rebuild the index with this model")
            opened = index
        else:
            key = Path(index).resolve()
            opened = self._indexes.get(key) or ShapeIndex.load(key, teacher_id=self.teacher_id)
            self._indexes[key] = opened
        if opened.encoder_sha256 != self.checkpoint_sha256:
            log.info("index %s was built by another checkpoint (same teacher): image/text queries are comparable, "
                     "shape queries compare two students", opened.directory)
        self.last_index = opened
        return opened

    def _query_embeddings(self, kind: str, value: Any) -> tuple[np.ndarray, bool]:
        """Embeddings ``(Q, D)`` of a query and whether it was a single query."""
        batched = isinstance(value, (list, tuple))
        if kind == "text":
            return self.encode_texts(value), not batched
        if kind == "image":
            batched = batched or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 4)
            return self.encode_images(value), not batched
        if kind == "points":
            batched = batched or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 3)
            emb = self.encode_points(value)
            return emb, not batched and len(emb) == 1
        raise ConfigError(f"search: unknown query kind {kind!r}")

    @staticmethod
    def _detect(value: Any) -> tuple[str, Any]:
        """Query kind from the value: image/shape files by suffix, other strings are text, uint8 arrays and PIL
        images are images, float arrays are points."""
        first = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(first, os.PathLike) or (isinstance(first, str)
                                              and Path(first).suffix.lower() in POINT_SUFFIXES + IMAGE_SUFFIXES):
            return kind_of_path(first), value
        if isinstance(first, str):
            return "text", value
        if isinstance(first, (np.ndarray, torch.Tensor)):
            return ("image" if first.dtype in (np.uint8, torch.uint8) else "points"), value
        if type(first).__module__.startswith("PIL."):
            return "image", value
        raise DataError(f"search: cannot tell what kind of query a {type(first).__name__} is; "
                        "use image=, text= or points=")

    def search(
        self,
        query: Any = None,
        *,
        image: Any = None,
        text: str | Sequence[str] | None = None,
        points: PointsInput | None = None,
        k: int = 5,
        index: str | os.PathLike | ShapeIndex | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Top-``k`` shapes of ``index`` for one query: ``[Hit(path, score), ...]`` best first (path relative to the
        indexed directory, score = cosine similarity). A batch of queries (a list, ``(B, P, 3)`` points, ``(B, H, W,
        3)`` images) gives one such list per query.

        Give exactly one of ``image`` (array / PIL / path), ``text``, ``points`` (array / shape file), or ``query``
        (detected: image and shape files by suffix, other strings are text, uint8 arrays images, float arrays points).
        """
        given = [(name, v) for name, v in (("query", query), ("image", image), ("text", text), ("points", points))
                 if v is not None]
        if len(given) != 1:
            raise ConfigError("search: give exactly one of query, image, text, points (got "
                              f"{[n for n, _ in given] or 'none'})")
        kind, value = given[0]
        if kind == "query":
            kind, value = self._detect(value)
        opened = self.open_index(index)
        emb, single = self._query_embeddings(kind, value)
        hits = opened.search(emb, k)
        return hits[0] if single else hits


# --------------------------------------------------------------------------------------------------- load
def build_encoder(metadata: dict[str, Any], path: Path | str = "checkpoint") -> torch.nn.Module:
    """An untrained encoder of the checkpoint's architecture (``config.model``, output size ``teacher_dim``).

    ``pretrained`` is dropped (the checkpoint's weights replace it) and ``ops_backend`` set to ``torch`` (the CUDA and
    compile backends compute the same function with the same parameter names).
    """
    from omegaconf import OmegaConf

    from captionless3d.hydra_utils import instantiate

    model_cfg = (metadata.get("config") or {}).get("model")
    if not isinstance(model_cfg, dict) or "_target_" not in model_cfg:
        raise CheckpointError(f"{path}: the checkpoint's config has no model section with a _target_")
    model_cfg = {**model_cfg, "pretrained": None, "ops_backend": "torch"}
    return instantiate(OmegaConf.create(model_cfg), key="model", embed_dim=int(metadata["teacher_dim"]))


def _model_from_state(state: dict[str, torch.Tensor], meta: dict[str, Any], where: Path | str, **kwargs: Any
                      ) -> Captionless3DModel:
    encoder = build_encoder(meta, where)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # torch reports shape mismatches this way even with strict=False
        raise CheckpointError(f"{where}: encoder weights do not fit config.model: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{where}: encoder weights do not fit config.model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return Captionless3DModel(encoder, meta, **kwargs)


def load(
    checkpoint: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    teacher: Any | None = None,
) -> Captionless3DModel:
    """Load a trained student as a :class:`Captionless3DModel`.

    Args:
        checkpoint: one of

            * a captionless3d Lightning checkpoint (``best.ckpt`` / ``last.ckpt``);
            * ``"hf-hub:<org>/<name>"`` (or ``...@<revision>``): a model on the Hugging Face Hub, resolved through
              ``huggingface_hub`` (its cache and ``HF_HUB_OFFLINE`` apply; :mod:`captionless3d.api.pretrained`);
            * a local pretrained directory (``model.safetensors`` + ``config.json``, what ``captionless3d export
              --format hf`` writes).
        device: where the point encoder runs.
        cache_dir: where the training caches (world, teacher) live now, if they moved since training.
        teacher: an already built teacher to use instead of rebuilding it (its id must match the checkpoint's).

    Raises:
        CheckpointError: missing / unreadable file, not a captionless3d checkpoint, a newer format version, missing
            metadata, weights that do not fit the configured architecture, or a Hub model that cannot be resolved.
    """
    from captionless3d.api.pretrained import is_hub_reference, is_pretrained_dir, read_pretrained, resolve_hub_reference

    common = {"device": device, "cache_dir": cache_dir, "teacher": teacher}
    if is_hub_reference(checkpoint):
        directory = resolve_hub_reference(str(checkpoint))
        state, meta = read_pretrained(directory)
        return _model_from_state(state, meta, directory, source=str(checkpoint), **common)
    path = Path(checkpoint)
    if is_pretrained_dir(path):
        state, meta = read_pretrained(path)
        return _model_from_state(state, meta, path, source=str(path), **common)
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory without config.json; give a .ckpt file, a pretrained directory "
                              "(captionless3d export --format hf) or hf-hub:<org>/<name>")
    ckpt = load_checkpoint(path)
    meta = ckpt["captionless3d"]
    for field in ("teacher_id", "teacher_dim", "config"):
        if field not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {field!r}")
    return _model_from_state(encoder_state(ckpt, path), meta, path, checkpoint=path, **common)


__all__ = ["Captionless3DModel", "load", "build_encoder", "build_teacher_from_config", "DEFAULT_PROMPT_TEMPLATE"]
