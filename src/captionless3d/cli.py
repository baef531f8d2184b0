"""The ``captionless3d`` command.

    captionless3d classify FILE... --ckpt C --labels chair table mug [--top 5] [--template "a photo of a {}"]
    captionless3d index DIR --ckpt C --out I [--batch-size 32] [--no-thumbnails] [--skip-bad]
    captionless3d search (--image P | --text T | --points F) --index I [--ckpt C] [-k 5]
    captionless3d export --ckpt C --format torchscript|onnx|safetensors --out DIR
    captionless3d export --ckpt C --format hf --out DIR     (a Hugging Face Hub model directory: captionless3d.hub)
    captionless3d train|eval|features [hydra overrides ...]    (e.g. captionless3d train experiment=avg)

Results are printed as tables (rank, score, label / path). Errors the user can fix (a missing file, an unreadable
mesh, a checkpoint from a newer version, an index from another teacher) print ``error: <message>`` on stderr and
exit with status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from captionless3d.errors import Captionless3DError
from captionless3d.teacher.store_format import DEFAULT_PROMPT_TEMPLATE

#: Subcommands handed to the Hydra entry points with the remaining arguments untouched.
PASSTHROUGH = {
    "train": "captionless3d.train",
    "eval": "captionless3d.eval",
    "features": "captionless3d.features",
}


def _table(rows: Sequence[tuple[int, float, str]], last: str) -> str:
    width = max([len(last)] + [len(r[2]) for r in rows])
    lines = [f"{'rank':>4}  {'score':>7}  {last:<{width}}", f"{'-' * 4}  {'-' * 7}  {'-' * width}"]
    lines += [f"{rank:>4}  {score:>7.4f}  {name:<{width}}" for rank, score, name in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- subcommands
def cmd_classify(args: argparse.Namespace) -> int:
    import numpy as np

    from captionless3d.api import load

    model = load(args.ckpt, cache_dir=args.cache_dir)
    classes = model.class_embeddings(args.labels, template=args.template)  # (C, D), encoded once
    for path in args.files:
        scores = model.encode_points(path) @ classes.T  # (rows, C); a batched .npy has several rows
        for row, values in enumerate(scores):
            order = np.argsort(-values, kind="stable")[: args.top]
            print(path if len(scores) == 1 else f"{path}[{row}]")
            print(_table([(i + 1, float(values[j]), args.labels[j]) for i, j in enumerate(order)], "label"))
            print()
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from captionless3d.api import load

    model = load(args.ckpt, cache_dir=args.cache_dir)
    started = time.perf_counter()
    index = model.index(args.dir, args.out, batch_size=args.batch_size, thumbnails=not args.no_thumbnails,
                        thumbnail_size=args.thumbnail_size, progress=not args.quiet,
                        on_error="skip" if args.skip_bad else "raise")
    skipped = index.manifest.get("extra", {}).get("skipped", [])
    print(f"indexed {len(index)} shapes from {args.dir} into {args.out} in {time.perf_counter() - started:.1f} s "
          f"(teacher {index.teacher_id}, {index.dim}-d"
          f"{', thumbnails in ' + str(Path(args.out) / 'thumbs') if not args.no_thumbnails else ''})")
    for item in skipped:
        print(f"skipped {item['path']}: {item['error']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from captionless3d.api import load
    from captionless3d.errors import ConfigError
    from captionless3d.shape_index import ShapeIndex

    index = ShapeIndex.load(args.index)
    ckpt = args.ckpt or index.checkpoint
    if not ckpt:
        raise ConfigError(f"search: {args.index} does not record its checkpoint; pass --ckpt")
    if not Path(ckpt).is_file():
        raise ConfigError(f"search: the index's checkpoint {ckpt} does not exist; pass --ckpt")
    model = load(ckpt, cache_dir=args.cache_dir)
    query = {"image": args.image, "text": args.text, "points": args.points}
    hits = model.search(k=args.k, index=index, **{k: v for k, v in query.items() if v is not None})
    if hits and isinstance(hits[0], list):  # a batched points file: one table per cloud
        for i, rows in enumerate(hits):
            print(f"query #{i}")
            print(_table([(r + 1, h.score, h.path) for r, h in enumerate(rows)], "path"))
        return 0
    opened = model.last_index
    print(f"index: {opened.directory} ({len(opened)} shapes, root {opened.root})")
    print(_table([(r + 1, h.score, h.path) for r, h in enumerate(hits)], "path"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from captionless3d.export import export

    if "hf" in args.format:  # its own layout (model.safetensors, config.json, README.md): not mixed with the others
        from captionless3d.errors import ConfigError
        from captionless3d.hub import export_hf

        if len(args.format) > 1:
            raise ConfigError("export: --format hf writes its own directory layout; export it alone")
        result = export_hf(args.ckpt, args.out)
    else:
        result = export(args.ckpt, args.format, args.out)
    print(f"{', '.join(args.format)}: wrote {', '.join(result['files'])} in {result['seconds']:.1f} s")
    return 0


# --------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from captionless3d.export import FORMATS

    parser = argparse.ArgumentParser(
        prog="captionless3d",
        description="Point-cloud embeddings in a CLIP space: classify, index, search, export; train/eval/features "
                    "pass their arguments to the Hydra entry points (e.g. `captionless3d train experiment=avg`).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="{classify,index,search,export,train,eval,features}")

    def common(p: argparse.ArgumentParser, ckpt_required: bool = True) -> None:
        p.add_argument("--ckpt", required=ckpt_required, help="training checkpoint (.ckpt)")
        p.add_argument("--cache-dir", default=None, help="where the training caches live now (if moved)")

    p = sub.add_parser("classify", help="zero-shot classify shape files")
    p.add_argument("files", nargs="+", help=".ply/.obj/.off/.stl meshes or clouds, .npy/.npz arrays")
    p.add_argument("--labels", nargs="+", required=True, help="class names")
    p.add_argument("--top", type=int, default=5, help="how many labels to show per file (default 5)")
    p.add_argument("--template", default=DEFAULT_PROMPT_TEMPLATE, help="prompt template with {} for the label")
    common(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("index", help="embed every shape file under DIR into a searchable index")
    p.add_argument("dir", help="directory of shape files (searched recursively)")
    p.add_argument("--out", required=True, help="index directory to write")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--thumbnail-size", type=int, default=64)
    p.add_argument("--no-thumbnails", action="store_true")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (listed in the manifest)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="top-k shapes of an index for an image, a text or a shape")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--image", help="image file")
    group.add_argument("--text", help="text query")
    group.add_argument("--points", help="shape file")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    common(p, ckpt_required=False)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="export the point encoder (TorchScript, ONNX, safetensors; hf: a Hub model)")
    p.add_argument("--format", nargs="+", required=True, choices=(*FORMATS, "hf"))
    p.add_argument("--out", required=True, help="output directory")
    common(p)
    p.set_defaults(func=cmd_export)

    for name in PASSTHROUGH:
        sub.add_parser(name, help=f"python -m {PASSTHROUGH[name]} with the remaining arguments", add_help=False)
    return parser


def _passthrough(command: str, rest: list[str]) -> int:
    import importlib

    module = importlib.import_module(PASSTHROUGH[command])
    saved = sys.argv
    sys.argv = [f"captionless3d {command}", *rest]
    try:
        module.main()
    except SystemExit as exc:  # Hydra's entry points exit with their own status
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``captionless3d`` console script; returns (and, as a script, exits with) the status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return _passthrough(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return int(args.func(args) or 0)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
