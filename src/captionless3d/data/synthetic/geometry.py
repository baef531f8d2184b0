"""Parametric primitives, a tiny mesh builder, ShapeNet-style normalisation and area-weighted surface sampling.

Everything is plain numpy (float64 while building, float32 on output) and deterministic. Primitives are unit
templates built once and cached, then scaled / rotated / translated per part, so building an object with a dozen
parts costs well under a millisecond. Convention: y is up, the canonical front faces +z.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache, lru_cache

import numpy as np

Color = Sequence[float]

# ----------------------------------------------------------------------------------------------- unit templates


def lathe(profile: Sequence[tuple[float, float]], sections: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Surface of revolution about the y axis of a polyline ``[(r, y), ...]``.

    Points with ``r == 0`` become a single pole vertex; a profile that starts and ends on the axis gives a closed
    surface (a solid cylinder, a hollow bowl with wall thickness, a vase ...).
    """
    theta = np.linspace(0.0, 2.0 * np.pi, sections, endpoint=False)
    ct, st = np.cos(theta), np.sin(theta)
    verts: list[np.ndarray] = []
    rings: list[np.ndarray] = []  # vertex indices per profile point (length 1 for poles)
    n = 0
    for r, y in profile:
        if r <= 1e-9:
            verts.append(np.array([[0.0, y, 0.0]]))
            rings.append(np.array([n]))
            n += 1
        else:
            verts.append(np.stack([r * ct, np.full(sections, y), r * st], axis=1))
            rings.append(np.arange(n, n + sections))
            n += sections
    faces: list[np.ndarray] = []
    for a, b in zip(rings[:-1], rings[1:]):
        if len(a) == 1 and len(b) == 1:
            continue
        if len(a) == 1:  # fan from pole a to ring b
            nxt = np.roll(b, -1)
            faces.append(np.stack([np.full(sections, a[0]), nxt, b], axis=1))
        elif len(b) == 1:
            nxt = np.roll(a, -1)
            faces.append(np.stack([a, nxt, np.full(sections, b[0])], axis=1))
        else:
            an, bn = np.roll(a, -1), np.roll(b, -1)
            faces.append(np.stack([a, an, bn], axis=1))
            faces.append(np.stack([a, bn, b], axis=1))
    return np.concatenate(verts), np.concatenate(faces).astype(np.int64)


@cache
def _box() -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=np.float64)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int64)
    return v, f


