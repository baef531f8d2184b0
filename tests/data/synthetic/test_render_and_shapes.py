"""Tests of the rasteriser and of the shape generators (fast: no world is built)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from captionless3d.data.synthetic.geometry import MeshBuilder, normalize_mesh
from captionless3d.data.synthetic.render import SceneItem, orbit_camera, rasterize, render_scenes, shade_faces
from captionless3d.data.synthetic.scene import make_object, photo_items, view_items
from captionless3d.data.synthetic.shapes import ALL_CATEGORIES, CATEGORIES


def _tri(pts, z):
    return torch.tensor([[[x, y, zz] for (x, y), zz in zip(pts, z)]], dtype=torch.float32)


def test_rasterize_single_triangle_covers_pixel_centres():
    # right triangle with legs of 8 pixels: covers centres with x + y <= 8 (x, y = i + .5, j + .5)
    buf = rasterize(_tri([(0, 0), (8, 0), (0, 8)], [1, 1, 1]), torch.zeros(1, dtype=torch.int64), 1, 10, 10)[0]
    jj, ii = np.mgrid[0:10, 0:10]
    expected = (ii + 0.5 + jj + 0.5) <= 8
    assert ((buf >= 0).numpy() == expected).all()


def test_zbuffer_nearest_wins_in_any_order():
    near = _tri([(0, 0), (10, 0), (0, 10)], [1, 1, 1])[0]
    far = _tri([(0, 0), (10, 0), (10, 10)], [2, 2, 2])[0]
    idx = torch.zeros(2, dtype=torch.int64)
    a = rasterize(torch.stack([near, far]), idx, 1, 10, 10)[0]
    b = rasterize(torch.stack([far, near]), idx, 1, 10, 10)[0]
    assert a[2, 1] == 0 and b[2, 1] == 1  # the near triangle in both orders
    assert a[1, 9] == 1 and b[1, 9] == 0  # only the far one covers the top-right corner region


def _sphere_item(center=(0, 0, 0), radius=0.8, tag=True, color=(0.8, 0.1, 0.1)):
    b = MeshBuilder().ellipsoid(center, radius, color)
    v, f, c = b.build()
    cam = orbit_camera(20, 30)
    vt, ft = torch.tensor(v, dtype=torch.float32), torch.tensor(f)
    col = shade_faces(vt, ft, torch.tensor(c, dtype=torch.float32), torch.tensor(cam.eye),
                      torch.tensor([0.0, 1.0, 0.0]), 0.4, 0.6)
    return SceneItem(vt, ft, col, torch.full((len(f),), tag), cam), cam


def test_mask_is_object_pixels_minus_occluder():
    obj, cam = _sphere_item()
    img, mask = render_scenes([obj], 48, 48)
    nonwhite = (img[0] < 0.99).any(-1)
    assert mask[0].sum() > 100 and (mask[0] == nonwhite).float().mean() > 0.99
    # an untagged occluder between the camera and the object removes its pixels from the mask
    eye = np.asarray(cam.eye)
    occ_c = eye * 0.5
    occ, _ = _sphere_item(center=tuple(occ_c), radius=0.2, tag=False, color=(0.1, 0.8, 0.1))
    both = SceneItem(torch.cat([obj.vertices, occ.vertices]), torch.cat([obj.faces, occ.faces + len(obj.vertices)]),
                     torch.cat([obj.colors, occ.colors]), torch.cat([obj.is_object, occ.is_object]), cam)
    occ_only = SceneItem(occ.vertices, occ.faces, occ.colors, torch.ones(len(occ.faces), dtype=torch.bool), cam)
    _, m2 = render_scenes([both, occ_only], 48, 48)
    occluded = m2[1] & mask[0]
    assert occluded.sum() > 10
    assert not (m2[0] & m2[1]).any()
    assert ((m2[0] | occluded) == mask[0]).float().mean() > 0.99


def test_batching_does_not_change_pixels():
    o = make_object(0, "chair", "train", 1, 64)
    items = view_items(o, 3) + photo_items(o, 2, 32)
    alone = [render_scenes([it], 32, 32)[0] for it in items]
    batch, _ = render_scenes(items, 32, 32)
    assert all(torch.equal(a[0], b) for a, b in zip(alone, batch))


@pytest.fixture
def one_thread():
    """Small tensor ops are much faster single-threaded on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _chamfer_matrix(points: np.ndarray) -> np.ndarray:
    """(n,P,3) -> (n,n) symmetric Chamfer distances, one batched cdist per row."""
    pts = torch.from_numpy(np.ascontiguousarray(points))
    rows = []
    for i in range(len(pts)):
        d = torch.cdist(pts[i].expand(len(pts), -1, -1), pts)  # (n,P,P)
        rows.append(d.min(2).values.mean(1) + d.min(1).values.mean(1))
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("category", ALL_CATEGORIES)
def test_subtypes_differ_more_than_instances(category, one_thread):
    """Every category generates; objects of one sub-type are closer (Chamfer) than objects of different sub-types."""
    n_sub = len(CATEGORIES[category].subtypes)
    assert n_sub >= 3
    objs = [make_object(0, category, "train", i, 384) for i in range(4 * n_sub)]
    for o in objs:
        assert np.isfinite(o.vertices).all() and np.linalg.norm(o.vertices, axis=1).max() == pytest.approx(1.0)
        assert o.faces.max() < len(o.vertices) and len(o.captions) >= 3
    dist = _chamfer_matrix(np.stack([o.points for o in objs]))
    sub = np.array([o.subtype for o in objs])
    same = sub[:, None] == sub[None, :]
    off_diag = ~np.eye(len(objs), dtype=bool)
    assert dist[same & off_diag].mean() < dist[~same].mean()


def test_normalize_mesh_unit_sphere():
    v, f, _ = MeshBuilder().box((3, 4, 5), (2, 1, 1), (1, 0, 0)).build()
    n = normalize_mesh(v, f)
    assert np.linalg.norm(n, axis=1).max() == pytest.approx(1.0)
    assert np.abs(n.mean(0)).max() < 1e-9
