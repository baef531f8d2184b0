"""One synthetic object end to end: seeded generation, normalisation, points, white-background renders and cluttered
"photos" with masks.

Every object owns its random streams, derived from ``(seed, category, split, index)`` only, so an object does not
change when other categories, other splits' sizes or the build order / batching / worker count change.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.data.collection import SPLITS
from captionless3d.data.synthetic.geometry import MeshBuilder, normalize_mesh, sample_surface
from captionless3d.data.synthetic.render import Camera, SceneItem, orbit_camera, render_scenes, shade_faces, to_uint8
from captionless3d.data.synthetic.shapes import CATEGORIES, COLORS, Params
from captionless3d.data.synthetic.texts import make_captions

NEAR_DUPLICATE_PROB = 0.3  # share of objects drawn as a jittered copy of one of a few per-sub-type prototypes
N_PROTOTYPES = 4
RENDER_ELEVATION = 30.0
RENDER_DISTANCE = 2.6
RENDER_FOCAL = 2.2

#: How the images of an object are coloured.
#: ``object``: every render and photo shows the object's own part colours (worlds v1/v2), so colour identifies an
#: object between a photo and a render. ``per_image``: each render and each photo draws every part colour afresh
#: from the object's palette (world v3): only geometry identifies the object, as a point cloud sees it.
#: ``grey``: every face the same grey (what a shape looks like without colour; used to measure what colour carries).
COLOUR_MODES = ("object", "per_image", "grey")
GREY = (0.62, 0.62, 0.62)
_COLOUR_JITTER = 0.05  # the per-slot jitter of Params.color


def _code(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


@dataclass
class ObjectSpec:
    object_id: str
    category: str
    subtype: int
    split: str
    vertices: np.ndarray  # (V,3) float64, normalised to the unit sphere
    faces: np.ndarray  # (F,3) int64
    colors: np.ndarray  # (F,3) float64 albedo
    points: np.ndarray  # (P,3) float32
    attributes: dict
    captions: list[str]
    photo_rng: np.random.Generator = field(repr=False)
    colours: str = "object"  # one of COLOUR_MODES
    palette: tuple[str, ...] = ()  # colour names the object's parts may take (``per_image``)
    colour_rng: np.random.Generator | None = field(default=None, repr=False)


def make_object(seed: int, category: str, split: str, index: int, n_points: int, n_captions: int = 4,
                colours: str = "object") -> ObjectSpec:
    if colours not in COLOUR_MODES:
        raise ValueError(f"colours: expected one of {COLOUR_MODES}, got {colours!r}")
    cat = CATEGORIES[category]
    root = np.random.SeedSequence([seed, _code(category), SPLITS.index(split), index])
    # a sixth child for the per-image colours: spawn(6)[:5] == spawn(5), so the other streams (and thus worlds
    # built before colour modes existed) are unchanged
    s_shape, s_pts, s_photo, s_text, s_dup, s_colour = root.spawn(6)
    own = np.random.default_rng(s_shape)
    subtype = index % len(cat.subtypes)
    dup = np.random.default_rng(s_dup)
    proto_id = -1
    if dup.random() < NEAR_DUPLICATE_PROB:
        proto_id = int(dup.integers(N_PROTOTYPES))
        proto = np.random.default_rng([seed, _code(category), 7919, subtype, proto_id])
        params = Params(proto, own, jitter=0.03)
    else:
        params = Params(own, own)
    builder = MeshBuilder()
    attrs = cat.generate(params, builder, subtype)
    v, f, c = builder.build()
    v = normalize_mesh(v, f)
    pts = sample_surface(v, f, n_points, np.random.default_rng(s_pts))
    attrs = {**attrs, "params": params.values, "prototype": proto_id, "n_faces": int(len(f))}
    caps = make_captions(category, cat.subtypes[subtype], cat.nouns[subtype], attrs, np.random.default_rng(s_text),
                         n_captions, colour=colours == "object")
    return ObjectSpec(f"{category}/{split}/{index:04d}", category, subtype, split, v, f, c, pts, attrs, caps,
                      np.random.default_rng(s_photo), colours, tuple(params.palette) or tuple(COLORS),
                      np.random.default_rng(s_colour))


def image_albedo(obj: ObjectSpec, colours: str | None = None) -> np.ndarray:
    """Face albedos ``(F, 3)`` for one image of ``obj`` under ``colours`` (default: the object's own mode).

    ``per_image`` groups the faces by their stored colour (one group per part colour) and gives each group a colour
    drawn from the object's palette with the jitter of :meth:`Params.color`; every call draws again, from the
    object's own colour stream, so images are reproducible and independent of batching.
    """
    colours = obj.colours if colours is None else colours
    if colours == "object":
        return obj.colors
    if colours == "grey":
        return np.full(obj.colors.shape, GREY, dtype=np.float64)
    if colours != "per_image":
        raise ValueError(f"colours: expected one of {COLOUR_MODES}, got {colours!r}")
    groups, inverse = np.unique(obj.colors, axis=0, return_inverse=True)
    rng = obj.colour_rng
    names = [obj.palette[i] for i in rng.integers(len(obj.palette), size=len(groups))]
    drawn = np.asarray([COLORS[n] for n in names]) + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, (len(groups), 3))
    return np.clip(drawn, 0.0, 1.0)[inverse.reshape(-1)]


def view_angles(n_views: int) -> list[tuple[float, float]]:
    return [(360.0 * k / n_views, RENDER_ELEVATION) for k in range(n_views)]


def _render_light(cam: Camera) -> torch.Tensor:
    right, up, fwd = (torch.as_tensor(r, dtype=torch.float32) for r in cam.basis())
    light = -0.35 * right + 0.6 * up - 0.72 * fwd  # camera-relative key light, up-left of the viewer
    return light / light.norm()


def view_items(obj: ObjectSpec, n_views: int, colours: str | None = None) -> list[SceneItem]:
    """The white-background renders of ``obj`` from :func:`view_angles`; ``colours`` overrides the object's mode."""
    v = torch.as_tensor(obj.vertices, dtype=torch.float32)
    f = torch.as_tensor(obj.faces)
    tag = torch.ones(len(f), dtype=torch.bool)
    items = []
    for az, el in view_angles(n_views):
        albedo = torch.as_tensor(image_albedo(obj, colours), dtype=torch.float32)
        cam = orbit_camera(az, el, RENDER_DISTANCE, RENDER_FOCAL)
        col = shade_faces(v, f, albedo, torch.tensor(cam.eye, dtype=torch.float32), _render_light(cam), 0.38, 0.62)
        items.append(SceneItem(v, f, col, tag, cam, None))
    return items


# --------------------------------------------------------------------------------------------- photos

_FLOOR_COLORS = np.array([[0.55, 0.38, 0.22], [0.7, 0.55, 0.38], [0.5, 0.5, 0.5], [0.75, 0.72, 0.68], [0.35, 0.3, 0.28],
                          [0.6, 0.62, 0.55]])




def _clutter_mesh(rng: np.random.Generator, center: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    b = MeshBuilder()
    kind = rng.integers(3)
    col = (0, 0, 0)
    if kind == 0:
        b.box(center, size * rng.uniform(0.5, 1.5, 3), col, rot=np.array(_rot_y(rng.uniform(0, math.pi))))
    elif kind == 1:
        b.ellipsoid(center, size * rng.uniform(0.5, 1.0, 3) * 0.6, col)
    else:
        h = size * rng.uniform(0.8, 2.0)
        b.cylinder(center - [0, h / 2, 0], center + [0, h / 2, 0], size * rng.uniform(0.2, 0.5), col)
    v, f, _ = b.build()
    return v, f


def _rot_y(a: float) -> list[list[float]]:
    c, s = math.cos(a), math.sin(a)
    return [[c, 0, s], [0, 1, 0], [-s, 0, c]]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Random gradient + optional stripes / checker + low-frequency blotches, float32 (H,W,3) in [0,1]."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size, dtype=np.float32), np.linspace(0, 1, size, dtype=np.float32),
                         indexing="ij")
    c0, c1 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    a = rng.uniform(0, 2 * math.pi)
    t = np.clip(0.5 + (xx - 0.5) * math.cos(a) + (yy - 0.5) * math.sin(a), 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t
    r = rng.random()
    if r < 0.4:  # stripes
        b = rng.uniform(0, math.pi)
        freq = rng.uniform(3, 12)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(b) + yy * math.sin(b)) + rng.uniform(0, 6.3))
        img = img * (1 - rng.uniform(0.15, 0.45) * s[..., None])
    elif r < 0.6:  # checker / tiles
        n = rng.integers(3, 9)
        chk = ((np.floor(xx * n) + np.floor(yy * n)) % 2)[..., None]
        img = img * (1 - rng.uniform(0.1, 0.35) * chk)
    blot = rng.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32)
    blot = F.interpolate(torch.from_numpy(blot), size=(size, size), mode="bilinear",
                         align_corners=False)[0].permute(1, 2, 0).numpy()
    img = img + rng.uniform(0.03, 0.15) * blot + rng.normal(0, rng.uniform(0.01, 0.05), img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def photo_items(obj: ObjectSpec, n_photos: int, image_size: int) -> list[SceneItem]:
    """Random viewpoint, lighting, colour jitter, cluttered textured background and optional occluder."""
    rng = obj.photo_rng
    v_obj = obj.vertices
    items = []
    for _ in range(n_photos):
        az, el = rng.uniform(0, 360), rng.uniform(-5, 55)
        target = rng.normal(0, 0.1, 3)
        cam = orbit_camera(az, el, rng.uniform(2.3, 3.3), RENDER_FOCAL * rng.uniform(0.9, 1.2), target=tuple(target),
                           roll_deg=float(rng.normal(0, 6)))
        eye = np.asarray(cam.eye)
        albedo = image_albedo(obj) * rng.uniform(0.7, 1.2) * (1 + rng.uniform(-0.15, 0.15, 3))
        hue_shift = rng.uniform(-0.1, 0.1, 3)
        albedo = np.clip(albedo + hue_shift, 0, 1)
        verts, faces, colors, tags = [v_obj], [obj.faces], [albedo], [np.ones(len(obj.faces), bool)]
        n_v = len(v_obj)

        def add(v, f, col):
            nonlocal n_v
            verts.append(v)
            faces.append(f + n_v)
            colors.append(np.broadcast_to(col, (len(f), 3)))
            tags.append(np.zeros(len(f), bool))
            n_v += len(v)

        floor_y = float(v_obj[:, 1].min())
        if rng.random() < 0.6:  # a floor / table surface under the object
            fv = np.array([[-6, floor_y, -6], [6, floor_y, -6], [6, floor_y, 6], [-6, floor_y, 6]], float)
            add(fv, np.array([[0, 1, 2], [0, 2, 3]]),
                np.clip(_FLOOR_COLORS[rng.integers(len(_FLOOR_COLORS))] + rng.uniform(-0.1, 0.1, 3), 0, 1))
        for _k in range(rng.integers(1, 5)):  # clutter around the object
            ang = rng.uniform(0, 2 * math.pi)
            rad = rng.uniform(1.3, 2.6)
            size = rng.uniform(0.2, 0.6)
            c = np.array([rad * math.cos(ang), floor_y + size * 0.5 + rng.uniform(0, 0.6), rad * math.sin(ang)])
            cv, cf = _clutter_mesh(rng, c, size)
            add(cv, cf, rng.uniform(0.05, 0.95, 3))
        if rng.random() < 0.35:  # partial occluder between the camera and the object
            basis = cam.basis()
            t = rng.uniform(0.35, 0.6)
            c = (eye + t * (np.asarray(cam.target) - eye)
                 + basis[0] * rng.choice([-1, 1]) * rng.uniform(0.15, 0.35) * (1 - t) * 2
                 + basis[1] * rng.uniform(-0.3, 0.1) * (1 - t) * 2)
            cv, cf = _clutter_mesh(rng, c, rng.uniform(0.12, 0.25) * (1 - t) * 2)
            add(cv, cf, rng.uniform(0.05, 0.95, 3))
        v = torch.as_tensor(np.concatenate(verts), dtype=torch.float32)
        f = torch.as_tensor(np.concatenate(faces))
        alb = torch.as_tensor(np.concatenate(colors), dtype=torch.float32)
        ld = rng.normal(0, 1, 3)
        ld[1] = abs(ld[1]) + 0.3
        ld /= np.linalg.norm(ld)
        col = shade_faces(v, f, alb, torch.tensor(eye, dtype=torch.float32), torch.tensor(ld, dtype=torch.float32),
                          float(rng.uniform(0.15, 0.5)), float(rng.uniform(0.5, 1.0)),
                          torch.tensor(1 + rng.uniform(-0.15, 0.15, 3), dtype=torch.float32))
        bg = torch.from_numpy(_background(rng, image_size))
        items.append(SceneItem(v, f, col, torch.as_tensor(np.concatenate(tags)), cam, bg))
    return items


def render_objects(objs: list[ObjectSpec], n_views: int, n_photos: int, image_size: int, supersample: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns views (B,V,H,W,3) uint8, photos (B,K,H,W,3) uint8, masks (B,K,H,W) bool for a batch of objects."""
    items: list[SceneItem] = []
    noise = []
    for o in objs:
        items += view_items(o, n_views)
    for o in objs:
        items += photo_items(o, n_photos, image_size)
        noise.append(o.photo_rng.normal(0, 1, (n_photos, image_size, image_size, 3)).astype(np.float32)
                     * o.photo_rng.uniform(0.01, 0.04, (n_photos, 1, 1, 1)).astype(np.float32))
    imgs, masks = render_scenes(items, image_size, image_size, supersample)
    nv = len(objs) * n_views
    views = to_uint8(imgs[:nv]).reshape(len(objs), n_views, image_size, image_size, 3)
    ph = imgs[nv:]
    if n_photos:
        ph = (ph + torch.from_numpy(np.concatenate(noise))).clamp(0, 1)
    photos = to_uint8(ph).reshape(len(objs), n_photos, image_size, image_size, 3)
    pm = masks[nv:].numpy().reshape(len(objs), n_photos, image_size, image_size)
    return views, photos, pm
