"""Shared logic of the data-preparation scripts (``scripts/prepare_*.py``).

Each script reads one downloaded data set with its reader, validates it and prints a summary (objects per split,
categories, views, photos), then builds -- or reuses -- its teacher feature store in exactly the directory the
training/evaluation pipeline uses (``<cache>/features/<stable_hash(feature_store_key)>``, see
:func:`captionless3d.pipeline.build_features`), so a later ``python -m captionless3d.train data=... teacher=...
paths.cache_dir=<cache>`` finds it and does not re-embed anything.

* The reader defaults of every script are the ones of the matching Hydra config (``configs/data/shapenet_ulip2.yaml``,
  ``configs/eval/{modelnet40,pix3d,scanobjectnn}.yaml``): same parameters = same collection fingerprint = same store.
* Resumable: a complete store whose manifest matches is reused (``reusing feature store ...``); a stale or partial
  one is rebuilt.
* ``--skip-bad``: bad objects (missing views, corrupt clouds / images / meshes) are skipped and listed at the end with
  their count. Without it the first bad file stops the run with its :class:`~captionless3d.errors.DataError` message
  (exit code 2, no traceback).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from captionless3d.errors import CacheError, Captionless3DError
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE

log = logging.getLogger("captionless3d.prepare")

EXIT_OK, EXIT_ERROR = 0, 2


def default_data_dir() -> Path:
    """``$CAPTIONLESS3D_DATA`` or ``./data`` (``configs/paths/default.yaml``)."""
    return Path(os.environ.get("CAPTIONLESS3D_DATA", "data"))


def default_cache_dir() -> Path:
    """``$CAPTIONLESS3D_CACHE`` or ``./.cache`` (``configs/paths/default.yaml``)."""
    return Path(os.environ.get("CAPTIONLESS3D_CACHE", ".cache"))


def none_or_str(value: str) -> str | None:
    """argparse type: ``none``/``null``/empty -> ``None``, anything else as is."""
    return None if value.lower() in ("none", "null", "") else value


def none_or_int(value: str) -> int | None:
    """argparse type: ``none``/``null``/``all``/empty -> ``None``, else an ``int``."""
    return None if value.lower() in ("none", "null", "all", "") else int(value)


def make_parser(description: str, default_root: str) -> argparse.ArgumentParser:
    """The options every prepare script shares; the script adds its reader options to the returned parser."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", type=Path, default=default_data_dir() / default_root,
                        help="the downloaded data set folder (README 'Data')")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(),
                        help="cache dir (= paths.cache_dir of the training run); the store goes to <cache>/features/")
    teacher = parser.add_argument_group("teacher (must match the teacher=... config of the later run)")
    teacher.add_argument("--teacher-name", default="ViT-B-32", help="OpenCLIP architecture (or custom config name)")
    teacher.add_argument("--pretrained", type=none_or_str, default="laion2b_s34b_b79k",
                         help="OpenCLIP pretrained tag; 'none' = random init (smoke runs)")
    teacher.add_argument("--checkpoint", type=Path, default=None, help="local checkpoint file (replaces --pretrained)")
    teacher.add_argument("--model-config", type=Path, default=None,
                         help="JSON OpenCLIP config for a custom architecture")
    teacher.add_argument("--device", default="cpu", help="torch device for the teacher (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--prompt-template", default=DEFAULT_PROMPT_TEMPLATE,
                        help="zero-shot class prompt (= prompt_template of the later run)")
    parser.add_argument("--batch-size", type=int, default=256, help="teacher batch size")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad objects and list them at the end (default: stop at the first bad file)")
    parser.add_argument("--no-features", action="store_true", help="only read, validate and summarise the data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def create_teacher_from_args(args: argparse.Namespace) -> Any:
    """The OpenCLIP teacher the Hydra teacher config would build (same id: same feature-store directory)."""
    from captionless3d.teacher.openclip import create_teacher

    pretrained = None if args.checkpoint is not None else args.pretrained
    return create_teacher(
        args.teacher_name,
        pretrained=pretrained,
        checkpoint=str(args.checkpoint) if args.checkpoint is not None else None,
        model_config=str(args.model_config) if args.model_config is not None else None,
        device=args.device,
    )


def feature_store_dir(cache_dir: str | os.PathLike, collection: Any, teacher: Any, prompt_template: str) -> Path:
    """``<cache>/features/<stable_hash(key)>``: the directory :func:`captionless3d.pipeline.build_features` uses."""
    from captionless3d.teacher.features import feature_store_key
    from captionless3d.utils.manifest import stable_hash

    key = feature_store_key(collection, teacher, prompt_template=prompt_template,
                            landmarks=getattr(collection, "landmarks", None))
    return Path(cache_dir) / "features" / stable_hash(key)


def summarize(collection: Any) -> str:
    """A few lines: objects per split, categories (with counts), views / photos / points per object."""
    splits = Counter(str(s) for s in collection.splits.tolist())
    per_cat = Counter(int(label) for label in collection.labels.tolist())
    lines = [
        f"{collection.name}: {len(collection)} objects, {len(collection.categories)} categories",
        "  splits: " + ", ".join(f"{s}={splits[s]}" for s in ("teacher", "train", "val", "test") if splits[s]),
        "  categories: " + ", ".join(f"{c} ({per_cat.get(i, 0)})" for i, c in enumerate(collection.categories)),
    ]
    views = getattr(collection, "views", None)
    if views is not None and len(views.shape) >= 2:
        lines.append(f"  views per object: {views.shape[1]}"
                     + (f" ({views.shape[2]}x{views.shape[3]} px)" if views.shape[1] else ""))
    photos = getattr(collection, "photos", None)
    if photos is not None:
        lines.append(f"  photos per object: {photos.shape[1]}")
    points = getattr(collection, "points", None)
    if points is not None:
        lines.append(f"  points per object: {points.shape[1]}")
    shapes = getattr(collection, "shape_index", None)
    if shapes is not None and len(shapes) and int(shapes.max()) + 1 != len(collection):
        lines.append(f"  unique shapes: {int(shapes.max()) + 1}")
    return "\n".join(lines)


def report_bad(bad: Sequence[tuple[str, str]], out=None) -> str:
    """The skipped-object report: the count, then one ``file: reason`` line each."""
    text = f"skipped {len(bad)} bad object(s)" + (":" if bad else "")
    for file, reason in bad:
        text += f"\n  {file}: {reason}"
    print(text, file=out or sys.stdout, flush=True)
    return text


def prepare(
    reader: Callable[..., Any],
    reader_kwargs: Mapping[str, Any],
    args: argparse.Namespace,
    *,
    teacher_factory: Callable[[argparse.Namespace], Any] = create_teacher_from_args,
) -> tuple[Any, Any]:
    """Read + validate + summarise, then build or reuse the feature store. Returns ``(collection, store or None)``.

    Raises the project's errors (DataError on the first bad file without ``skip_bad``)."""
    from captionless3d.teacher.features import ensure_feature_store, load_feature_store

    t0 = time.perf_counter()
    log.info("reading %s (skip_bad=%s) ...", args.root, args.skip_bad)
    collection = reader(args.root, **dict(reader_kwargs), skip_bad=bool(args.skip_bad))
    print(summarize(collection), flush=True)
    log.info("read %d objects in %.1f s", len(collection), time.perf_counter() - t0)
    store = None
    if not args.no_features:
        if len(collection) == 0:
            from captionless3d.errors import DataError

            raise DataError(f"{args.root}: no readable objects left, nothing to embed")
        teacher = teacher_factory(args)
        out_dir = feature_store_dir(args.cache, collection, teacher, args.prompt_template)
        reuse = False
        if (out_dir / "manifest.json").is_file():
            from captionless3d.teacher.features import feature_store_key

            key = feature_store_key(collection, teacher, prompt_template=args.prompt_template,
                                    landmarks=getattr(collection, "landmarks", None))
            try:
                load_feature_store(out_dir, key, verify_checksums=False)
                reuse = True
            except CacheError as exc:
                log.warning("feature store %s is stale or incomplete (%s): rebuilding", out_dir, exc)
        log.info("%s feature store %s (teacher %s)", "reusing" if reuse else "building", out_dir, teacher.id)
        t1 = time.perf_counter()
        store = ensure_feature_store(
            collection, teacher, out_dir, prompt_template=args.prompt_template,
            landmarks=getattr(collection, "landmarks", None), batch_size=int(args.batch_size),
            progress=not args.no_progress,
        )
        print(f"feature store: {out_dir} ({'reused' if reuse else f'built in {time.perf_counter() - t1:.1f} s'}; "
              f"view_emb {tuple(store.view_emb.shape)})", flush=True)
    if args.skip_bad:
        report_bad(list(collection.bad))
    return collection, store


def run(
    reader: Callable[..., Any],
    reader_kwargs: Callable[[argparse.Namespace], Mapping[str, Any]],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
) -> int:
    """Script entry point: parse ``argv``, :func:`prepare`, map project errors to exit code 2 (message, no
    traceback)."""
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        prepare(reader, reader_kwargs(args), args)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if not args.skip_bad:
            print("(pass --skip-bad to skip bad objects and list them at the end)", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return EXIT_OK
