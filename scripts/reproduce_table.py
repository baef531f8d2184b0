#!/usr/bin/env python
"""Reproduce the synthetic-world comparison table in one command.

    python scripts/reproduce_table.py --preset quick|full [--out DIR] [--seeds 0 1 2] [--variants baseline avg ...]
                                      [--write-doc PATH] [--benchmark heldout] [--reference baseline] [-v]
                                      [hydra overrides ...]

Trains every variant × seed of the preset through Hydra multiruns of the real entry point (``python -m
captionless3d.train -m +reproduce=<preset> experiment=... seed=...``), then merges the runs into the paper-style table
(mean ± std over seeds), the same-category retrieval breakdown and the paired comparison against ``--reference``,
each with the chance levels the runs recorded. The logic is :mod:`captionless3d.reproduce`.

Presets are Hydra configs, ``configs/reproduce/<preset>.yaml``: ``quick`` (baseline vs AVG, one seed, about 9 min
with a warm world and teacher) and ``full`` (4 variants × 5 paired seeds, about 85 min with warm caches on the 2-core
CPU machine). Extra Hydra overrides are passed to every run and win over the preset's settings (e.g.
``trainer.max_epochs=2``); everything containing ``=`` (or starting with ``~``), and everything after ``--``, is an
override. Variants and seeds are chosen with ``--variants`` / ``--seeds``, not with ``experiment=`` / ``seed=``.

Resumable: every (variant, seed) run has its own directory ``<out>/<variant>_seed<seed>``. Run the same command with
the same ``--out`` again and the finished runs are reused, an unfinished one is set aside (renamed
``*.incomplete-<time>``) and trained again, and only the missing runs train; then everything is tabulated. Without
``--out`` a new time-stamped multirun directory is used.

Written into ``--out``: ``results.{md,csv,json}`` (the paper-style table), ``samecat/results.*``, ``paired.{md,json}``,
``reproduce.md`` / ``reproduce.json`` (both tables, the preset, the overrides, the exact multirun commands, wall times,
the test-split sizes and chance levels), ``runs.csv`` and the raw multirun output ``reproduce.log``. ``--write-doc
PATH`` also writes a ``docs/synthetic_results.md``-style report (the reading is left to be written by hand; an
existing file is never overwritten).

Exit status: 0 done; 1 a training run failed (the message names its run directory and log); 2 bad arguments or
overrides (nothing was trained); 130 interrupted.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from captionless3d.reproduce import available_presets, reproduce

_OPTIONS_WITH_VALUE = {"--preset", "--out", "--write-doc", "--benchmark", "--reference"}


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(script arguments, hydra overrides)``: tokens containing ``=`` or starting with ``~`` (not an option and not
    an option's value), and everything after ``--``, are overrides."""
    own: list[str] = []
    overrides: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            overrides += tokens[i + 1:]
            break
        if token in _OPTIONS_WITH_VALUE and i + 1 < len(tokens):
            own += [token, tokens[i + 1]]
            i += 2
            continue
        if not token.startswith("-") and ("=" in token or token.startswith("~")):
            overrides.append(token)
        else:
            own.append(token)
        i += 1
    return own, overrides


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=available_presets(),
                        help="configs/reproduce/<preset>.yaml")
    parser.add_argument("--out", type=Path, default=None,
                        help="sweep directory: runs and tables (default: a new multirun dir); reused runs resume")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the preset's)")
    parser.add_argument("--variants", nargs="+", default=None, help="experiments (default: the preset's)")
    parser.add_argument("--benchmark", default="heldout", help="benchmark to tabulate (an eval=[...] entry)")
    parser.add_argument("--reference", default="baseline",
                        help="variant the paired comparison measures every other one against (default: baseline)")
    parser.add_argument("--write-doc", type=Path, default=None, help="also write a docs-style report to this new file")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the multirun's whole output")
    return parser.parse_args(own), overrides


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, overrides = parse_args(argv)
    return reproduce(
        args.preset, out=args.out, variants=args.variants, seeds=args.seeds, extra_overrides=overrides,
        benchmark=args.benchmark, reference=args.reference, write_doc=args.write_doc, verbose=args.verbose,
        command_line=shlex.join(["python", "scripts/reproduce_table.py", *argv]),
        repo=Path(__file__).resolve().parents[1],
    )


if __name__ == "__main__":
    raise SystemExit(main())
