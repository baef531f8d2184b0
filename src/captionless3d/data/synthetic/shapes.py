"""Category generators: each category has >= 3 visually distinct sub-types with continuous parameters and part options.

A generator ``fn(p: Params, b: MeshBuilder, subtype: int) -> dict`` adds coloured parts to ``b`` (natural units,
y up, canonical front +z) and returns the object's attributes: ``color`` (name of the main colour), ``features``
(short noun phrases such as "armrests", "five wheels", used by the caption templates), ``size`` (an adjective) and
the sampled parameters. All randomness goes through ``p`` so that near-duplicate objects can share a prototype.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from captionless3d.data.synthetic.geometry import MeshBuilder, rot_x, rot_y, rot_z

# ---------------------------------------------------------------------------------------------- colours

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.13, 0.11), "orange": (0.92, 0.46, 0.10), "yellow": (0.93, 0.80, 0.15),
    "green": (0.20, 0.55, 0.22), "teal": (0.10, 0.50, 0.52), "blue": (0.15, 0.32, 0.78),
    "navy": (0.10, 0.13, 0.38), "purple": (0.46, 0.22, 0.62), "pink": (0.92, 0.52, 0.62),
    "brown": (0.45, 0.27, 0.14), "tan": (0.76, 0.60, 0.40), "beige": (0.86, 0.79, 0.63),
    "gray": (0.50, 0.50, 0.52), "black": (0.13, 0.13, 0.14), "white": (0.93, 0.93, 0.91),
    "silver": (0.72, 0.74, 0.78), "gold": (0.83, 0.66, 0.22), "cream": (0.95, 0.90, 0.75),
}
BRIGHT = ["red", "orange", "yellow", "green", "teal", "blue", "purple", "pink"]
WOOD = ["brown", "tan", "beige"]
FABRIC = ["red", "green", "teal", "blue", "navy", "purple", "gray", "beige", "brown", "black", "pink", "orange"]
NEUTRAL = ["white", "gray", "black", "silver", "beige", "cream"]
METAL = ["silver", "gray", "black", "gold"]


class Params:
    """Draws shape parameters. A near-duplicate object draws from a shared *prototype* RNG and adds a small
    per-object jitter to continuous values, so it looks almost like its siblings; other objects use their own RNG."""

    def __init__(self, proto: np.random.Generator, own: np.random.Generator, jitter: float = 0.0) -> None:
        self.proto, self.own, self.jitter = proto, own, jitter
        self.values: dict[str, float | int | str | bool] = {}
        self.palette: list[str] = []  # every colour name any colour slot of this object could have drawn

    def u(self, name: str, lo: float, hi: float) -> float:
        v = float(self.proto.uniform(lo, hi))
        if self.jitter > 0:
            v = float(np.clip(v + self.own.normal(0.0, self.jitter * (hi - lo)), lo, hi))
        self.values[name] = round(v, 4)
        return v

    def i(self, name: str, lo: int, hi: int) -> int:
        """Integer in [lo, hi] inclusive."""
        v = int(self.proto.integers(lo, hi + 1))
        self.values[name] = v
        return v

    def flag(self, name: str, prob: float = 0.5) -> bool:
        v = bool(self.proto.random() < prob)
        self.values[name] = v
        return v

    def pick(self, name: str, options: Sequence[str]) -> str:
        v = options[int(self.proto.integers(len(options)))]
        self.values[name] = v
        return v

    def color(self, name: str, options: Sequence[str]) -> tuple[str, np.ndarray]:
        self.palette += [o for o in dict.fromkeys(options) if o not in self.palette]
        cname = self.pick(name, options)
        base = np.asarray(COLORS[cname])
        jit = self.proto.uniform(-0.05, 0.05, 3) + (self.own.uniform(-0.02, 0.02, 3) if self.jitter > 0 else 0.0)
        return cname, np.clip(base + jit, 0.0, 1.0)


@dataclass(frozen=True)
class Category:
    name: str
    subtypes: tuple[str, ...]  # short sub-type labels ("four-legged dining", ...)
    nouns: tuple[str, ...]  # caption noun phrase per sub-type ("dining chair", ...)
    generate: Callable[[Params, MeshBuilder, int], dict]


def _size(v: float, lo: float, hi: float, words=("small", "medium-sized", "large")) -> str:
    t = (v - lo) / max(hi - lo, 1e-9)
    return words[0] if t < 0.33 else (words[1] if t < 0.66 else words[2])


def _legs(b: MeshBuilder, xs: float, zs: float, y0: float, y1: float, r: float, color, square: bool = False,
          splay: float = 0.0) -> None:
    for sx in (-1, 1):
        for sz in (-1, 1):
            top = (sx * xs, y1, sz * zs)
            bot = (sx * (xs + splay), y0, sz * (zs + splay))
            if square:
                b.box(((top[0] + bot[0]) / 2, (y0 + y1) / 2, (top[2] + bot[2]) / 2), (2 * r, y1 - y0, 2 * r), color)
            else:
                b.cylinder(bot, top, r, color, sections=8)


NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten",
       11: "eleven", 12: "twelve"}

# ---------------------------------------------------------------------------------------------- furniture


def gen_chair(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", FABRIC + WOOD)
    _, leg = p.color("leg_color", WOOD + METAL)
    feats: list[str] = []
    sw, sd = p.u("seat_width", 0.40, 0.56), p.u("seat_depth", 0.38, 0.52)
    if st == 0:  # four-legged dining
        sh, th = p.u("seat_height", 0.42, 0.50), p.u("seat_thickness", 0.03, 0.07)
        b.box((0, sh, 0), (sw, th, sd), col)
        _legs(b, sw / 2 - 0.03, sd / 2 - 0.03, 0, sh - th / 2, p.u("leg_radius", 0.015, 0.03), leg,
              square=p.flag("square_legs"), splay=p.u("splay", 0.0, 0.04))
        bh = p.u("back_height", 0.35, 0.60)
        style = p.pick("back_style", ["solid", "slats", "rails"])
        y0, zb = sh + th / 2, -sd / 2 + 0.02
        for sx in (-1, 1):
            b.box((sx * (sw / 2 - 0.02), y0 + bh / 2, zb), (0.035, bh, 0.035), leg)
        if style == "solid":
            b.box((0, y0 + bh * 0.55, zb), (sw - 0.04, bh * 0.7, 0.025), col)
            feats.append("a solid backrest")
        elif style == "slats":
            n = p.i("n_slats", 2, 5)
            for k in range(n):
                x = (k + 0.5) / n * (sw - 0.08) - (sw - 0.08) / 2
                b.box((x, y0 + bh * 0.5, zb), (0.03, bh * 0.9, 0.02), col)
            b.box((0, y0 + bh - 0.03, zb), (sw, 0.06, 0.03), col)
            feats.append(f"{NUM[n]} vertical slats")
        else:
            n = p.i("n_rails", 2, 4)
            for k in range(n):
                b.box((0, y0 + bh * (k + 1) / (n + 0.3), zb), (sw - 0.03, 0.04, 0.025), col)
            feats.append("a ladder back")
        feats.append("four legs")
        size = _size(bh, 0.35, 0.60, ("low-backed", "mid-backed", "high-backed"))
    elif st == 1:  # office swivel
        sh = p.u("seat_height", 0.45, 0.55)
        b.box((0, sh, 0), (sw, 0.08, sd), col)
        b.cylinder((0, 0.09, 0), (0, sh - 0.04, 0), p.u("pole_radius", 0.025, 0.04), (0.2, 0.2, 0.2))
        n = p.i("n_spokes", 4, 5) if p.flag("four_spokes", 0.25) else 5
        reach = p.u("base_reach", 0.24, 0.34)
        for k in range(n):
            a = 2 * math.pi * k / n + math.pi / 2
            end = (reach * math.cos(a), 0.06, reach * math.sin(a))
            b.cylinder((0, 0.09, 0), end, 0.022, (0.2, 0.2, 0.2), sections=6)
            b.ellipsoid((end[0], 0.03, end[2]), 0.03, (0.1, 0.1, 0.1))
        bh = p.u("back_height", 0.35, 0.75)
        b.box((0, sh + 0.06 + bh / 2, -sd / 2 + 0.03), (sw * p.u("back_width", 0.8, 1.0), bh, 0.06), col)
        b.box((0, sh + 0.1, -sd / 2 + 0.01), (0.06, 0.16, 0.03), (0.2, 0.2, 0.2))
        if p.flag("armrests", 0.6):
            for sx in (-1, 1):
                b.box((sx * (sw / 2 + 0.02), sh + 0.2, 0), (0.05, 0.03, sd * 0.7), (0.15, 0.15, 0.15))
                b.box((sx * (sw / 2 + 0.02), sh + 0.1, -0.02), (0.03, 0.2, 0.04), (0.15, 0.15, 0.15))
            feats.append("armrests")
        feats.append(f"{NUM[n]} wheels")
        size = _size(bh, 0.35, 0.75, ("low-backed", "mid-backed", "high-backed"))
    elif st == 2:  # armchair
        sh = p.u("seat_height", 0.38, 0.46)
        aw = p.u("arm_width", 0.10, 0.20)
        base_h = sh - p.u("leg_height", 0.05, 0.15)
        b.box((0, (base_h + sh) / 2 + 0.0, 0.02), (sw + 2 * aw, sh - base_h + 0.02, sd + 0.12), col)
        _legs(b, sw / 2 + aw - 0.05, sd / 2, 0, base_h + 0.01, 0.025, leg)
        _, cush = p.color("cushion_color", FABRIC)
        b.box((0, sh + 0.05, 0.05), (sw - 0.02, 0.10, sd), cush)
        ah = p.u("arm_height", 0.18, 0.30)
        for sx in (-1, 1):
            b.box((sx * (sw / 2 + aw / 2), sh + ah / 2, 0.02), (aw, ah, sd + 0.12), col)
        bh = p.u("back_height", 0.35, 0.65)
        b.box((0, sh + bh / 2, -sd / 2 - 0.02), (sw + 2 * aw, bh, p.u("back_thickness", 0.12, 0.22)), col)
        feats += ["thick padded arms", "a cushion"]
        size = _size(sw + 2 * aw, 0.6, 0.96, ("compact", "roomy", "oversized"))
    else:  # stool (no back)
        sh = p.u("seat_height", 0.45, 0.80)
        r = p.u("seat_radius", 0.16, 0.24)
        b.cylinder((0, sh - 0.04, 0), (0, sh, 0), r, col, sections=16)
        n = p.i("n_legs", 3, 4)
        spread = p.u("spread", 0.0, 0.08)
        for k in range(n):
            a = 2 * math.pi * k / n + 0.3
            top = ((r - 0.04) * math.cos(a), sh - 0.04, (r - 0.04) * math.sin(a))
            bot = ((r - 0.04 + spread) * math.cos(a), 0.0, (r - 0.04 + spread) * math.sin(a))
            b.cylinder(bot, top, 0.018, leg, sections=6)
        if p.flag("footrest", 0.6):
            yr = sh * 0.35
            b.torus((0, yr, 0), r - 0.04 + spread * (1 - yr / sh), 0.012, leg)
            feats.append("a ring footrest")
        feats.append(f"{NUM[n]} legs")
        size = _size(sh, 0.45, 0.8, ("low", "counter-height", "tall"))
    return {"color": cname, "features": feats, "size": size}


def gen_table(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["white", "black", "gray"])
    _, leg = p.color("leg_color", WOOD + METAL)
    feats: list[str] = []
    if st == 0:  # rectangular four-leg
        w, d, h = p.u("width", 1.0, 1.8), p.u("depth", 0.6, 0.9), p.u("height", 0.70, 0.78)
        th = p.u("top_thickness", 0.03, 0.06)
        b.box((0, h - th / 2, 0), (w, th, d), col)
        _legs(b, w / 2 - 0.06, d / 2 - 0.06, 0, h - th, p.u("leg_radius", 0.025, 0.045), leg,
              square=p.flag("square_legs"))
        if p.flag("apron", 0.5):
            b.box((0, h - th - 0.04, d / 2 - 0.06), (w - 0.12, 0.08, 0.02), col)
            b.box((0, h - th - 0.04, -d / 2 + 0.06), (w - 0.12, 0.08, 0.02), col)
            feats.append("an apron under the top")
        feats.append("four legs")
        size = _size(w, 1.0, 1.8, ("small", "medium", "long"))
    elif st == 1:  # round pedestal
        r, h = p.u("radius", 0.35, 0.6), p.u("height", 0.70, 0.78)
        b.cylinder((0, h - 0.04, 0), (0, h, 0), r, col, sections=20)
        b.cylinder((0, 0.04, 0), (0, h - 0.04, 0), p.u("pedestal_radius", 0.04, 0.09), leg)
        if p.flag("cross_feet", 0.5):
            fr = r * 0.7
            b.box((0, 0.03, 0), (2 * fr, 0.06, 0.08), leg)
            b.box((0, 0.03, 0), (0.08, 0.06, 2 * fr), leg)
            feats.append("cross-shaped feet")
        else:
            b.cylinder((0, 0, 0), (0, 0.05, 0), r * 0.55, leg, sections=16)
            feats.append("a round base")
        feats.append("a single central pedestal")
        size = _size(r, 0.35, 0.6)
    elif st == 2:  # trestle
        w, d, h = p.u("width", 1.4, 2.2), p.u("depth", 0.7, 1.0), p.u("height", 0.72, 0.78)
        b.box((0, h - 0.03, 0), (w, 0.06, d), col)
        inset = p.u("inset", 0.15, 0.3)
        for sx in (-1, 1):
            x = sx * (w / 2 - inset)
            b.box((x, (h - 0.06) / 2, 0), (0.08, h - 0.06, 0.08), leg)
            b.box((x, 0.03, 0), (0.1, 0.06, d * 0.85), leg)
            b.box((x, h - 0.09, 0), (0.1, 0.06, d * 0.8), leg)
        b.box((0, 0.25, 0), (w - 0.4, 0.06, 0.05), leg)
        feats += ["trestle supports", "a stretcher beam"]
        size = _size(w, 1.4, 2.2, ("medium", "long", "very long"))
    else:  # low coffee table
        w, d, h = p.u("width", 0.8, 1.3), p.u("depth", 0.45, 0.8), p.u("height", 0.32, 0.45)
        b.box((0, h - 0.03, 0), (w, 0.06, d), col)
        _legs(b, w / 2 - 0.05, d / 2 - 0.05, 0, h - 0.06, 0.03, leg, square=True)
        if p.flag("shelf", 0.6):
            b.box((0, 0.1, 0), (w - 0.06, 0.03, d - 0.06), col)
            feats.append("a lower shelf")
        feats.append("short legs")
        size = _size(w, 0.8, 1.3)
    return {"color": cname, "features": feats, "size": size}


def gen_sofa(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", FABRIC)
    _, cush = p.color("cushion_color", FABRIC)
    seats = [2, 3, 3][st]
    sw = p.u("seat_width", 0.50, 0.65)
    w, d = seats * sw, p.u("depth", 0.75, 0.95)
    sh, aw = p.u("seat_height", 0.38, 0.46), p.u("arm_width", 0.12, 0.22)
    lh = p.u("leg_height", 0.04, 0.12)
    feats: list[str] = [f"{NUM[seats]} seat cushions"]
    b.box((0, (lh + sh - 0.1) / 2, 0), (w + 2 * aw, sh - 0.1 - lh, d), col)
    _legs(b, w / 2 + aw - 0.05, d / 2 - 0.05, 0, lh, 0.025, (0.2, 0.15, 0.1))
    for k in range(seats):
        b.box((-w / 2 + (k + 0.5) * sw, sh - 0.05, 0.05), (sw - 0.02, 0.12, d - 0.2), cush)
    bh = p.u("back_height", 0.35, 0.55)
    b.box((0, sh - 0.1 + bh / 2, -d / 2 + 0.1), (w + 2 * aw, bh, 0.2), col)
    ah = p.u("arm_height", 0.15, 0.28)
    if st == 2:  # L-shaped: chaise on the right instead of the right arm
        ext = p.u("chaise_length", 0.6, 1.0)
        b.box((-w / 2 - aw / 2, sh - 0.1 + ah / 2, 0), (aw, ah + 0.1, d), col)
        b.box((w / 2 - sw / 2, (lh + sh - 0.1) / 2, d / 2 + ext / 2), (sw, sh - 0.1 - lh, ext), col)
        b.box((w / 2 - sw / 2, sh - 0.05, d / 2 + ext / 2 - 0.05), (sw - 0.02, 0.12, ext), cush)
        feats.append("an L-shaped chaise section")
    else:
        for sx in (-1, 1):
            b.box((sx * (w / 2 + aw / 2), sh - 0.1 + ah / 2, 0), (aw, ah + 0.1, d), col)
        if p.flag("back_pillows", 0.5):
            for k in range(seats):
                b.box((-w / 2 + (k + 0.5) * sw, sh + 0.15, -d / 2 + 0.27), (sw - 0.08, 0.3, 0.12), cush)
            feats.append("back pillows")
        feats.append("two armrests")
    return {"color": cname, "features": feats, "size": _size(aw, 0.12, 0.22, ("slim-armed", "classic", "chunky"))}


def gen_bed(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["white", "black", "gray"])
    _, sheet = p.color("sheet_color", NEUTRAL + BRIGHT)
    feats: list[str] = []
    w = [p.u("width", 0.9, 1.1), p.u("width", 1.4, 1.9), p.u("width", 0.9, 1.1)][st]
    L = p.u("length", 1.9, 2.2)
    fh = p.u("frame_height", 0.25, 0.4)

    def bunk(y0: float) -> None:
        b.box((0, y0 + fh - 0.08, 0), (w, 0.1, L), col)
        b.box((0, y0 + fh + 0.05, 0.05), (w - 0.06, p.u("mattress", 0.12, 0.22), L - 0.1), sheet)
        b.box((0, y0 + fh + 0.12, -L / 2 + 0.3), (w * 0.6, 0.1, 0.3), (0.95, 0.95, 0.95))

    if st in (0, 1):
        bunk(0.0)
        _legs(b, w / 2 - 0.04, L / 2 - 0.04, 0, fh - 0.1, 0.035, col, square=True)
        hh = p.u("headboard_height", 0.35, 0.9) if st == 1 else p.u("headboard_height", 0.2, 0.5)
        b.box((0, (fh + hh) / 2 + 0.05, -L / 2 - 0.03), (w + 0.06, fh + hh, 0.06), col)
        feats.append("a tall headboard" if hh > 0.6 else "a headboard")
        if p.flag("footboard", 0.5):
            b.box((0, fh / 2 + 0.15, L / 2 + 0.03), (w + 0.06, fh + 0.3, 0.05), col)
            feats.append("a footboard")
    else:  # bunk
        gap = p.u("bunk_gap", 0.8, 1.0)
        bunk(0.0)
        bunk(gap)
        for sx in (-1, 1):
            for sz in (-1, 1):
                b.box((sx * (w / 2 + 0.03), (fh + gap + 0.35) / 2, sz * (L / 2 + 0.03)),
                      (0.06, fh + gap + 0.35, 0.06), col)
        for sz in (-1, 1):
            b.box((0, fh + gap + 0.25, sz * (L / 2 + 0.03)), (w, 0.05, 0.04), col)
        x = w / 2 + 0.06
        for k in range(5):
            b.box((x, 0.2 + k * (fh + gap) / 5, L / 2 - 0.3), (0.04, 0.035, 0.35), col)
        b.box((x, (fh + gap) / 2 + 0.1, L / 2 - 0.12), (0.04, fh + gap + 0.2, 0.04), col)
        b.box((x, (fh + gap) / 2 + 0.1, L / 2 - 0.48), (0.04, fh + gap + 0.2, 0.04), col)
        feats += ["two bunks", "a side ladder"]
    size = ["single", "double", "twin"][st]
    return {"color": cname, "features": feats, "size": size}


def gen_bench(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["green", "red", "gray", "blue"])
    _, leg = p.color("leg_color", METAL + WOOD)
    w, sh = p.u("width", 1.2, 2.0), p.u("seat_height", 0.40, 0.48)
    feats: list[str] = []
    if st == 0:  # park bench with backrest
        d = p.u("depth", 0.4, 0.55)
        n = p.i("n_slats", 3, 5)
        for k in range(n):
            b.box((0, sh, -d / 2 + (k + 0.5) * d / n), (w, 0.03, d / n * 0.8), col)
        bh = p.u("back_height", 0.3, 0.5)
        for k in range(3):
            b.box((0, sh + 0.1 + k * bh / 3, -d / 2 - 0.03), (w, 0.07, 0.025), col)
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.1)
            b.box((x, sh / 2, d / 2 - 0.05), (0.05, sh, 0.05), leg)
            b.box((x, (sh + bh + 0.15) / 2, -d / 2 - 0.05), (0.05, sh + bh + 0.15, 0.05), leg)
            b.box((x, sh + 0.18, 0), (0.05, 0.04, d), leg)
        feats += ["a slatted backrest", "armrests"]
    elif st == 1:  # plain slab bench
        d = p.u("depth", 0.3, 0.45)
        th = p.u("thickness", 0.05, 0.12)
        b.box((0, sh - th / 2, 0), (w, th, d), col)
        if p.flag("panel_legs", 0.5):
            for sx in (-1, 1):
                b.box((sx * (w / 2 - 0.1), (sh - th) / 2, 0), (0.06, sh - th, d * 0.9), leg)
            feats.append("two panel legs")
        else:
            _legs(b, w / 2 - 0.08, d / 2 - 0.06, 0, sh - th, 0.025, leg, square=True)
            feats.append("four legs")
        feats.append("no backrest")
    else:  # picnic table with attached benches
        d = p.u("table_depth", 0.7, 0.9)
        th_ = p.u("table_height", 0.72, 0.78)
        b.box((0, th_, 0), (w, 0.05, d), col)
        off = d / 2 + 0.3
        for sz in (-1, 1):
            b.box((0, sh, sz * off), (w, 0.045, 0.28), col)
        for sx in (-1, 1):
            x = sx * (w / 2 - 0.2)
            for sz in (-1, 1):
                b.cylinder((x, 0, sz * (off + 0.1)), (x, th_, sz * 0.15), 0.03, leg, sections=6)
            b.box((x, sh - 0.05, 0), (0.06, 0.06, 2 * off + 0.2), leg)
        feats += ["a table in the middle", "two attached seats"]
    return {"color": cname, "features": feats, "size": _size(w, 1.2, 2.0, ("short", "medium-length", "long"))}


def gen_bookshelf(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["white", "black", "gray"])
    w, h, d = p.u("width", 0.6, 1.2), p.u("height", 0.9, 2.0), p.u("depth", 0.25, 0.4)
    n = p.i("n_shelves", 3, 6)
    feats = [f"{NUM[n]} shelves"]
    t = 0.03
    if st == 2:  # ladder-style leaning shelf
        lean = p.u("lean", 0.25, 0.45)
        for sx in (-1, 1):
            b.box((sx * w / 2, h / 2, 0), (0.04, h * 1.02, 0.04), col, rot=rot_x(lean))
        for k in range(n):
            y = (k + 0.4) / n * h
            z = -(y - h / 2) * math.tan(lean)
            dd = d * (1 - 0.8 * k / n)
            b.box((0, y, z + dd / 2 - 0.02), (w, t, dd), col)
        feats.append("a leaning ladder frame")
    else:
        for sx in (-1, 1):
            b.box((sx * (w / 2 - t / 2), h / 2, 0), (t, h, d), col)
        b.box((0, h / 2, -d / 2 + 0.01), (w, h, 0.02), col)
        for k in range(n + 1):
            b.box((0, t / 2 + k * (h - t) / n, 0), (w - 2 * t, t, d), col)
        _, booksc = p.color("book_color", BRIGHT)
        if st == 1:  # doors on the lower half
            nd = p.i("door_shelves", 1, 2)
            yh = nd * (h - t) / n
            for sx in (-1, 1):
                b.box((sx * w / 4, yh / 2, d / 2), (w / 2 - 0.01, yh, 0.02), col)
                b.box((sx * 0.05, yh * 0.7, d / 2 + 0.02), (0.02, 0.08, 0.02), (0.7, 0.7, 0.7))
            start = nd
            feats.append("cabinet doors at the bottom")
        else:
            start = 0
            feats.append("open shelves")
        rng = np.random.default_rng(int(p.proto.integers(1 << 30)))
        for k in range(start, n):
            y0 = t + k * (h - t) / n
            x = -w / 2 + t + 0.01
            while True:
                bw = rng.uniform(0.02, 0.06)
                if x + bw > w / 2 - t - 0.02 or rng.random() < 0.08:
                    break
                bh = rng.uniform(0.5, 0.85) * ((h - t) / n - t)
                shade = np.clip(booksc * rng.uniform(0.5, 1.2) + rng.uniform(-0.1, 0.1, 3), 0, 1)
                b.box((x + bw / 2, y0 + bh / 2, 0.0), (bw * 0.95, bh, d * 0.75), shade)
                x += bw
        feats.append("books")
    return {"color": cname, "features": feats, "size": _size(h, 0.9, 2.0, ("low", "medium-height", "tall"))}


def gen_cabinet(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["white", "gray", "black", "teal", "blue"])
    _, knob = p.color("handle_color", METAL)
    if st == 2:
        w, h, d = p.u("width", 0.8, 1.3), p.u("height", 1.7, 2.1), p.u("depth", 0.5, 0.65)
    else:
        w, h, d = p.u("width", 0.6, 1.2), p.u("height", 0.7, 1.1), p.u("depth", 0.4, 0.55)
    lh = p.u("leg_height", 0.0, 0.12)
    b.box((0, lh + (h - lh) / 2, 0), (w, h - lh, d), col)
    if lh > 0.02:
        _legs(b, w / 2 - 0.05, d / 2 - 0.05, 0, lh, 0.02, knob)
    b.box((0, h + 0.01, 0), (w + 0.04, 0.03, d + 0.03), col * 0.85)
    feats: list[str] = []
    if st == 1:  # drawers
        n = p.i("n_drawers", 3, 6)
        dh = (h - lh - 0.04) / n
        for k in range(n):
            y = lh + 0.02 + (k + 0.5) * dh
            b.box((0, y, d / 2 + 0.01), (w - 0.05, dh - 0.02, 0.02), col * 0.92)
            b.box((0, y, d / 2 + 0.03), (w * 0.3, 0.02, 0.02), knob)
        feats.append(f"{NUM[n]} drawers")
    else:
        for sx in (-1, 1):
            b.box((sx * w / 4, lh + (h - lh) / 2, d / 2 + 0.01), (w / 2 - 0.03, h - lh - 0.05, 0.02), col * 0.92)
            b.box((sx * 0.04, lh + (h - lh) * 0.55, d / 2 + 0.03), (0.02, 0.15, 0.02), knob)
        feats.append("two doors")
        if st == 2 and p.flag("top_drawer", 0.4):
            b.box((0, h * 0.12, d / 2 + 0.025), (w - 0.05, 0.15, 0.02), col * 0.8)
            feats.append("a bottom drawer")
    if lh > 0.02:
        feats.append("short legs")
    return {"color": cname, "features": feats, "size": _size(w, 0.6, 1.3, ("narrow", "medium-width", "wide"))}


# ---------------------------------------------------------------------------------------------- lathe objects


def gen_lamp(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", METAL + BRIGHT)
    _, shade = p.color("shade_color", NEUTRAL + BRIGHT)
    feats: list[str] = []
    r0, r1 = p.u("shade_bottom", 0.12, 0.22), p.u("shade_top", 0.05, 0.14)
    sh = p.u("shade_height", 0.12, 0.25)
    if st == 0:  # desk lamp: base, two-segment arm, cone shade
        br = p.u("base_radius", 0.08, 0.13)
        b.cylinder((0, 0, 0), (0, 0.03, 0), br, col, sections=16)
        a1, a2 = p.u("arm_angle1", -0.4, 0.4), p.u("arm_angle2", 0.6, 1.4)
        l1, l2 = p.u("arm_len1", 0.25, 0.4), p.u("arm_len2", 0.25, 0.4)
        j1 = np.array([0, 0.03, 0]) + l1 * np.array([0, math.cos(a1), math.sin(a1)])
        j2 = j1 + l2 * np.array([0, math.cos(a2 + a1), math.sin(a2 + a1)])
        b.cylinder((0, 0.03, 0), j1, 0.018, col, sections=6)
        b.cylinder(j1, j2, 0.018, col, sections=6)
        b.ellipsoid(j1, 0.03, col)
        b.frustum(j2, j2 + np.array([0, -sh * 0.8, sh * 0.6]), r1 * 0.6, r0 * 0.8, shade, hollow=0.01)
        feats += ["an adjustable arm", "a cone shade"]
    elif st == 1:  # floor lamp
        H = p.u("height", 1.3, 1.8)
        b.cylinder((0, 0, 0), (0, 0.03, 0), p.u("base_radius", 0.12, 0.2), col, sections=16)
        b.cylinder((0, 0.03, 0), (0, H, 0), p.u("pole_radius", 0.022, 0.035), col, sections=6)
        b.frustum((0, H - sh * 0.6, 0), (0, H + sh * 0.4, 0), r0, r1, shade, hollow=0.01, sections=18)
        feats += ["a tall pole", "a drum shade" if abs(r0 - r1) < 0.05 else "a tapered shade"]
    else:  # pendant
        L = p.u("cord_length", 0.2, 0.5)
        b.cylinder((0, 0, 0), (0, 0.03, 0), 0.08, col, sections=12)
        b.cylinder((0, -L, 0), (0, 0, 0), 0.012, (0.1, 0.1, 0.1), sections=6)
        if p.flag("dome", 0.5):
            R = p.u("dome_radius", 0.15, 0.3)
            outer = [(R * math.sin(a), -L - 0.8 * R * (1 - math.cos(a))) for a in np.linspace(0.15, math.pi / 2, 6)]
            prof = [(0.0, -L)] + outer + [(R - 0.012, outer[-1][1]), (0.0, -L - 0.012)]
            b.lathe(prof, (0, 0, 0), shade, sections=18)
            feats.append("a dome shade")
        else:
            b.frustum((0, -L - sh, 0), (0, -L, 0), r0, r1 * 0.5, shade, hollow=0.01, sections=18)
            feats.append("a cone shade")
        b.ellipsoid((0, -L - 0.05, 0), 0.04, (1.0, 0.95, 0.7))
        feats.append("a hanging cord")
    return {"color": cname, "features": feats, "size": _size(r0, 0.12, 0.22, ("small", "medium", "wide"))}


def gen_bottle(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["green", "brown", "teal", "blue", "white", "red", "silver", "purple"])
    _, cap = p.color("cap_color", METAL + BRIGHT)
    feats: list[str] = []
    R = p.u("radius", 0.035, 0.055) if st < 2 else p.u("radius", 0.07, 0.11)
    H = p.u("body_height", 0.15, 0.24)
    if st == 0:  # wine: long neck, sloped shoulder
        nl, nr = p.u("neck_length", 0.08, 0.13), p.u("neck_radius", 0.012, 0.016)
        sl = p.u("shoulder", 0.03, 0.07)
        prof = [(0, 0), (R, 0), (R, H), (nr, H + sl), (nr, H + sl + nl), (0, H + sl + nl)]
        b.lathe(prof, (0, 0, 0), col, sections=16)
        b.cylinder((0, H + sl + nl - 0.03, 0), (0, H + sl + nl + 0.005, 0), nr * 1.15, cap, sections=10)
        feats += ["a long neck", "sloped shoulders"]
    elif st == 1:  # water: short neck, rounded shoulder, ribbed
        nl, nr = p.u("neck_length", 0.015, 0.035), p.u("neck_radius", 0.014, 0.02)
        prof = [(0, 0), (R * 0.95, 0), (R, 0.01)]
        ribs = p.i("n_ribs", 0, 3)
        for k in range(ribs):
            y = H * (0.3 + 0.2 * k)
            prof += [(R, y - 0.01), (R * 0.9, y), (R, y + 0.01)]
        prof += [(R, H)] + [(nr + (R - nr) * math.cos(a), H + R * 0.7 * math.sin(a))
                            for a in np.linspace(0.3, math.pi / 2, 4)]
        top = H + R * 0.7
        prof += [(nr, top + nl), (0, top + nl)]
        b.lathe(prof, (0, 0, 0), col, sections=16)
        b.cylinder((0, top + nl - 0.005, 0), (0, top + nl + 0.02, 0), nr * 1.25, cap, sections=12)
        feats += ["a short neck", "a screw cap"] + (["ribbed sides"] if ribs else [])
    else:  # jug with handle
        nr = R * p.u("mouth_ratio", 0.3, 0.5)
        prof = [(0, 0), (R * 0.9, 0), (R, H * 0.4), (R * 0.85, H * 0.8), (nr, H), (nr, H + 0.04), (0, H + 0.04)]
        b.lathe(prof, (0, 0, 0), col, sections=16)
        hr = p.u("handle_size", 0.05, 0.08)
        b.torus((0, H * 0.6, -R * 0.8), hr, 0.012, col, rot=rot_y(math.pi / 2) @ rot_x(math.pi / 2), arc=0.6)
        feats += ["a handle", "a wide body"]
    return {"color": cname, "features": feats, "size": _size(H, 0.15, 0.24, ("short", "medium", "tall"))}


def gen_mug(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", BRIGHT + NEUTRAL)
    R, H = p.u("radius", 0.035, 0.05), p.u("height", 0.07, 0.12)
    t = 0.006
    feats: list[str] = []
    top = R * (p.u("taper", 1.15, 1.45) if st == 1 else 1.0)
    bot = R * (p.u("foot_ratio", 0.6, 0.8) if st == 2 else 1.0)
    prof = [(0, 0), (bot, 0), (top, H), (top - t, H), (bot - t, 0.01), (0, 0.01)]
    b.lathe(prof, (0, 0, 0), col, sections=18)
    if p.flag("coffee", 0.4):
        b.lathe([(0, H * 0.8), (top - t, H * 0.8), (0, H * 0.8 + 0.001)], (0, 0, 0), (0.25, 0.14, 0.06), sections=18)
        feats.append("coffee inside")
    if st in (0, 1):
        hs = p.u("handle_size", 0.022, 0.035)
        mid = (top + R) / 2
        b.torus((mid + hs * 0.5, H * 0.5, 0), hs, 0.007, col, rot=rot_x(math.pi / 2), arc=1.0, major_sections=12)
        feats.append("a handle")
    else:
        feats.append("no handle")
    if st == 2 and p.flag("saucer", 0.5):
        b.cylinder((0, -0.006, 0), (0, 0.0, 0), R * 1.9, col * 0.9, sections=20)
        feats.append("a saucer")
    kind = ["straight", "tapered", "footed"][st]
    feats.insert(0, f"{kind} sides")
    return {"color": cname, "features": feats, "size": _size(H, 0.07, 0.12, ("short", "regular", "tall"))}


def gen_bowl(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", BRIGHT + NEUTRAL + WOOD)
    R = p.u("radius", 0.08, 0.15)
    depth = [p.u("depth", 0.25, 0.4), p.u("depth", 0.6, 0.9), p.u("depth", 0.4, 0.65)][st] * R
    t = R * 0.06
    foot = R * (p.u("foot", 0.35, 0.5) if st == 2 else 0.4)
    fh = R * (p.u("foot_height", 0.15, 0.3) if st == 2 else 0.03)
    n = 6
    outer = [(foot + (R - foot) * math.sin(a * math.pi / 2), fh + depth * (1 - math.cos(a * math.pi / 2)))
             for a in np.linspace(0, 1, n)]
    inner = [(max(r - t, 0.001), y + t) for r, y in reversed(outer)]
    prof = [(0, 0), (foot * 0.9, 0), (foot * 0.9, fh * 0.9)] + outer + inner + [(0, fh + t)]
    b.lathe(prof, (0, 0, 0), col, sections=20)
    feats = [["a shallow rim", "a wide opening"], ["deep sides", "a round body"],
             ["a raised foot", "a pedestal base"]][st]
    if p.flag("food", 0.3):
        _, fc = p.color("food_color", ["orange", "red", "green", "yellow"])
        for k in range(3):
            a = 2.1 * k
            b.ellipsoid((R * 0.3 * math.cos(a), fh + depth * 0.6, R * 0.3 * math.sin(a)), R * 0.28, fc)
        feats = feats + ["fruit inside"]
    return {"color": cname, "features": feats, "size": _size(R, 0.08, 0.15)}


def gen_vase(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", BRIGHT + NEUTRAL + ["navy", "gold"])
    H, R = [(p.u("height", 0.28, 0.45), p.u("radius", 0.045, 0.07)),
            (p.u("height", 0.18, 0.28), p.u("radius", 0.04, 0.06)),
            (p.u("height", 0.32, 0.45), p.u("radius", 0.08, 0.11))][st]
    feats: list[str] = []
    if st == 0:  # cylinder
        flare = p.u("lip_flare", 1.0, 1.3)
        prof = [(0, 0), (R, 0), (R, H * 0.95), (R * flare, H), (R * flare - 0.008, H), (R - 0.008, H * 0.9),
                (0, H * 0.9)]
        feats.append("straight cylindrical sides")
    elif st == 1:  # bulb
        nr = R * p.u("neck_ratio", 0.3, 0.5)
        bulb = R * p.u("bulb", 1.9, 2.5)
        prof = [(0, 0), (R * 0.7, 0)] + [(R * 0.7 + (bulb - R * 0.7) * math.sin(a), H * 0.35 * (1 - math.cos(a)))
                                         for a in np.linspace(0.2, math.pi / 2, 4)]
        prof += [(nr + (bulb - nr) * math.cos(a), H * 0.35 + H * 0.35 * math.sin(a))
                 for a in np.linspace(0.2, math.pi / 2, 4)]
        prof += [(nr, H * 0.95), (nr * 1.3, H), (nr * 1.3 - 0.006, H), (0, H * 0.85)]
        feats += ["a round bulbous body", "a narrow neck"]
    else:  # amphora with two handles
        nr = R * p.u("neck_ratio", 0.4, 0.6)
        prof = [(0, 0), (R * 0.5, 0), (R * 1.3, H * 0.4), (R * 1.1, H * 0.6), (nr, H * 0.8), (nr, H * 0.95),
                (nr * 1.4, H),
                (nr * 1.4 - 0.006, H), (0, H * 0.85)]
        for sx in (-1, 1):
            b.torus((sx * (nr + R * 0.35), H * 0.78, 0), R * 0.3, 0.008, col, rot=rot_x(math.pi / 2), arc=1.0,
                    major_sections=12)
        feats += ["two handles", "a tapered foot"]
    b.lathe(prof, (0, 0, 0), col, sections=18)
    if p.flag("flowers", 0.15):
        _, fc = p.color("flower_color", ["red", "yellow", "pink", "purple", "orange", "white"])
        for k in range(p.i("n_flowers", 2, 4)):
            a = 2.4 * k
            tip = (0.05 * math.cos(a), H + 0.12 + 0.03 * k, 0.05 * math.sin(a))
            b.cylinder((0, H * 0.7, 0), tip, 0.003, (0.2, 0.5, 0.2), sections=4)
            b.ellipsoid(tip, 0.025, fc)
        feats.append("flowers")
    return {"color": cname, "features": feats, "size": _size(H, 0.18, 0.45, ("short", "medium", "tall"))}


# ---------------------------------------------------------------------------------------------- vehicles / objects


def gen_airplane(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["white", "silver", "gray", "blue", "red", "yellow", "green", "navy"])
    _, acc = p.color("accent_color", BRIGHT + ["black"])
    feats: list[str] = []
    L = p.u("length", 1.0, 1.4)
    R = L * (p.u("fuselage_ratio", 0.045, 0.065) if st != 1 else p.u("fuselage_ratio", 0.04, 0.055))
    prof = [(0, -L / 2), (R * 0.5, -L / 2 + R * 0.4), (R, -L / 2 + R * 2), (R, L / 2 - 3 * R), (R * 0.3, L / 2),
            (0, L / 2)]
    # fuselage along z (nose at +z)
    b.lathe(prof, (0, 0, 0), col, rot=rot_x(math.pi / 2), sections=12)
    if st == 0:  # airliner
        span = L * p.u("span_ratio", 0.9, 1.1)
        sweep = p.u("sweep", 0.15, 0.3) * span / 2
        for sx in (-1, 1):
            wing = [(0, 0, 0.1 * L), (sx * span / 2, 0, 0.1 * L - sweep),
                    (sx * span / 2, 0, 0.1 * L - sweep - 0.06 * L), (0, 0, -0.1 * L)]
            _quad_wing(b, wing, 0.012 * L, col)
            ex = sx * span * p.u("engine_pos", 0.2, 0.3)
            b.cylinder((ex, -R * 1.2, 0.08 * L - sweep * abs(ex) / (span / 2) * 0.9),
                       (ex, -R * 1.2, -0.05 * L - sweep * abs(ex) / (span / 2)), R * 0.45, acc, sections=10)
        hspan = span * 0.35
        for sx in (-1, 1):
            _quad_wing(b, [(0, 0, -L / 2 + 0.12 * L), (sx * hspan / 2, 0, -L / 2 + 0.04 * L),
                           (sx * hspan / 2, 0, -L / 2 + 0.01 * L), (0, 0, -L / 2 + 0.02 * L)], 0.008 * L, col)
        b.box((0, R + 0.08 * L, -L / 2 + 0.08 * L), (0.01 * L, 0.16 * L, 0.12 * L), acc, rot=rot_x(-0.4))
        feats += ["two jet engines", "swept wings", "a tall tail fin"]
    elif st == 1:  # fighter delta
        span = L * p.u("span_ratio", 0.55, 0.75)
        for sx in (-1, 1):
            _quad_wing(b, [(0, 0, 0.2 * L), (sx * span / 2, 0, -0.3 * L), (sx * span / 2, 0, -0.38 * L),
                           (0, 0, -0.38 * L)], 0.01 * L, col)
        twin = p.flag("twin_tail", 0.5)
        for sx in ((-1, 1) if twin else (0,)):
            b.box((sx * R * 1.2, R + 0.06 * L, -0.36 * L), (0.008 * L, 0.12 * L, 0.1 * L), col,
                  rot=rot_z(sx * 0.3) @ rot_x(-0.5))
        b.ellipsoid((0, R * 0.8, 0.22 * L), (R * 0.6, R * 0.6, R * 2.5), acc)
        b.cylinder((0, 0, -L / 2 - 0.02 * L), (0, 0, -L / 2 + 0.02), R * 0.8, (0.2, 0.2, 0.2), sections=10)
        feats += ["delta wings", "a bubble canopy", "twin tail fins" if twin else "a single tail fin"]
    else:  # biplane
        span = L * p.u("span_ratio", 0.9, 1.2)
        gap = p.u("wing_gap", 0.12, 0.2) * L
        chord = 0.14 * L
        for y in (-R * 0.5, -R * 0.5 + gap):
            b.box((0, y, 0.15 * L), (span, 0.015 * L, chord), acc if y > 0 else col)
        for sx in (-1, 1):
            for dz in (-chord * 0.3, chord * 0.3):
                b.cylinder((sx * span * 0.35, -R * 0.5, 0.15 * L + dz),
                           (sx * span * 0.35, -R * 0.5 + gap, 0.15 * L + dz), 0.006 * L, (0.3, 0.2, 0.1), sections=4)
        b.box((0, 0, L / 2 + 0.005), (0.3 * L, 0.03 * L, 0.01 * L), (0.3, 0.2, 0.1),
              rot=rot_z(p.u("prop_angle", 0, 3.14)))
        b.box((0, 0, -L / 2 + 0.06 * L), (0.3 * L, 0.01 * L, 0.08 * L), col)
        b.box((0, R + 0.05 * L, -L / 2 + 0.06 * L), (0.01 * L, 0.1 * L, 0.08 * L), acc)
        for sx in (-1, 1):
            b.cylinder((sx * 0.08 * L, -R * 2.5, 0.2 * L), (sx * 0.02 * L, -R * 0.5, 0.2 * L), 0.005 * L,
                       (0.2, 0.2, 0.2), sections=4)
            b.cylinder((sx * 0.08 * L, -R * 2.5, 0.2 * L - 0.02 * L), (sx * 0.08 * L, -R * 2.5, 0.2 * L + 0.02 * L),
                       0.04 * L, (0.1, 0.1, 0.1), sections=10)
        feats += ["two stacked wings", "a front propeller", "fixed landing wheels"]
    return {"color": cname, "features": feats, "size": _size(L, 1.0, 1.4, ("small", "medium", "large"))}


def _quad_wing(b: MeshBuilder, corners, thickness: float, color) -> None:
    """A flat 4-corner plate (wing) in the xz plane, extruded by ``thickness`` in y."""
    c = np.asarray(corners, dtype=np.float64)
    top = c + [0, thickness / 2, 0]
    bot = c - [0, thickness / 2, 0]
    v = np.concatenate([top, bot])
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6], [0, 4, 5], [0, 5, 1], [1, 5, 6], [1, 6, 2], [2, 6, 7],
                  [2, 7, 3], [3, 7, 4], [3, 4, 0]])
    b.add(v, f, color)


def gen_car(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color",
                         ["red", "blue", "white", "black", "silver", "gray", "yellow", "green", "navy", "orange"])
    L, W = p.u("length", 3.8, 4.8), p.u("width", 1.6, 1.9)
    hb = p.u("body_height", 0.55, 0.75)
    clear, wr = 0.18, p.u("wheel_radius", 0.3, 0.38)
    glass = (0.15, 0.2, 0.28)
    feats: list[str] = ["four wheels"]
    b.box((0, clear + hb / 2, 0), (W, hb, L), col)
    ch = p.u("cabin_height", 0.45, 0.6)
    y0 = clear + hb
    if st == 0:  # sedan: cabin in the middle, trunk behind
        cl = L * p.u("cabin_len", 0.42, 0.52)
        cz = -L * 0.05
        feats.append("a separate trunk")
    elif st == 1:  # hatchback: cabin to the rear
        cl = L * p.u("cabin_len", 0.5, 0.6)
        cz = -L / 2 + cl / 2 + 0.05
        feats.append("a hatchback rear")
    else:  # pickup: cabin forward, open bed behind
        cl = L * p.u("cabin_len", 0.28, 0.36)
        cz = L / 2 - L * 0.3 - cl / 2 + 0.3
        bed_l = L / 2 + cz - cl / 2
        for sx in (-1, 1):
            b.box((sx * (W / 2 - 0.04), y0 + 0.15, -L / 2 + bed_l / 2), (0.08, 0.3, bed_l - 0.05), col)
        b.box((0, y0 + 0.15, -L / 2 + 0.04), (W, 0.3, 0.08), col)
        feats.append("an open cargo bed")
    b.box((0, y0 + ch / 2, cz), (W * 0.86, ch, cl), col)
    b.box((0, y0 + ch * 0.55, cz + cl / 2 + 0.005), (W * 0.8, ch * 0.7, 0.02), glass)
    for sx in (-1, 1):
        b.box((sx * (W * 0.43 + 0.005), y0 + ch * 0.55, cz), (0.02, ch * 0.6, cl * 0.9), glass)
    if st != 2:
        b.box((0, y0 + ch * 0.55, cz - cl / 2 - 0.005), (W * 0.8, ch * 0.6, 0.02), glass)
    for sx in (-1, 1):
        for sz in (-1, 1):
            z = sz * (L / 2 - 0.75)
            b.cylinder((sx * (W / 2 - 0.12), wr, z), (sx * (W / 2 + 0.03), wr, z), wr, (0.08, 0.08, 0.08), sections=14)
            b.cylinder((sx * (W / 2 + 0.03), wr, z), (sx * (W / 2 + 0.035), wr, z), wr * 0.55, (0.7, 0.7, 0.72),
                       sections=10)
    for sx in (-1, 1):
        b.box((sx * W * 0.35, clear + hb * 0.7, L / 2 + 0.005), (0.25, 0.1, 0.02), (1.0, 0.95, 0.75))
        b.box((sx * W * 0.38, clear + hb * 0.7, -L / 2 - 0.005), (0.2, 0.08, 0.02), (0.8, 0.05, 0.05))
    if p.flag("spoiler", 0.25) and st != 2:
        b.box((0, y0 + 0.12, -L / 2 + 0.1), (W * 0.9, 0.03, 0.2), (0.1, 0.1, 0.1))
        feats.append("a rear spoiler")
    return {"color": cname, "features": feats, "size": _size(L, 3.8, 4.8, ("compact", "mid-size", "full-size"))}


def gen_monitor(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["black", "gray", "silver", "white"])
    screen = (0.05, 0.07, 0.12)
    feats: list[str] = []
    W = p.u("width", 0.5, 0.8)
    H = W * p.u("aspect", 0.52, 0.65)
    if st == 0:  # flat on stand
        sh = p.u("stand_height", 0.12, 0.25)
        b.box((0, sh + H / 2, 0), (W, H, 0.035), col)
        b.box((0, sh + H / 2, 0.019), (W - 0.03, H - 0.03, 0.005), screen)
        b.box((0, (sh + H * 0.4) / 2, -0.04), (0.05, sh + H * 0.4, 0.03), col)
        if p.flag("round_base", 0.5):
            b.cylinder((0, 0, -0.03), (0, 0.015, -0.03), 0.12, col, sections=16)
            feats.append("a round base")
        else:
            b.box((0, 0.008, -0.02), (W * 0.4, 0.016, 0.2), col)
            feats.append("a flat rectangular base")
        feats += ["a thin flat screen", "a stand"]
    elif st == 1:  # wall-mounted tv
        b.box((0, 0, 0), (W * 1.3, H * 1.3, 0.05), col)
        b.box((0, 0, 0.026), (W * 1.3 - 0.03, H * 1.3 - 0.03, 0.005), screen)
        b.box((0, 0, -0.05), (W * 0.4, H * 0.4, 0.05), (0.3, 0.3, 0.3))
        if p.flag("soundbar", 0.5):
            b.box((0, -H * 0.75, 0.02), (W * 0.9, 0.06, 0.08), col)
            feats.append("a soundbar below")
        feats += ["a wide flat screen", "a wall mount"]
    else:  # old CRT box
        D = p.u("depth", 0.35, 0.5)
        W2 = p.u("crt_width", 0.4, 0.55)
        H2 = W2 * 0.8
        b.box((0, H2 / 2 + 0.03, 0), (W2, H2, 0.08), col)
        b.frustum((0, H2 / 2 + 0.03, -0.04), (0, H2 / 2 + 0.03, -D), W2 * 0.6, W2 * 0.3, col, sections=4)
        b.box((0, H2 / 2 + 0.03, 0.041), (W2 * 0.82, H2 * 0.78, 0.005), screen)
        b.box((0, 0.015, -0.1), (W2 * 0.6, 0.03, 0.3), col)
        feats += ["a deep boxy back", "a curved glass screen"]
    return {"color": cname, "features": feats, "size": _size(W, 0.5, 0.8, ("small", "medium", "large"))}


def gen_guitar(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", WOOD + ["red", "black", "white", "blue", "orange"])
    _, neckc = p.color("neck_color", WOOD + ["black"])
    feats: list[str] = []
    t = [p.u("thickness", 0.09, 0.12), p.u("thickness", 0.035, 0.05), p.u("thickness", 0.035, 0.05)][st]
    R1, R2 = p.u("lower_bout", 0.17, 0.21), p.u("upper_bout", 0.12, 0.15)
    neck = [0.45, 0.45, p.u("neck_length", 0.65, 0.8)][st]
    if st == 0:
        b.cylinder((0, 0.2, -t / 2), (0, 0.2, t / 2), R1, col, sections=20)
        b.cylinder((0, 0.2 + R1 + R2 * 0.6, -t / 2), (0, 0.2 + R1 + R2 * 0.6, t / 2), R2, col, sections=18)
        b.cylinder((0, 0.25 + R1 * 0.55, t / 2), (0, 0.25 + R1 * 0.55, t / 2 + 0.002), 0.045, (0.05, 0.05, 0.05),
                   sections=14)
        feats += ["a round sound hole", "a hollow body"]
        top = 0.2 + R1 + R2 * 1.5
    else:
        R1, R2 = R1 * 0.85, R2 * 0.85
        b.cylinder((0, 0.2, -t / 2), (0, 0.2, t / 2), R1, col, sections=18)
        b.cylinder((-R2 * 0.2, 0.2 + R1 * 0.9, -t / 2), (-R2 * 0.2, 0.2 + R1 * 0.9, t / 2), R2, col, sections=16)
        b.box((R2 * 0.8, 0.2 + R1 * 1.1, 0), (0.06, R2 * 1.2, t), col, rot=rot_z(0.4))  # horn
        for k in range(p.i("n_pickups", 1, 3)):
            b.box((0, 0.14 + 0.07 * k, t / 2 + 0.003), (0.09, 0.025, 0.006), (0.1, 0.1, 0.1))
        feats += ["a solid body", "a cutaway horn"]
        top = 0.2 + R1 + R2 * 0.8
    b.box((0, top + neck / 2, 0), (0.05 if st < 2 else 0.045, neck, 0.03), neckc)
    hs = p.u("headstock", 0.15, 0.22)
    b.box((0, top + neck + hs / 2, -0.005), (0.08, hs, 0.025), neckc, rot=rot_x(-0.2))
    n_str = [6, 6, p.i("n_strings", 4, 5)][st]
    for k in range(n_str):
        x = (k - (n_str - 1) / 2) * 0.007
        b.box((x, (0.15 + top + neck) / 2, t / 2 + 0.008), (0.002, top + neck - 0.15, 0.002), (0.85, 0.85, 0.8))
    feats.append(f"{NUM[n_str]} strings")
    if st == 2:
        feats.append("a long neck")
    return {"color": cname, "features": feats, "size": _size(R1, 0.17, 0.21, ("slim", "standard", "big-bodied"))}


def gen_rocket(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["white", "silver", "gray", "red", "orange", "black"])
    _, acc = p.color("accent_color", BRIGHT + ["black"])
    feats: list[str] = []
    R, H = p.u("radius", 0.08, 0.12), p.u("height", 1.0, 1.6)
    nose = p.u("nose_length", 0.15, 0.3)
    if st == 2:  # multi-stage with narrowing interstages
        n = p.i("n_stages", 2, 3)
        y, r = 0.0, R
        for k in range(n):
            h = H / n * (1.1 - 0.2 * k)
            b.cylinder((0, y, 0), (0, y + h, 0), r, col if k % 2 == 0 else acc, sections=16)
            y += h
            if k < n - 1:
                b.frustum((0, y, 0), (0, y + 0.06, 0), r, r * 0.75, (0.3, 0.3, 0.3), sections=16)
                y += 0.06
                r *= 0.75
        b.cone((0, y, 0), (0, y + nose, 0), r, acc, sections=16)
        feats.append(f"{NUM[n]} stacked stages")
    else:
        b.cylinder((0, 0, 0), (0, H, 0), R, col, sections=16)
        if p.flag("ogive", 0.5):
            b.lathe([(R * math.cos(a), H + nose * math.sin(a)) for a in np.linspace(0, math.pi / 2, 6)]
                    + [(0, H + nose)], (0, 0, 0), acc, sections=16)
        else:
            b.cone((0, H, 0), (0, H + nose, 0), R, acc, sections=16)
        b.cylinder((0, H * 0.7, 0), (0, H * 0.72, 0), R * 1.01, acc, sections=16)
        if st == 1:  # boosters
            nb = p.i("n_boosters", 2, 4)
            for k in range(nb):
                a = 2 * math.pi * k / nb
                c = ((R * 1.65) * math.cos(a), 0, (R * 1.65) * math.sin(a))
                bh = H * p.u("booster_height", 0.45, 0.7)
                b.cylinder(c, (c[0], bh, c[2]), R * 0.6, col, sections=12)
                b.cone((c[0], bh, c[2]), (c[0], bh + R * 1.5, c[2]), R * 0.6, acc, sections=12)
            feats.append(f"{NUM[nb]} side boosters")
        else:
            nf = p.i("n_fins", 3, 4)
            fh = p.u("fin_size", 0.15, 0.3)
            for k in range(nf):
                a = 2 * math.pi * k / nf
                c = np.array([math.cos(a), 0, math.sin(a)])
                pts = [c * R * 0.9, c * (R + fh) - [0, 0.05, 0], c * (R + fh * 0.8) + [0, fh * 0.6, 0],
                       c * R * 0.9 + [0, fh * 1.6, 0]]
                v = np.array([[q[0], q[1], q[2]] for q in pts])
                tang = np.array([-math.sin(a), 0, math.cos(a)]) * 0.008
                vv = np.concatenate([v + tang, v - tang])
                f = np.array([[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6], [0, 4, 5], [0, 5, 1], [1, 5, 6], [1, 6, 2],
                              [2, 6, 7], [2, 7, 3], [3, 7, 4], [3, 4, 0]])
                b.add(vv, f, acc)
            feats.append(f"{NUM[nf]} tail fins")
    b.frustum((0, -0.08, 0), (0, 0.0, 0), R * 0.7, R * 0.5, (0.25, 0.25, 0.25), sections=12)
    feats.append("a pointed nose cone")
    return {"color": cname, "features": feats, "size": _size(H / R, 8.3, 20, ("stubby", "slender", "very slender"))}


def gen_tower(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["gray", "beige", "white", "tan", "brown", "red", "silver"])
    _, acc = p.color("accent_color", ["gray", "black", "red", "green", "blue", "gold"])
    feats: list[str] = []
    H = p.u("height", 2.0, 3.5)
    if st == 0:  # cylindrical tower with crenellations or dome
        R = p.u("radius", 0.25, 0.45)
        b.cylinder((0, 0, 0), (0, H, 0), R, col, sections=18)
        n = p.i("n_windows", 2, 5)
        for k in range(n):
            y = H * (k + 0.6) / (n + 0.5)
            b.box((0, y, R - 0.01), (0.08, 0.14, 0.04), (0.1, 0.1, 0.12))
        if p.flag("dome", 0.5):
            b.lathe([(R * 1.05 * math.cos(a), H + R * math.sin(a)) for a in np.linspace(0, math.pi / 2, 6)]
                    + [(0, H + R)], (0, 0, 0), acc, sections=18)
            feats.append("a dome roof")
        else:
            b.cylinder((0, H, 0), (0, H + 0.08, 0), R * 1.1, col, sections=18)
            for k in range(8):
                a = 2 * math.pi * k / 8
                b.box((R * 1.02 * math.cos(a), H + 0.15, R * 1.02 * math.sin(a)), (0.1, 0.14, 0.1), col, rot=rot_y(-a))
            feats.append("battlements on top")
        feats.append("round walls")
    elif st == 1:  # stepped
        n = p.i("n_tiers", 3, 5)
        w = p.u("base_width", 0.8, 1.2)
        y = 0.0
        for k in range(n):
            h = H / n
            s = w * (1 - 0.7 * k / n)
            b.box((0, y + h / 2, 0), (s, h, s), col if k % 2 == 0 else col * 0.85)
            b.box((0, y + h - 0.02, 0), (s * 1.06, 0.04, s * 1.06), acc)
            y += h
        if p.flag("antenna", 0.6):
            b.cylinder((0, y, 0), (0, y + H * 0.25, 0), 0.015, acc, sections=6)
            feats.append("an antenna")
        feats.append(f"{NUM[n]} stepped tiers")
    else:  # spire
        w = p.u("base_width", 0.4, 0.7)
        bh = H * p.u("base_frac", 0.4, 0.6)
        b.box((0, bh / 2, 0), (w, bh, w), col)
        b.box((0, bh * 0.75, w / 2), (w * 0.3, bh * 0.25, 0.02), (0.1, 0.1, 0.12))
        b.cone((0, bh, 0), (0, H, 0), w * 0.75, acc, sections=p.i("spire_sides", 4, 8))
        b.cylinder((0, H, 0), (0, H + 0.15, 0), 0.01, acc, sections=4)
        b.box((0, H + 0.11, 0), (0.08, 0.015, 0.015), acc)
        feats += ["a pointed spire", "a square base"]
    return {"color": cname, "features": feats, "size": _size(H, 2.0, 3.5, ("short", "tall", "very tall"))}


def gen_mushroom(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, cap = p.color("color", ["red", "brown", "tan", "white", "orange", "yellow", "beige", "purple"])
    _, stem = p.color("stem_color", ["white", "cream", "beige", "tan"])
    feats: list[str] = []

    def one(x: float, z: float, scale: float, flat: float, capr: float, stemh: float, lean: float):
        top = (x + lean * stemh * scale, stemh * scale, z)
        b.frustum((x, 0, z), top, 0.05 * scale * 1.3, 0.04 * scale, stem, sections=10)
        prof = [(capr * scale * math.sin(a), flat * capr * scale * math.cos(a)) for a in np.linspace(0, math.pi / 2, 6)]
        prof = [(0.0, flat * capr * scale)] + prof[1:] + [(capr * scale * 0.3, -0.02 * scale), (0, -0.02 * scale)]
        b.lathe(prof, top, cap, sections=16)
        return np.asarray(top), capr * scale, flat

    if st == 0:  # button: round cap, short stem
        geo = one(0, 0, 1.0, p.u("cap_flatness", 0.7, 1.0), p.u("cap_radius", 0.12, 0.18),
                  p.u("stem_height", 0.1, 0.18), 0.0)
        feats += ["a rounded cap", "a short stem"]
    elif st == 1:  # parasol: wide flat cap, tall stem
        geo = one(0, 0, 1.0, p.u("cap_flatness", 0.2, 0.4), p.u("cap_radius", 0.2, 0.3), p.u("stem_height", 0.3, 0.45),
                  p.u("lean", -0.1, 0.1))
        if p.flag("ring", 0.6):
            b.torus((0, 0.2, 0), 0.045, 0.01, stem)
            feats.append("a ring on the stem")
        feats += ["a wide flat cap", "a tall thin stem"]
    else:  # cluster
        n = p.i("n_mushrooms", 3, 5)
        for k in range(n):
            a = 2.4 * k
            d = 0.0 if k == 0 else 0.12
            s = 1.0 if k == 0 else p.u(f"scale_{k}", 0.5, 0.8)
            one(d * math.cos(a), d * math.sin(a), s, 0.8, 0.12, 0.2, (0.15 if k else 0.0) * math.cos(a))
        feats.append(f"a cluster of {NUM[n]} caps")
    if p.flag("spots", 0.4) and st != 2:
        top, cr, flat = geo
        for k in range(7):
            a, phi = 2.4 * k, 0.35 + 0.12 * (k % 3)
            pos = top + np.array([cr * math.sin(phi * 2) * math.cos(a), flat * cr * math.cos(phi * 2),
                                  cr * math.sin(phi * 2) * math.sin(a)])
            b.ellipsoid(pos, cr * 0.14, (0.97, 0.97, 0.95))
        feats.append("white spots")
    return {"color": cname, "features": feats, "size": ["small", "tall", "clustered"][st]}


def gen_umbrella(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", BRIGHT + ["black", "navy", "white"])
    _, pole = p.color("pole_color", ["black", "silver", "brown"])
    feats: list[str] = []
    L = p.u("shaft_length", 0.8, 1.0)
    if st == 0 or st == 2:  # open (handheld or patio)
        R = p.u("canopy_radius", 0.45, 0.6) if st == 0 else p.u("canopy_radius", 0.8, 1.1)
        if st == 2:
            L = p.u("pole_length", 1.8, 2.3)
        depth = R * p.u("canopy_depth", 0.25, 0.45)
        n = p.i("n_ribs", 6, 10)
        b.cylinder((0, 0, 0), (0, L + 0.05, 0), 0.022 if st == 0 else 0.035, pole, sections=6)
        prof = ([(0, L + 0.02)] + [(R * s, L - depth * s ** 1.6) for s in np.linspace(0.2, 1.0, 5)]
                + [(R * 0.98, L - depth - 0.01), (0, L - 0.02)])
        b.lathe(prof, (0, 0, 0), col, sections=n)
        if st == 0:
            b.torus((0.05, 0.0, 0), 0.05, 0.012, pole, rot=rot_x(math.pi / 2), arc=0.5)
            feats.append("a curved handle")
        else:
            b.cylinder((0, 0, 0), (0, 0.08, 0), 0.3, (0.3, 0.3, 0.3), sections=16)
            feats += ["a heavy base", "a large canopy"]
        feats.append(f"{NUM[n]} ribs")
        feats.insert(0, "an open canopy")
    else:  # folded
        R = p.u("folded_radius", 0.04, 0.06)
        b.cylinder((0, 0, 0), (0, L + 0.1, 0), 0.01, pole, sections=6)
        prof = [(0.0, 0.25), (R * 0.5, 0.3), (R, 0.5), (R * 0.9, L * 0.8), (0.01, L + 0.02), (0, L + 0.02)]
        b.lathe(prof, (0, 0, 0), col, sections=8)
        if p.flag("strap", 0.6):
            b.torus((0, L * 0.55, 0), R * 0.95, 0.008, col * 0.6)
            feats.append("a strap")
        if p.flag("hook_handle", 0.5):
            b.torus((0.05, 0.0, 0), 0.05, 0.012, pole, rot=rot_x(math.pi / 2), arc=0.5)
            feats.append("a hook handle")
        else:
            b.cylinder((0, -0.12, 0), (0, 0.0, 0), 0.02, pole, sections=8)
            feats.append("a straight handle")
        feats.insert(0, "a closed canopy")
    return {"color": cname, "features": feats, "size": ["handheld", "folded", "patio"][st]}


def gen_ladder(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["silver", "gray", "brown", "tan", "yellow", "orange", "red"])
    feats: list[str] = []
    H, W = p.u("height", 1.2, 2.2), p.u("width", 0.35, 0.5)
    n = p.i("n_rungs", 4, 9)
    if st == 0:  # straight
        lean = p.u("lean", 0.0, 0.15)
        for sx in (-1, 1):
            b.box((sx * W / 2, H / 2, 0), (0.04, H, 0.06), col, rot=rot_x(lean))
        for k in range(n):
            y = (k + 0.8) / (n + 0.3) * H
            b.cylinder((-W / 2, y, -(y - H / 2) * math.tan(lean)), (W / 2, y, -(y - H / 2) * math.tan(lean)), 0.015,
                       col, sections=6)
        feats += [f"{NUM[n]} rungs", "two side rails"]
    elif st == 1:  # A-frame
        spread = p.u("spread", 0.2, 0.35)
        for sz in (-1, 1):
            for sx in (-1, 1):
                b.box((sx * W / 2, H / 2, sz * spread * H / 2 * 0.5), (0.04, H * 1.02, 0.05), col,
                      rot=rot_x(sz * spread * 0.5))
        for k in range(n - 1):
            y = (k + 0.8) / n * H
            z = (H - y) * math.tan(spread * 0.5)
            b.box((0, y, z - 0.04), (W, 0.025, 0.1), col)
        b.box((0, H, 0), (W + 0.06, 0.04, 0.2), col * 0.8)
        feats += [f"{NUM[n - 1]} steps", "an A-shaped frame", "a top cap"]
    else:  # step stool / platform
        ns = p.i("n_steps", 2, 4)
        h = H * 0.35
        depth = p.u("tread_depth", 0.18, 0.26)
        for k in range(ns):
            y = (k + 1) * h / ns
            z = -k * depth * 0.8
            b.box((0, y, z), (W * 1.2, 0.04, depth), col)
        zb = -(ns - 1) * depth * 0.8 - depth / 2
        for sx in (-1, 1):
            b.cylinder((sx * W * 0.6, 0, depth / 2), (sx * W * 0.6, h, zb + depth * 0.3), 0.025, col * 0.85, sections=6)
            b.cylinder((sx * W * 0.6, 0, zb), (sx * W * 0.6, h, zb), 0.025, col * 0.85, sections=6)
            b.cylinder((sx * W * 0.6, h * 0.15, depth / 2 - 0.05), (sx * W * 0.6, h * 0.15, zb), 0.015, col * 0.85,
                       sections=6)
        feats += [f"{NUM[ns]} wide treads", "slanted side rails"]
    return {"color": cname, "features": feats, "size": _size(H, 1.2, 2.2, ("short", "medium", "tall"))}


def gen_bathtub(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["white", "cream", "beige", "pink", "teal", "black"])
    _, metal = p.color("metal_color", ["silver", "gold", "black"])
    feats: list[str] = []
    L, W, H = p.u("length", 1.5, 1.8), p.u("width", 0.7, 0.85), p.u("height", 0.5, 0.62)
    t = 0.06
    if st == 1:  # clawfoot: rounded tub on four feet
        prof = [(0, 0.0), (0.5, 0.0), (0.56, H * 0.7), (0.6, H), (0.54, H), (0.47, 0.08), (0, 0.08)]
        b.lathe(prof, (0, 0.12, 0), col, sections=18, scale=(W / 1.2, 1.0, L / 1.2))
        for sx in (-1, 1):
            for sz in (-1, 1):
                b.ellipsoid((sx * W * 0.3, 0.07, sz * L * 0.3), (0.04, 0.08, 0.04), metal)
        feats += ["four claw feet", "a rolled rim"]
    elif st == 2:  # corner tub: quarter round
        R = p.u("corner_radius", 1.2, 1.5)
        b.box((R * 0.35, H / 2, R * 0.35), (R * 0.7, H, R * 0.7), col)
        b.box((R * 0.35, H - 0.01, R * 0.35), (R * 0.7 - 2 * t, 0.03, R * 0.7 - 2 * t), (0.7, 0.85, 0.95))
        b.box((R * 0.35, H * 0.5, 0.02), (R * 0.7, H, 0.04), col * 0.9)
        b.box((0.02, H * 0.5, R * 0.35), (0.04, H, R * 0.7), col * 0.9)
        b.lathe([(0, 0), (R * 0.62, 0), (R * 0.62, H), (0, H)], (R * 0.12, 0, R * 0.12), col, sections=24)
        b.lathe([(0, 0), (R * 0.52, 0), (R * 0.52, 0.005), (0, 0.005)], (R * 0.12, H, R * 0.12), (0.7, 0.85, 0.95),
                sections=24)
        feats += ["a rounded corner shape", "a built-in step"]
    else:  # rectangular built-in
        b.box((0, H / 2, 0), (W, H, L), col)
        b.box((0, H - 0.005, 0), (W - 2 * t, 0.02, L - 2 * t), (0.7, 0.85, 0.95))
        if p.flag("apron", 0.6):
            b.box((0, H / 2, 0), (W + 0.04, H - 0.04, L - 0.05), col * 0.95)
            feats.append("a front apron panel")
        feats.append("a rectangular basin")
    b.cylinder((0, H - 0.02 + (0.12 if st == 1 else 0), -L / 2 + 0.02),
               (0, H + 0.15 + (0.12 if st == 1 else 0), -L / 2 + 0.02), 0.015, metal, sections=6)
    b.cylinder((0, H + 0.15 + (0.12 if st == 1 else 0), -L / 2 + 0.02),
               (0, H + 0.15 + (0.12 if st == 1 else 0), -L / 2 + 0.12), 0.015, metal, sections=6)
    feats.append("a faucet")
    return {"color": cname, "features": feats, "size": _size(L, 1.5, 1.8, ("compact", "standard", "long"))}


def gen_toilet(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["white", "cream", "beige", "black", "gray", "blue"])
    _, seat = p.color("seat_color", ["white", "black", "brown", "cream"])
    feats: list[str] = []
    bh = p.u("bowl_height", 0.38, 0.45)
    R, L = p.u("bowl_radius", 0.17, 0.22), p.u("bowl_length", 1.2, 1.5)
    y0 = 0.0 if st != 1 else p.u("mount_height", 0.12, 0.2)
    prof = [(0, 0), (0.55, 0), (0.9, 0.7), (1.0, 1.0), (0.8, 1.0), (0, 0.6)]
    b.lathe(prof, (0, y0 + (0.0 if st == 1 else 0.0), 0.12), col, sections=16, scale=(R, bh - y0, R * L))
    b.lathe([(0, 0), (1.0, 0), (1.0, 1), (0.75, 1), (0, 0.5)], (0, bh, 0.12), seat, sections=16,
            scale=(R * 1.02, 0.03, R * L * 1.02))
    if st != 1:
        b.cylinder((0, 0, 0.08), (0, bh * 0.5, 0.06), R * 0.6, col, sections=12, radius_z=R * 0.75)
    if st == 0:  # close-coupled tank
        th = p.u("tank_height", 0.3, 0.42)
        b.box((0, bh + th / 2, -R * 0.6), (R * 2.1, th, 0.18), col)
        b.box((0, bh + th + 0.015, -R * 0.6), (R * 2.2, 0.03, 0.2), col)
        b.box((R * 0.7, bh + th - 0.05, -R * 0.6 + 0.1), (0.05, 0.02, 0.02), (0.75, 0.75, 0.78))
        feats += ["a tank on the back", "a floor-standing base"]
    elif st == 1:  # wall-hung
        fh = p.u("frame_height", 0.8, 1.1)
        b.box((0, fh / 2, -R * 0.8), (R * 2.6, fh, 0.16), (0.85, 0.85, 0.85))
        b.box((0, fh * 0.8, -R * 0.8 + 0.085), (0.2, 0.12, 0.02), (0.6, 0.6, 0.62))
        feats += ["no floor base", "a concealed cistern frame"]
    else:  # high tank with pull chain
        th = p.u("tank_height", 0.2, 0.28)
        hy = p.u("tank_elevation", 1.6, 2.0)
        b.box((0, hy, -R * 0.6), (R * 2.4, th, 0.2), col)
        b.cylinder((0, bh + 0.05, -R * 0.55), (0, hy - th / 2, -R * 0.55), 0.03, (0.75, 0.75, 0.78), sections=6)
        b.cylinder((R, hy - th / 2, -R * 0.4), (R, hy - 0.6, -R * 0.4), 0.004, (0.75, 0.75, 0.78), sections=4)
        b.ellipsoid((R, hy - 0.62, -R * 0.4), 0.02, (0.6, 0.6, 0.6))
        feats += ["a high wall tank", "a pull chain"]
    if p.flag("lid_up", 0.4):
        b.box((0, bh + R * L * 0.5, -R * 0.25), (R * 1.9, R * L * 0.95, 0.025), seat)
        feats.append("the lid raised")
    return {"color": cname, "features": feats, "size": ["classic", "wall-hung", "Victorian"][st]}


def gen_piano(p: Params, b: MeshBuilder, st: int) -> dict:
    cname, col = p.color("color", ["black", "brown", "white", "tan", "red"])
    feats: list[str] = []
    W = p.u("width", 1.3, 1.6) if st < 2 else p.u("width", 1.0, 1.4)
    kh = p.u("key_height", 0.7, 0.76)
    keys_d = 0.15

    def keyboard(z: float, y: float, width: float) -> None:
        b.box((0, y, z), (width, 0.03, keys_d), (0.95, 0.95, 0.93))
        nk = int(width / 0.05)
        for k in range(nk):
            if k % 7 in (0, 1, 3, 4, 5):
                b.box((-width / 2 + (k + 1) * width / nk, y + 0.02, z - keys_d * 0.2), (0.012, 0.015, keys_d * 0.6),
                      (0.05, 0.05, 0.05))

    if st == 0:  # upright
        H = p.u("height", 1.1, 1.35)
        D = p.u("depth", 0.5, 0.65)
        b.box((0, H / 2, -D / 2 + 0.15), (W, H, D - 0.3), col)
        b.box((0, kh - 0.06, 0.05), (W, 0.1, 0.3), col)
        keyboard(0.12, kh, W - 0.1)
        for sx in (-1, 1):
            b.box((sx * (W / 2 - 0.04), kh / 2, 0.12), (0.06, kh, 0.06), col)
        b.box((0, kh + 0.28, 0.02), (W * 0.5, 0.2, 0.02), col * 0.8)
        feats += ["a tall upright case", "a music stand"]
    elif st == 1:  # grand
        Lg = p.u("length", 1.5, 2.3)
        b.box((0, kh + 0.08, -0.05), (W, 0.25, 0.3), col)
        prof = [(0, 0), (1, 0), (1, 1), (0, 1)]
        b.lathe(prof, (0.0, kh - 0.05, -0.2 - Lg * 0.45), col, sections=20, scale=(W / 2, 0.3, Lg * 0.5))
        lid = p.flag("lid_open", 0.6)
        if lid:
            b.box((0, kh + 0.25 + Lg * 0.25, -0.2 - Lg * 0.45), (W * 0.9, 0.02, Lg * 0.85), col, rot=rot_z(0.5))
            feats.append("the lid propped open")
        keyboard(0.1, kh, W - 0.1)
        for x, z in ((-W / 2 + 0.1, 0.0), (W / 2 - 0.1, 0.0), (0.0, -0.2 - Lg * 0.85)):
            b.cylinder((x, 0, z), (x, kh - 0.05, z), 0.05, col, sections=8)
        feats += ["a long curved body", "three legs"]
    else:  # digital keyboard on an X stand
        keyboard(0.0, kh, W)
        b.box((0, kh - 0.03, -0.05), (W + 0.06, 0.06, 0.3), col)
        for sx in (-1, 1):
            b.cylinder((-sx * 0.25, 0, -0.05), (sx * 0.25, kh - 0.06, -0.05), 0.02, (0.2, 0.2, 0.2), sections=6)
        b.cylinder((0, kh * 0.5, -0.05 - 0.03), (0, kh * 0.5, -0.05 + 0.03), 0.03, (0.2, 0.2, 0.2), sections=8)
        feats += ["an X-shaped stand", "a slim body"]
    return {"color": cname, "features": feats, "size": ["upright", "grand", "portable"][st]}


# ---------------------------------------------------------------------------------------------- registry

CATEGORIES: dict[str, Category] = {c.name: c for c in [
    Category("chair", ("four-legged dining", "office swivel", "armchair", "stool"),
             ("dining chair", "office swivel chair", "armchair", "stool"), gen_chair),
    Category("table", ("rectangular four-leg", "round pedestal", "trestle", "low coffee"),
             ("rectangular table", "round pedestal table", "trestle table", "coffee table"), gen_table),
    Category("sofa", ("two-seat", "three-seat", "L-shaped"), ("loveseat sofa", "three-seat sofa", "L-shaped sofa"),
             gen_sofa),
    Category("bed", ("single", "double with headboard", "bunk"), ("single bed", "double bed", "bunk bed"), gen_bed),
    Category("lamp", ("desk", "floor", "pendant"), ("desk lamp", "floor lamp", "pendant lamp"), gen_lamp),
    Category("bottle", ("wine", "water", "jug"), ("wine bottle", "water bottle", "jug"), gen_bottle),
    Category("mug", ("straight with handle", "tapered", "no handle"), ("mug", "tapered mug", "cup without a handle"),
             gen_mug),
    Category("bowl", ("shallow", "deep", "footed"), ("shallow bowl", "deep bowl", "footed bowl"), gen_bowl),
    Category("vase", ("cylinder", "bulb", "amphora"), ("cylindrical vase", "bulb vase", "amphora vase"), gen_vase),
    Category("airplane", ("airliner", "fighter", "biplane"), ("airliner", "fighter jet", "biplane"), gen_airplane),
    Category("car", ("sedan", "hatchback", "pickup"), ("sedan car", "hatchback car", "pickup truck"), gen_car),
    Category("bench", ("park", "plain slab", "picnic"), ("park bench", "plain bench", "picnic bench"), gen_bench),
    Category("bookshelf", ("open", "with doors", "ladder-style"),
             ("open bookshelf", "bookshelf with doors", "ladder bookshelf"), gen_bookshelf),
    Category("cabinet", ("two-door", "drawers", "wardrobe"),
             ("two-door cabinet", "chest of drawers", "wardrobe cabinet"), gen_cabinet),
    Category("monitor", ("flat on stand", "wall-mounted", "crt"),
             ("flat-screen monitor", "wall-mounted tv", "CRT monitor"), gen_monitor),
    Category("guitar", ("acoustic", "electric", "bass"), ("acoustic guitar", "electric guitar", "bass guitar"),
             gen_guitar),
    Category("rocket", ("single stage", "with boosters", "multi-stage"),
             ("single-stage rocket", "rocket with boosters", "multi-stage rocket"), gen_rocket),
    Category("tower", ("cylindrical", "stepped", "spire"), ("cylindrical tower", "stepped tower", "spire tower"),
             gen_tower),
    Category("mushroom", ("button", "parasol", "cluster"), ("button mushroom", "parasol mushroom", "mushroom cluster"),
             gen_mushroom),
    Category("umbrella", ("open", "folded", "patio"), ("open umbrella", "folded umbrella", "patio umbrella"),
             gen_umbrella),
    Category("ladder", ("straight", "a-frame", "step stool"),
             ("straight ladder", "A-frame stepladder", "step stool ladder"), gen_ladder),
    Category("bathtub", ("rectangular", "clawfoot", "corner"),
             ("rectangular bathtub", "clawfoot bathtub", "corner bathtub"), gen_bathtub),
    Category("toilet", ("close-coupled", "wall-hung", "high tank"), ("toilet", "wall-hung toilet", "high-tank toilet"),
             gen_toilet),
    Category("piano", ("upright", "grand", "keyboard"), ("upright piano", "grand piano", "digital keyboard piano"),
             gen_piano),
]}
ALL_CATEGORIES: tuple[str, ...] = tuple(CATEGORIES)
DEFAULT_CATEGORIES: tuple[str, ...] = ALL_CATEGORIES[:16]
