#!/usr/bin/env python
"""How much of the teacher's shape knowledge is colour? The teacher oracle on the world's renders vs on grey renders.

    python scripts/colour_oracle.py [--split test] [--out DIR] [hydra overrides of the training config ...]

e.g. ``python scripts/colour_oracle.py data.collection.colours=object`` (worlds v1/v2) or with no override (the
default world). The teacher oracle (``captionless3d.evaluation.oracle``) represents each shape by the teacher's
own mean embedding of its renders; the student, which sees xyz only, can at best reproduce that. Here the oracle
is computed twice on the same objects and photos:

- ``coloured``: the world's own renders (the feature store the student is trained on);
- ``grey``: the same objects re-rendered with the same geometry, cameras and light but every face one grey
  (:func:`captionless3d.data.synthetic.world.rerender_views`), embedded by the same teacher.

The drop from coloured to grey is what colour carries. The teacher never saw grey renders in training, so the grey
figure understates its geometric knowledge. Prints a Markdown table (numbers only) and writes ``colour_oracle.json``
into ``--out`` (default ``outputs/colour_oracle``). Synthetic worlds only: real collections cannot be re-rendered.
Exit status 2 on a bad argument or override.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

METRICS = (
    ("retrieval/nobg/gallery/i2s_r1", "gallery w/o bg I→S R@1"),
    ("retrieval/bg/gallery/i2s_r1", "gallery w/ bg I→S R@1"),
    ("retrieval/nobg/gallery/i2s_r5", "gallery w/o bg I→S R@5"),
    ("retrieval/nobg/gallery_samecat/i2s_r1", "same-cat w/o bg I→S R@1"),
    ("zeroshot/top1", "zero-shot top-1"),
)


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="colour_oracle"):
        return compose("train", overrides=overrides)


def measure(cfg, split: str = "test", progress: bool = True) -> dict:
    """``{"coloured": oracle metrics, "grey": oracle metrics, ...}`` for ``split`` of the configured world."""
    from captionless3d.data.synthetic.world import SyntheticWorld, rerender_views
    from captionless3d.errors import ConfigError
    from captionless3d.evaluation.oracle import evaluate_teacher_oracle
    from captionless3d.pipeline import prepare

    prepared = prepare(cfg, with_priors=False)
    world, teacher, features = prepared.collection, prepared.teacher, prepared.features
    if not isinstance(world, SyntheticWorld):
        raise ConfigError(f"data: {getattr(world, 'name', world)} is not a synthetic world; "
                          "only those can be re-rendered")
    index = np.asarray(world.indices(split), dtype=np.int64)
    started = time.perf_counter()
    grey = rerender_views(world, index, "grey", progress=progress)
    render_s = time.perf_counter() - started
    m, v = grey.shape[:2]
    started = time.perf_counter()
    grey_emb = teacher.encode_images(grey.reshape(m * v, *grey.shape[2:]), progress=progress).numpy()
    embed_s = time.perf_counter() - started
    view_emb = np.zeros((len(world), v, grey_emb.shape[1]), np.float32)
    view_emb[index] = grey_emb.reshape(m, v, -1)
    grey_features = SimpleNamespace(view_emb=view_emb, photo_emb=features.photo_emb,
                                    photo_masked_emb=features.photo_masked_emb, prompt_emb=features.prompt_emb)
    return {
        "world": world.name,
        "colours": world.params.get("colours", "object"),
        "teacher": teacher.id,
        "split": split,
        "objects": int(m),
        "views": int(v),
        "coloured": evaluate_teacher_oracle(world, features, split=split),
        "grey": evaluate_teacher_oracle(world, grey_features, split=split),
        "seconds": {"render": round(render_s, 1), "embed": round(embed_s, 1)},
    }


def markdown(result: dict) -> str:
    lines = [f"teacher oracle on {result['world']} ({result['colours']} colours), {result['split']} split: "
             f"{result['objects']} objects x {result['views']} views; teacher {result['teacher']}", "",
             "| renders | " + " | ".join(label for _, label in METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name in ("coloured", "grey"):
        cells = [f"{result[name][key]:.1f}" if key in result[name] else "–" for key, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("outputs/colour_oracle"))
    parser.add_argument("--no-progress", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    from hydra.errors import HydraException

    from captionless3d.errors import Captionless3DError
    from captionless3d.utils.atomic import atomic_write_json

    try:
        cfg = compose_config(overrides)
    except HydraException as exc:
        print(f"error: bad override: the training config does not compose ({' '.join(overrides)}): {exc}",
              file=sys.stderr)
        return 2
    try:
        result = measure(cfg, args.split, progress=not args.no_progress)
    except Captionless3DError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(markdown(result), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "colour_oracle.json", {**result, "overrides": overrides})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
