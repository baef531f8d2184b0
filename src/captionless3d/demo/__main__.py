"""``python -m captionless3d.demo`` (``make demo``): serve the demo page for a checkpoint.

    python -m captionless3d.demo                                  # newest outputs/train/**/best.ckpt, its world's test shapes
    python -m captionless3d.demo --ckpt C --index I --labels chair table lamp --port 8000

Binds 127.0.0.1 unless ``--host`` says otherwise (the page has no authentication: think twice before 0.0.0.0).
Errors the user can fix print ``error: <message>`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from captionless3d.demo.app import DEFAULT_HOST, DEFAULT_PORT
from captionless3d.errors import Captionless3DError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m captionless3d.demo", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: newest <outputs>/train/**/checkpoints/best*.ckpt)")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="where to look for checkpoints")
    parser.add_argument("--index", type=Path, help="an existing shape index (default: index the checkpoint's world "
                        "shapes of --splits under the run's cache, once)")
    parser.add_argument("--splits", nargs="+", default=["test"], help="world splits indexed by default")
    parser.add_argument("--labels", nargs="+", help="zero-shot labels (default: the checkpoint world's categories)")
    parser.add_argument("-k", type=int, default=5, help="shapes shown per query")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"interface to bind (default {DEFAULT_HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    parser.add_argument("--cache-dir", type=Path, help="the training cache, if it moved since training")
    parser.add_argument("--device", default="cpu")
    return parser


def prepare(args: argparse.Namespace):
    """(app, description) for parsed arguments: load the model, open or build the index, pick the labels."""
    from captionless3d.api import load
    from captionless3d.demo.app import DemoApp
    from captionless3d.demo.world import ensure_demo_index, find_demo_checkpoint

    ckpt = args.ckpt or find_demo_checkpoint(args.outputs)
    model = load(ckpt, device=args.device, cache_dir=args.cache_dir)
    collection = None
    if args.index is not None:
        index = model.open_index(args.index)
    else:
        index, collection = ensure_demo_index(model, splits=args.splits)
    labels = args.labels or (list(collection.categories) if collection is not None else None)
    if not labels:
        from captionless3d.errors import ConfigError

        raise ConfigError("--labels: give the zero-shot labels (the index does not come with a world to take them from)")
    app = DemoApp(model, index, labels, k=args.k, title=f"captionless3d demo: {model.experiment or ckpt}")
    examples = index.directory.parent / "examples"
    return app, examples if examples.is_dir() else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from captionless3d.demo.app import make_demo_server

    started = time.perf_counter()
    try:
        app, examples = prepare(args)
        server = make_demo_server(app, args.host, args.port)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # port in use, cannot bind
        print(f"error: cannot listen on {args.host}:{args.port} ({exc})", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"checkpoint {app.model.checkpoint}; index {app.index.directory} ({len(app.index)} shapes); "
          f"labels {', '.join(app.labels)}; ready in {time.perf_counter() - started:.1f} s")
    if examples is not None:
        print(f"example inputs to upload: {examples}")
    print(f"demo: serving on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
