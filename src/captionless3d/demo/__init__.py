"""The demo page: upload a photo or a point cloud, see it in 3D, its zero-shot labels and the nearest indexed shapes.

``make demo`` (= ``python -m captionless3d.demo``) serves a Gradio page (optional extra ``demo``) on
``http://127.0.0.1:8765`` for the newest ``outputs/train/**/checkpoints/best.ckpt`` (or ``--ckpt``, which also takes
``hf-hub:<org>/<name>``), with a shape index of that run's synthetic-world test shapes built (once) under the run's
cache. Modules: :mod:`captionless3d.demo.service` (the queries, through the public Python API; no web framework),
:mod:`captionless3d.demo.gradio_app` (the page), :mod:`captionless3d.demo.world` (the default checkpoint, index and
example inputs). Gradio is imported only when the page is built.
"""
from __future__ import annotations

from captionless3d.demo.service import DemoHit, DemoService, QueryResult, cloud_to_glb, parse_labels
from captionless3d.demo.world import ensure_demo_index, export_world_shapes, find_demo_checkpoint, load_world_of

#: Loopback only by default: the demo has no authentication (same values as captionless3d.demo.gradio_app).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DemoHit",
    "DemoService",
    "QueryResult",
    "cloud_to_glb",
    "ensure_demo_index",
    "export_world_shapes",
    "find_demo_checkpoint",
    "load_world_of",
    "parse_labels",
]
