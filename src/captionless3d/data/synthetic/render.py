"""A small vectorised pure-torch z-buffer triangle rasteriser (headless, CPU), cameras and flat Lambert shading.

Design: every triangle of every image in a batch is rasterised in one pass. Each triangle is expanded into the pixel
rows it spans and each (triangle, row) into the exact span of covered pixel centres, with ``repeat_interleave`` (no
Python loop over pixels or faces); visibility is resolved with one ``scatter_reduce(amin)`` over a 64-bit key
``(quantised depth << 32) | face``. Ties break towards the lower face id,
and all arithmetic is element-wise (no batched matmul), so the result does not depend on how images are batched.

Shading is flat (one colour per face and image): ``albedo * (ambient + diffuse * max(0, n.l))`` with the face normal
flipped towards the camera, so the winding of a primitive does not matter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NEAR = 0.05
_DEPTH_SCALE = float(1 << 20)  # depth quantisation: ~1e-6 units
_FACE_BITS = 32


@dataclass(frozen=True)
class Camera:
    """Look-at camera. ``focal`` is in units of half the image width (1.0 = 90 degree field of view)."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    focal: float = 2.2
    roll_deg: float = 0.0

    def basis(self) -> np.ndarray:
        """Rows: right, up, forward (world -> camera rotation)."""
        eye, target = np.asarray(self.eye, float), np.asarray(self.target, float)
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        world_up = np.array([0.0, 1.0, 0.0])
        right = np.cross(fwd, world_up)
        if np.linalg.norm(right) < 1e-8:  # looking straight up/down
            right = np.array([1.0, 0.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        if self.roll_deg:
            a = math.radians(self.roll_deg)
            right, up = math.cos(a) * right + math.sin(a) * up, -math.sin(a) * right + math.cos(a) * up
        return np.stack([right, up, fwd])


def orbit_camera(azimuth_deg: float, elevation_deg: float, distance: float = 2.6, focal: float = 2.2,
                 target=(0.0, 0.0, 0.0), roll_deg: float = 0.0) -> Camera:
    """Camera on a sphere around ``target``; azimuth 0 looks at the canonical front (+z), y is up."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    offset = distance * np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    eye = np.asarray(target, float) + offset
    return Camera(eye=tuple(eye.tolist()), target=tuple(map(float, target)), focal=focal, roll_deg=roll_deg)


def project(vertices: torch.Tensor, camera: Camera, height: int, width: int) -> torch.Tensor:
    """World vertices (V,3) -> screen (V,3): x right / y down in pixels (pixel centres at i+0.5), z = depth."""
    basis = torch.as_tensor(camera.basis(), dtype=vertices.dtype)
    eye = torch.as_tensor(camera.eye, dtype=vertices.dtype)
    p = vertices - eye
    # element-wise dot products (no matmul: results must not depend on batch composition)
    xc = p[:, 0] * basis[0, 0] + p[:, 1] * basis[0, 1] + p[:, 2] * basis[0, 2]
    yc = p[:, 0] * basis[1, 0] + p[:, 1] * basis[1, 1] + p[:, 2] * basis[1, 2]
    zc = p[:, 0] * basis[2, 0] + p[:, 1] * basis[2, 1] + p[:, 2] * basis[2, 2]
    zs = zc.clamp(min=1e-6)
    half = 0.5 * width
    sx = half + camera.focal * half * xc / zs
    sy = 0.5 * height - camera.focal * half * yc / zs
    return torch.stack([sx, sy, zc], dim=1)


def rasterize(tris: torch.Tensor, image_index: torch.Tensor, n_images: int, height: int, width: int) -> torch.Tensor:
    """Z-buffer rasterisation (scanline spans, fully vectorised).

    Args:
        tris: (F,3,3) float32 screen-space triangles (x, y in pixels, z = camera depth > 0).
        image_index: (F,) int64, which image each triangle belongs to.
    Returns:
        (n_images, height, width) int64 index of the visible triangle, -1 where nothing is drawn.

    Each triangle is expanded into the pixel rows it spans; for each (triangle, row) the exact x-span of the
    triangle at the row's pixel centre is intersected analytically from the three edges, and only the covered pixel
    centres become fragments. Depth is interpolated as 1/z, which is affine in screen space (a per-face plane).
    """
    n_pix = n_images * height * width
    empty = torch.full((n_images, height, width), -1, dtype=torch.int64)
    if tris.numel() == 0:
        return empty
    tris = tris.to(torch.float32)
    x, y, z = tris[..., 0], tris[..., 1], tris[..., 2]
    e1x, e1y = x[:, 1] - x[:, 0], y[:, 1] - y[:, 0]
    e2x, e2y = x[:, 2] - x[:, 0], y[:, 2] - y[:, 0]
    area2 = e1x * e2y - e1y * e2x
    ymin, ymax = y.amin(1), y.amax(1)
    j0 = torch.ceil(ymin - 0.5).clamp(min=0)
    j1 = torch.floor(ymax - 0.5).clamp(max=height - 1)
    nrows = (j1 - j0 + 1).clamp(min=0)
    valid = ((z.amin(1) > NEAR) & (area2.abs() > 1e-9) & (nrows > 0) & (x.amax(1) >= 0) & (x.amin(1) <= width)
             & ((x.amax(1) - x.amin(1)) < 4 * width))
    face = torch.nonzero(valid).squeeze(1)
    if face.numel() == 0:
        return empty
    # per-face plane of 1/z and image offset
    iz = 1.0 / z
    d1, d2 = iz[:, 1] - iz[:, 0], iz[:, 2] - iz[:, 0]
    inv_area = 1.0 / area2
    pa = (d1 * e2y - d2 * e1y) * inv_area
    pb = (e1x * d2 - e2x * d1) * inv_area
    pc = iz[:, 0] - pa * x[:, 0] - pb * y[:, 0]
    # --- rows: (face, row) items
    nr = nrows.index_select(0, face).to(torch.int64)
    n_items = int(nr.sum())
    rf = torch.repeat_interleave(face, nr, output_size=n_items)
    start = torch.cumsum(nr, 0) - nr
    local = torch.arange(n_items) - torch.repeat_interleave(start, nr, output_size=n_items)
    yc = j0.index_select(0, rf) + local.to(torch.float32) + 0.5  # pixel-centre y of the row
    xs = x.index_select(0, rf)
    ys = y.index_select(0, rf)
    lo = torch.full_like(yc, float("inf"))
    hi = torch.full_like(yc, float("-inf"))
    for a, b in ((0, 1), (1, 2), (2, 0)):
        ya, yb, xa, xb = ys[:, a], ys[:, b], xs[:, a], xs[:, b]
        dy = yb - ya
        crosses = ((yc >= torch.minimum(ya, yb)) & (yc <= torch.maximum(ya, yb)) & (dy != 0))
        t = (yc - ya) / torch.where(dy == 0, torch.ones_like(dy), dy)
        xi = xa + t * (xb - xa)
        lo = torch.where(crosses, torch.minimum(lo, xi), lo)
        hi = torch.where(crosses, torch.maximum(hi, xi), hi)
    i0 = torch.ceil(lo - 0.5).clamp(min=0)
    i1 = torch.floor(hi - 0.5).clamp(max=width - 1)
    cnt = torch.nan_to_num(i1 - i0 + 1, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0).to(torch.int64)
    # --- fragments
    total = int(cnt.sum())
    item = torch.repeat_interleave(torch.arange(n_items), cnt, output_size=total)
    istart = torch.cumsum(cnt, 0) - cnt
    px = (i0.index_select(0, item) + (torch.arange(total) - istart.index_select(0, item)).to(torch.float32))
    py = yc.index_select(0, item) - 0.5
    g = rf.index_select(0, item)
    inv_z = pa.index_select(0, g) * (px + 0.5) + pb.index_select(0, g) * (py + 0.5) + pc.index_select(0, g)
    depth = (1.0 / inv_z.clamp(min=1e-6)).clamp(min=0, max=4000.0)
    key = (depth * _DEPTH_SCALE).to(torch.int64) * (1 << _FACE_BITS) + g
    base = image_index.index_select(0, g) * (height * width)
    pix = base + py.to(torch.int64) * width + px.to(torch.int64)
    big = torch.iinfo(torch.int64).max
    zbuf = torch.full((n_pix,), big, dtype=torch.int64)
    zbuf.scatter_reduce_(0, pix, key, reduce="amin", include_self=True)
    out = torch.where(zbuf == big, torch.full_like(zbuf, -1), zbuf & ((1 << _FACE_BITS) - 1))
    return out.view(n_images, height, width)


def shade_faces(vertices: torch.Tensor, faces: torch.Tensor, albedo: torch.Tensor, eye: torch.Tensor,
                light_dir: torch.Tensor, ambient: float, diffuse: float,
                light_color: torch.Tensor | None = None) -> torch.Tensor:
    """Flat Lambert colour (F,3) in [0,1] for one camera; normals are flipped to face the camera."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=1)
    n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)
    to_eye = eye - (a + b + c) / 3.0
    sign = torch.where((n * to_eye).sum(1, keepdim=True) < 0, -1.0, 1.0)
    n = n * sign
    lam = (n * light_dir).sum(1, keepdim=True).clamp(min=0.0)
    col = albedo * (ambient + diffuse * lam)
    if light_color is not None:
        col = col * light_color
    return col.clamp(0.0, 1.0)


def downsample(img: torch.Tensor, factor: int) -> torch.Tensor:
    """(B,H*f,W*f,C) -> (B,H,W,C) box filter (anti-aliasing after supersampling)."""
    if factor == 1:
        return img
    x = img.permute(0, 3, 1, 2)
    x = F.avg_pool2d(x, factor)
    return x.permute(0, 2, 3, 1)


@dataclass
class SceneItem:
    """One image to render: world geometry with per-face (already shaded) colours and an object tag per face."""

    vertices: torch.Tensor  # (V,3) float32
    faces: torch.Tensor  # (F,3) int64
    colors: torch.Tensor  # (F,3) float32 in [0,1]
    is_object: torch.Tensor  # (F,) bool, True for faces of the object itself (drives the mask)
    camera: Camera
    background: torch.Tensor | None = None  # (H,W,3) float32 in [0,1]; None = plain white


def render_scenes(items: list[SceneItem], height: int, width: int,
                  supersample: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Render every item in one rasterisation pass.

    Returns (images float32 (B,H,W,3) in [0,1], masks bool (B,H,W)); the mask marks pixels where the object itself
    (not clutter, not an occluder) covers at least half the pixel.
    """
    hs, ws = height * supersample, width * supersample
    scr, faces, img_idx, colors, tags = [], [], [], [], []
    offset = 0
    for b, it in enumerate(items):
        scr.append(project(it.vertices, it.camera, hs, ws))
        faces.append(it.faces + offset)
        offset += len(it.vertices)
        img_idx.append(torch.full((len(it.faces),), b, dtype=torch.int64))
        colors.append(it.colors.to(torch.float32))
        tags.append(it.is_object)
    faces_all = torch.cat(faces)
    tris = torch.cat(scr).index_select(0, faces_all.reshape(-1)).view(-1, 3, 3)
    buf = rasterize(tris, torch.cat(img_idx), len(items), hs, ws).reshape(-1)
    colors_all = torch.cat([torch.cat(colors), torch.zeros(1, 3)])  # row -1 -> black (no face)
    tags_all = torch.cat([torch.cat(tags), torch.zeros(1, dtype=torch.bool)])
    hit = buf >= 0
    safe = torch.where(hit, buf, torch.full_like(buf, len(colors_all) - 1))
    rgb = colors_all.index_select(0, safe).view(len(items), hs, ws, 3)
    obj = tags_all.index_select(0, safe).to(torch.float32).view(len(items), hs, ws, 1)
    cover = downsample(hit.to(torch.float32).view(len(items), hs, ws, 1), supersample)
    rgb = downsample(rgb, supersample)
    obj = downsample(obj, supersample)[..., 0]
    bgs = torch.stack([it.background if it.background is not None else torch.ones(height, width, 3) for it in items])
    images = rgb + (1.0 - cover) * bgs
    return images.clamp(0, 1), obj >= 0.5


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).numpy()
