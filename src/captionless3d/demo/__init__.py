"""A small local demo page: upload a photo or a point cloud, see the nearest indexed shapes or zero-shot labels.

``make demo`` (= ``python -m captionless3d.demo``) serves it on ``http://127.0.0.1:8765`` for the newest
``outputs/train/**/checkpoints/best.ckpt``, with a shape index of that run's synthetic-world test shapes built (once)
under the run's cache. Everything is the standard library (:mod:`wsgiref` + :mod:`email` for multipart uploads) plus
the project's own API: no web framework. See :mod:`captionless3d.demo.app` (the WSGI app and server) and
:mod:`captionless3d.demo.world` (the default checkpoint and index).
"""
from __future__ import annotations

from captionless3d.demo.app import DEFAULT_HOST, DEFAULT_PORT, DemoApp, make_demo_server, parse_multipart
from captionless3d.demo.world import ensure_demo_index, export_world_shapes, find_demo_checkpoint, load_world_of

__all__ = [
    "DemoApp",
    "make_demo_server",
    "parse_multipart",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "find_demo_checkpoint",
    "ensure_demo_index",
    "export_world_shapes",
    "load_world_of",
]
