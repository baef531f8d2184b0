"""``python -m captionless3d.demo`` (``make demo``): serve the Gradio demo page for a checkpoint.

    python -m captionless3d.demo                          # newest outputs/train/**/best.ckpt, its world's test shapes
    python -m captionless3d.demo --ckpt C --index I --labels chair table lamp --port 8000
    python -m captionless3d.demo --ckpt hf-hub:<org>/<name> --index I --labels chair table lamp

Binds 127.0.0.1 unless ``--host`` says otherwise (the page has no authentication: think twice before 0.0.0.0).
Errors the user can fix print ``error: <message>`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from captionless3d.demo import DEFAULT_HOST, DEFAULT_PORT
from captionless3d.errors import Captionless3DError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captionless3d.demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="checkpoint, pretrained directory or hf-hub:<org>/<name> (default: newest "
                        "<outputs>/train/**/checkpoints/best*.ckpt)")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="where to look for checkpoints")
    parser.add_argument("--index", type=Path, help="an existing shape index (default: index the checkpoint's world "
                        "shapes of --splits under the run's cache, once)")
    parser.add_argument("--splits", nargs="+", default=["test"], help="world splits indexed by default")
    parser.add_argument("--labels", nargs="+", help="zero-shot labels (default: the checkpoint world's categories)")
    parser.add_argument("-k", type=int, default=5, help="shapes shown per query")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"interface to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = a free one)")
    parser.add_argument("--cache-dir", type=Path, help="the training cache, if it moved since training")
    parser.add_argument("--device", default="cpu")
    return parser


def prepare(args: argparse.Namespace):
    """The :class:`~captionless3d.demo.service.DemoService` for parsed arguments: load the model, open or build the
    index, pick the labels and the example inputs."""
    from captionless3d.api import load
    from captionless3d.demo.service import DemoService
    from captionless3d.demo.world import ensure_demo_index, find_demo_checkpoint
    from captionless3d.errors import ConfigError

    ckpt = args.ckpt or find_demo_checkpoint(args.outputs)
    model = load(ckpt, device=args.device, cache_dir=args.cache_dir)
    collection = None
    if args.index is not None:
        index = model.open_index(args.index)
    else:
        index, collection = ensure_demo_index(model, splits=args.splits)
    labels = args.labels or (list(collection.categories) if collection is not None else None)
    if not labels:
        raise ConfigError("--labels: give the zero-shot labels "
                          "(the index does not come with a world to take them from)")
    examples_dir = index.directory.parent / "examples"
    examples = sorted(examples_dir.iterdir()) if examples_dir.is_dir() else []
    return DemoService(model, index, labels, k=args.k, title=f"captionless3d demo: {model.experiment or ckpt}",
                       examples=examples)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from captionless3d.demo.gradio_app import launch_demo

    started = time.perf_counter()
    try:
        service = prepare(args)
        demo, url = launch_demo(service, args.host, args.port, block=False)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, cannot bind (Gradio raises OSError)
        print(f"error: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    print(f"model {service.model.source}; index {service.index.directory} ({len(service.index)} shapes); "
          f"labels {', '.join(service.labels)}; ready in {time.perf_counter() - started:.1f} s")
    if service.examples:
        print(f"{len(service.examples)} example inputs on the page (from {service.examples[0].parent})")
    print(f"demo: serving on {url} (Ctrl-C stops)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