@cache
def _cylinder(sections: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Unit cylinder, radius 1, from y=0 to y=1."""
    return lathe([(0, 0), (1, 0), (1, 1), (0, 1)], sections)


@cache
def _cone(sections: int = 14) -> tuple[np.ndarray, np.ndarray]:
    return lathe([(0, 0), (1, 0), (0, 1)], sections)


@cache
def _sphere(rings: int = 8, sections: int = 14) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, np.pi, rings + 1)
    return lathe([(float(np.sin(a)), float(-np.cos(a))) for a in t], sections)


@cache
def _torus(major_sections: int, minor_sections: int, arc: float) -> tuple[np.ndarray, np.ndarray]:
    """Angle table (cos u, cos w, sin u, sin w) and faces of a (partial) torus; radii are applied by the caller."""
    closed = arc >= 1.0
    nu = major_sections if closed else major_sections + 1
    u = np.linspace(0, 2 * np.pi * arc, nu, endpoint=not closed)
    w = np.linspace(0, 2 * np.pi, minor_sections, endpoint=False)
    uu, ww = np.meshgrid(u, w, indexing="ij")
    i = np.arange(major_sections)[:, None]
    j = np.arange(minor_sections)[None, :]
    i1 = (i + 1) % nu
    j1 = (j + 1) % minor_sections
    a, b, c, d = i * minor_sections + j, i1 * minor_sections + j, i1 * minor_sections + j1, i * minor_sections + j1
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    table = np.stack([np.cos(uu).ravel(), np.cos(ww).ravel(), np.sin(uu).ravel(), np.sin(ww).ravel()], 1)
    return table, faces.astype(np.int64)


# ----------------------------------------------------------------------------------------------- rotations


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rot_align_y(d: np.ndarray) -> np.ndarray:
    """Rotation taking +y onto the unit vector ``d`` (Rodrigues)."""
    d = np.asarray(d, dtype=np.float64)
    d = d / np.linalg.norm(d)
    y = np.array([0.0, 1.0, 0.0])
    v = np.cross(y, d)
    c = float(y @ d)
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * (1.0 / (1.0 + c))


# ----------------------------------------------------------------------------------------------- builder


class MeshBuilder:
    """Collects parts (vertices, faces, colour) and concatenates them into one triangle soup with face colours."""

    def __init__(self) -> None:
        self._v: list[np.ndarray] = []
        self._f: list[np.ndarray] = []
        self._c: list[np.ndarray] = []
        self._n = 0

    def add(self, v: np.ndarray, f: np.ndarray, color: Color) -> MeshBuilder:
        self._v.append(np.asarray(v, dtype=np.float64))
        self._f.append(f + self._n)
        self._c.append(np.broadcast_to(np.asarray(color, dtype=np.float64), (len(f), 3)))
        self._n += len(v)
        return self

    def _place(self, v, f, scale, rot, center, color):
        v = v * np.asarray(scale, dtype=np.float64)
        if rot is not None:
            v = v @ np.asarray(rot).T
        return self.add(v + np.asarray(center, dtype=np.float64), f, color)

    def box(self, center, size, color, rot=None):
        v, f = _box()
        return self._place(v, f, size, rot, center, color)

    def ellipsoid(self, center, radii, color, rot=None):
        v, f = _sphere()
        return self._place(v, f, radii if np.ndim(radii) else (radii,) * 3, rot, center, color)

    def lathe(self, profile, center, color, rot=None, sections: int = 16, scale=(1.0, 1.0, 1.0)):
        v, f = _lathe_cached(tuple((float(r), float(y)) for r, y in profile), sections)
        return self._place(v, f, scale, rot, center, color)

    def cylinder(self, p0, p1, radius, color, sections: int = 12, radius_z: float | None = None):
        """Solid cylinder from point p0 to p1 (any direction); elliptic if ``radius_z`` is given."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        length = float(np.linalg.norm(d))
        v, f = _cylinder(sections)
        rz = radius if radius_z is None else radius_z
        return self._place(v, f, (radius, length, rz), rot_align_y(d), p0, color)

    def cone(self, p0, p1, radius, color, sections: int = 14):
        """Cone with its base disc (radius) at p0 and apex at p1."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        v, f = _cone(sections)
        return self._place(v, f, (radius, float(np.linalg.norm(d)), radius), rot_align_y(d), p0, color)

    def frustum(self, p0, p1, r0, r1, color, sections: int = 14, hollow: float = 0.0):
        """Truncated cone from p0 (radius r0) to p1 (radius r1); ``hollow`` > 0 gives a closed thin shell of that
        wall thickness, open at both ends (a lamp shade)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        length = float(np.linalg.norm(d))
        if hollow > 0:
            a, b = max(r0 - hollow, 1e-3), max(r1 - hollow, 1e-3)
            prof = ((a, 0.0), (r0, 0.0), (r1, 1.0), (b, 1.0), (a, 0.0))
        else:
            prof = ((0.0, 0.0), (r0, 0.0), (r1, 1.0), (0.0, 1.0))
        v, f = _lathe_cached(prof, sections)
        return self._place(v, f, (1.0, length, 1.0), rot_align_y(d), p0, color)

    def torus(self, center, major, minor, color, rot=None, arc: float = 1.0, major_sections: int = 16,
              minor_sections: int = 8):
        """Torus around the y axis (then rotated by ``rot``); ``arc`` < 1 gives a partial ring from angle 0 (a
        handle), closed at the ends by the tube's own faces being left open (thin enough not to matter)."""
        v, f = _torus(major_sections, minor_sections, float(arc))
        x = (major + minor * v[:, 1]) * v[:, 0]
        z = (major + minor * v[:, 1]) * v[:, 2]
        y = minor * v[:, 3]
        return self._place(np.stack([x, y, z], 1), f, (1.0, 1.0, 1.0), rot, center, color)

    def build(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (vertices (V,3) float64, faces (F,3) int64, face_colors (F,3) float64 in [0,1])."""
        return np.concatenate(self._v), np.concatenate(self._f), np.concatenate(self._c)


@lru_cache(maxsize=4096)
def _lathe_cached(profile: tuple, sections: int):
    return lathe(profile, sections)


# ----------------------------------------------------------------------------------------------- normalisation


def face_areas(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def normalize_mesh(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """ShapeNet-style: subtract the area-weighted surface centroid, scale so the farthest vertex has norm 1."""
    areas = face_areas(v, f)
    centroids = v[f].mean(axis=1)
    center = (centroids * areas[:, None]).sum(0) / max(areas.sum(), 1e-12)
    v = v - center
    radius = np.sqrt((v * v).sum(1)).max()
    return v / max(radius, 1e-12)


def sample_surface(v: np.ndarray, f: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` area-weighted uniform surface samples, float32 (N,3)."""
    areas = face_areas(v, f)
    cdf = np.cumsum(areas)
    idx = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    idx = np.minimum(idx, len(f) - 1)
    r1 = np.sqrt(rng.random(n))
    r2 = rng.random(n)
    a, b, c = v[f[idx, 0]], v[f[idx, 1]], v[f[idx, 2]]
    p = (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c
    return p.astype(np.float32)
