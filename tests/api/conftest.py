"""Session fixtures of the API / CLI / export tests (helpers in ``api_world.py``)."""
from __future__ import annotations

import numpy as np
import pytest
from api_world import Shapes, World, build_checkpoint


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("api_world")
    ckpt, collection, teacher = build_checkpoint(root)
    return World(root, ckpt, collection, teacher)


@pytest.fixture(scope="session")
def model(world):
    """The loaded model (shared: tests must not mutate it, except ``last_index``)."""
    import captionless3d

    return captionless3d.load(world.ckpt)


@pytest.fixture(scope="session")
def shapes(world, tmp_path_factory) -> Shapes:
    """The 208 non-teacher objects of the world as shape files ``<category>/<object id>.npy`` (every 8th one a
    ``.ply`` point cloud instead), each holding the object's full stored cloud (256 points)."""
    import trimesh

    out = tmp_path_factory.mktemp("api_shapes")
    col = world.collection
    keep = np.flatnonzero(np.asarray(col.splits) != "teacher")
    paths = []
    for n, i in enumerate(keep):
        category = col.categories[int(col.labels[i])]
        (out / category).mkdir(exist_ok=True)
        points = np.asarray(col.points[i], dtype=np.float32)
        rel = f"{category}/{col.object_ids[i].replace('/', '_')}.{'ply' if n % 8 == 7 else 'npy'}"
        if rel.endswith(".ply"):
            trimesh.PointCloud(points).export(out / rel)
        else:
            np.save(out / rel, points)
        paths.append(rel)
    return Shapes(out, paths, keep)


@pytest.fixture(scope="session")
def built_index(model, shapes, tmp_path_factory):
    """The index of all 208 shape files (thumbnails on), built once."""
    out = tmp_path_factory.mktemp("api_index") / "index"
    return model.index(shapes.dir, out, progress=False)
