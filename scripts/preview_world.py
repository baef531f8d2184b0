"""Save a PNG contact sheet of the synthetic world: one row per category, showing one render per sub-type (view 1),
then photos of the same objects with their masks overlaid, so a person can check the objects are recognisable.

    python scripts/preview_world.py --out outputs/preview_world.png                 # builds a small world
    python scripts/preview_world.py --world outputs/cache/synthetic/world-<hash>   # previews an existing one
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captionless3d.data.synthetic import ensure_world, load_world


def contact_sheet(world, per_subtype_views: int = 1, photos: int = 3, scale: int = 2) -> Image.Image:
    s = world.views.shape[2]
    label_w = 90
    rows = []
    for c, cat in enumerate(world.categories):
        idx = np.flatnonzero(world.labels == c)
        tiles = []
        sub_ids = sorted(set(world.subtype_ids[idx].tolist()))
        for sid in sub_ids:
            members = idx[world.subtype_ids[idx] == sid][:2]
            for m in members:
                tiles.append(np.asarray(world.views[m, 1]))
        for m in idx[:photos]:
            for k in range(world.photos.shape[1]):
                ph = np.asarray(world.photos[m, k]).astype(np.float32)
                mk = np.asarray(world.masks[m, k])
                tiles.append(ph.astype(np.uint8))
                over = ph * 0.35
                over[mk] = ph[mk] * 0.5 + np.array([0, 255, 0]) * 0.5
                tiles.append(over.astype(np.uint8))
        rows.append((cat, tiles))
    n_cols = max(len(t) for _, t in rows)
    sheet = Image.new("RGB", (label_w + n_cols * s * scale, len(rows) * s * scale), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, (cat, tiles) in enumerate(rows):
        draw.text((4, r * s * scale + s * scale // 2 - 6), cat, fill=(0, 0, 0))
        for j, t in enumerate(tiles):
            im = Image.fromarray(t).resize((s * scale, s * scale), Image.NEAREST)
            sheet.paste(im, (label_w + j * s * scale, r * s * scale))
    return sheet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="an existing world directory (otherwise a small one is built)")
    ap.add_argument("--root", type=Path, default=Path("outputs/cache/synthetic_preview"))
    ap.add_argument("--categories", default="all", help="'all', 'default' or comma-separated names")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/preview_world.png"))
    args = ap.parse_args()
    if args.world:
        world = load_world(args.world)
    else:
        cats = args.categories if args.categories in ("all", "default") else args.categories.split(",")
        world = ensure_world(args.root, seed=args.seed, categories=cats, n_teacher=0, n_train=8, n_val=0, n_test=0,
                             n_points=256, image_size=args.image_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(world).save(args.out)
    print(f"wrote {args.out} ({len(world.categories)} categories, {len(world)} objects, {world.name})")


if __name__ == "__main__":
    main()
