"""Fixtures of the demo tests: the tests/api checkpoint world (a real PointNeXt checkpoint on a ~220-object synthetic
world with the tiny teacher), its demo index built the default way (under the run's cache), the demo service over it,
and the live Gradio page on a free 127.0.0.1 port (server in a background thread)."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_API = str(Path(__file__).resolve().parents[1] / "api")
if _API not in sys.path:
    sys.path.insert(0, _API)

from api_world import build_checkpoint  # noqa: E402


@dataclass
class DemoWorld:
    root: Path
    ckpt: Path
    model: Any
    index: Any
    collection: Any
    service: Any


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> DemoWorld:
    import captionless3d
    from captionless3d.demo import DemoService, ensure_demo_index

    root = tmp_path_factory.mktemp("demo_world")
    ckpt, collection, teacher = build_checkpoint(root)
    model = captionless3d.load(ckpt, teacher=teacher)
    index, world = ensure_demo_index(model, progress=False)
    examples = sorted((index.directory.parent / "examples").iterdir())
    service = DemoService(model, index, list(world.categories), k=4, title="captionless3d demo: avg",
                          examples=examples, work_dir=root / "demo_work")
    return DemoWorld(root, ckpt, model, index, world, service)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_url(demo_world):
    """The Gradio page, served on 127.0.0.1 (the default host) in a background thread."""
    pytest.importorskip("gradio", reason="the demo page needs gradio (pip install -e '.[demo]')")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from captionless3d.demo.gradio_app import launch_demo

    demo, url = launch_demo(demo_world.service, port=free_port(), block=False)
    yield url.rstrip("/")
    demo.close()


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Uploads the demo must reject with a message: an unreadable mesh, a cloud with NaNs, a non-image .png."""
    out = tmp_path_factory.mktemp("demo_bad")
    cloud = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    cloud[7, 1] = np.nan
    np.save(out / "nan_cloud.npy", cloud)
    (out / "broken_mesh.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    (out / "not_an_image.png").write_bytes(b"this is plain text, not a PNG\n" * 20)
    (out / "notes.txt").write_text("hello")
    return {"mesh": out / "broken_mesh.ply", "nan": out / "nan_cloud.npy", "image": out / "not_an_image.png",
            "suffix": out / "notes.txt"}
