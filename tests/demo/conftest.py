"""Fixtures of the demo tests: the tests/api checkpoint world (a real PointNeXt checkpoint on a ~220-object synthetic
world with the tiny teacher), its demo index built the default way (under the run's cache), and a live server on a
free 127.0.0.1 port in a thread."""
from __future__ import annotations

import sys
import threading
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
    app: Any


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory) -> DemoWorld:
    import captionless3d
    from captionless3d.demo import DemoApp, ensure_demo_index

    root = tmp_path_factory.mktemp("demo_world")
    ckpt, collection, teacher = build_checkpoint(root)
    model = captionless3d.load(ckpt, teacher=teacher)
    index, world = ensure_demo_index(model, progress=False)
    app = DemoApp(model, index, list(world.categories), k=4)
    return DemoWorld(root, ckpt, model, index, world, app)


@pytest.fixture(scope="session")
def demo_url(demo_world):
    from captionless3d.demo import make_demo_server

    server = make_demo_server(demo_world.app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


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
