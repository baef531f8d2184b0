"""What the demo page computes, without any web framework: one uploaded file -> labels, nearest shapes, 3D files.

:class:`DemoService` answers a query with the public Python API only (:meth:`Captionless3DModel.classify` and
:meth:`Captionless3DModel.search` on a :class:`~captionless3d.shape_index.ShapeIndex`), and writes the files the page
shows in its 3D viewers: :func:`cloud_to_glb` turns a point cloud into a small GLB mesh (one low-poly sphere per point,
coloured by height), because browsers' glTF viewers draw glTF ``POINTS`` one pixel wide. The Gradio page on top is
:mod:`captionless3d.demo.gradio_app`.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.api.inputs import IMAGE_SUFFIXES, POINT_SUFFIXES, gather_points
from captionless3d.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Largest k the page offers (the index is searched exhaustively; more results are not readable on one page).
MAX_K = 20


@dataclass
class DemoHit:
    """One retrieved shape: ``rank`` (1 = best), ``path`` (relative to the index root), ``score`` (cosine
    similarity), ``position`` in the index, and its ``thumbnail`` PNG (``None`` when the index has none)."""

    rank: int
    path: str
    score: float
    position: int
    thumbnail: Path | None


@dataclass
class QueryResult:
    """The answer to one upload.

    Attributes:
        kind: ``"image"`` or ``"points"``.
        filename: the uploaded file's name (what the user chose, never the server's temporary copy).
        labels: ``(label, cosine similarity)`` best first, for point clouds; ``None`` for photos.
        hits: the top-k shapes of the index, best first.
        cloud_glb: the uploaded cloud as the encoder saw it (``n_points`` points), as a GLB file (point clouds only).
        seconds: wall time of the query.
    """

    kind: str
    filename: str
    labels: list[tuple[str, float]] | None
    hits: list[DemoHit]
    cloud_glb: Path | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _height_colours(y: np.ndarray) -> np.ndarray:
    """``(P,)`` heights -> ``(P, 4)`` uint8 RGBA from dark blue (low) to orange (high): depth cues in the viewer."""
    span = float(y.max() - y.min())
    t = (y - y.min()) / span if span > 0 else np.full_like(y, 0.5)
    low, high = np.array([30, 60, 160], np.float32), np.array([245, 150, 40], np.float32)
    rgb = low[None] + t[:, None] * (high - low)[None]
    return np.concatenate([rgb, np.full((len(y), 1), 255, np.float32)], axis=1).astype(np.uint8)


def cloud_to_glb(points: np.ndarray, path: str | os.PathLike, *, radius: float = 0.02) -> Path:
    """Write a ``(P, 3)`` cloud as a GLB mesh: centred and scaled into the unit sphere (as the encoder sees it), one
    icosahedron of ``radius`` per point, vertex colours by height (y up). Returns ``path``.

    Raises:
        DataError: not a non-empty finite ``(P, 3)`` array.
    """
    import trimesh

    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.isfinite(pts).all():
        raise DataError(f"{path}: cannot draw a cloud of shape {pts.shape} (need finite (P, 3) points)")
    pts = pts - pts.mean(axis=0)
    scale = float(np.linalg.norm(pts, axis=1).max())
    pts = pts / scale if scale > 0 else pts
    ico = trimesh.creation.icosahedron()  # 12 vertices, 20 faces, unit circumradius
    n_v = len(ico.vertices)
    vertices = (pts[:, None, :] + radius * ico.vertices[None]).reshape(-1, 3)
    faces = (ico.faces[None] + n_v * np.arange(len(pts))[:, None, None]).reshape(-1, 3)
    colours = np.repeat(_height_colours(pts[:, 1]), n_v, axis=0)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colours, process=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path, file_type="glb")
    return path


def parse_labels(text: str | None, default: Sequence[str]) -> list[str]:
    """Comma-separated class names -> a de-duplicated list (``default`` when ``text`` is empty)."""
    labels = list(dict.fromkeys(x.strip() for x in (text or "").split(",") if x.strip()))
    return labels or [str(x) for x in default]


class DemoService:
    """The demo's model calls, shared by every browser session.

    Args:
        model: a loaded :class:`~captionless3d.api.Captionless3DModel`.
        index: the :class:`~captionless3d.shape_index.ShapeIndex` (or its directory) searched.
        labels: default zero-shot labels.
        k: default number of shapes shown.
        title: the page heading.
        examples: example input files (photos and clouds) offered on the page.
        work_dir: where the GLB files for the 3D viewers go (default: a new temporary directory).
    """

    def __init__(self, model: Any, index: Any, labels: Sequence[str], *, k: int = 5,
                 title: str = "captionless3d demo", examples: Sequence[str | os.PathLike] = (),
                 work_dir: str | os.PathLike | None = None) -> None:
        if not labels:
            raise ConfigError("demo: give at least one zero-shot label (--labels)")
        if not 1 <= int(k) <= MAX_K:
            raise ConfigError(f"demo: -k must be from 1 to {MAX_K}, got {k}")
        self.model = model
        self.index = model.open_index(index)
        self.labels = [str(x) for x in labels]
        self.k = int(k)
        self.title = title
        self.examples = [Path(p) for p in examples]
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="captionless3d-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._positions = {p: i for i, p in enumerate(self.index.paths)}
        # the encoder and the teacher are not meant for concurrent calls; the page's events may overlap
        self._lock = threading.Lock()
        self.queries = 0
        self.errors = 0

    # -- what the page states about itself ------------------------------------------------------------------------
    def describe(self) -> str:
        """One Markdown paragraph: model source, teacher, index size, default labels."""
        model = self.model
        return (f"Model `{model.source or model.experiment}` (experiment `{model.experiment}`), teacher "
                f"`{model.teacher_id}`; index of {len(self.index)} shapes (`{self.index.directory}`). Upload a photo "
                f"({', '.join(IMAGE_SUFFIXES)}) to find the nearest indexed shapes, or a point cloud / mesh "
                f"({', '.join(POINT_SUFFIXES)}) for zero-shot labels and its nearest shapes.")

    def allowed_paths(self) -> list[str]:
        """Directories the page's server may serve files from: the GLB work directory, the index (thumbnails) and
        the examples."""
        dirs = {self.work_dir, self.index.directory} | {p.parent for p in self.examples}
        return sorted(str(d.resolve()) for d in dirs)

    # -- queries ---------------------------------------------------------------------------------------------------
    def query(self, path: str | os.PathLike, *, filename: str | None = None, labels: Sequence[str] | None = None,
              k: int | None = None) -> QueryResult:
        """Answer one uploaded file.

        Args:
            path: the file on disk (the server's copy of the upload).
            filename: the name the user uploaded (error messages name it instead of the temporary copy).
            labels: zero-shot labels (default: the service's).
            k: number of shapes (default: the service's).

        Raises:
            DataError: unsupported type, unreadable file, bad coordinates (the message names ``filename``).
        """
        path = Path(path)
        display = filename or path.name
        suffix = path.suffix.lower()
        labels = [str(x) for x in (labels or self.labels)]
        k = int(k or self.k)
        if not 1 <= k <= MAX_K:
            raise DataError(f"k must be from 1 to {MAX_K}, got {k}")
        if suffix in POINT_SUFFIXES:
            kind = "points"
        elif suffix in IMAGE_SUFFIXES:
            kind = "image"
        else:
            raise DataError(f"{display}: unsupported file type {suffix or '(none)'!r}; upload a photo "
                            f"({', '.join(IMAGE_SUFFIXES)}) or a point cloud / mesh ({', '.join(POINT_SUFFIXES)})")
        started = time.perf_counter()
        with self._lock:
            self.queries += 1
            try:
                result = self._run(kind, path, labels, k)
            except DataError as exc:  # name the user's file, not the server's temporary copy
                self.errors += 1
                raise DataError(str(exc).replace(str(path), display)) from exc
        result.filename = display
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _run(self, kind: str, path: Path, labels: list[str], k: int) -> QueryResult:
        model = self.model
        cloud_glb = None
        ranked = None
        if kind == "points":
            clouds, _ = gather_points(path, n_points=model.n_points, seed=model.seed)  # what the encoder sees
            if len(clouds) != 1:
                raise DataError(f"{path}: holds {len(clouds)} clouds; upload one shape per file")
            ranked = model.classify(str(path), labels=labels)[0]
            found = model.search(points=str(path), k=k, index=self.index)
            cloud_glb = cloud_to_glb(clouds[0], self.work_dir / f"query-{self.queries:06d}.glb")
        else:
            found = model.search(image=str(path), k=k, index=self.index)
        hits = []
        for rank, hit in enumerate(found, start=1):
            position = self._positions[hit.path]
            hits.append(DemoHit(rank, hit.path, float(hit.score), position, self.index.thumbnail(position)))
        return QueryResult(kind=kind, filename=path.name, labels=ranked, hits=hits, cloud_glb=cloud_glb, seconds=0.0)

    def shape_glb(self, position: int) -> Path:
        """The indexed shape at ``position`` as a GLB file (written once, then reused)."""
        if not 0 <= int(position) < len(self.index):
            raise DataError(f"no shape {position} in the index of {len(self.index)} shapes")
        target = self.work_dir / "shapes" / f"{int(position):06d}.glb"
        if not target.is_file():
            source = self.index.resolve(self.index.paths[int(position)])
            clouds, _ = gather_points(source, n_points=self.model.n_points, seed=self.model.seed)
            cloud_to_glb(clouds[0], target)
        return target


__all__ = ["MAX_K", "DemoHit", "DemoService", "QueryResult", "cloud_to_glb", "parse_labels"]
