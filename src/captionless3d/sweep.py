"""Resumable sweeps of the training entry point: variants × seeds, one run directory per (variant, seed).

A sweep lives in one directory ``out``; run ``(variant, seed)`` is ``out/<variant>_seed<seed>/`` (the reproduce
presets' ``hydra.sweep.subdir``). :func:`plan_sweep` finds which runs already finished (their ``summary.json`` has
the benchmark's metrics) and which are missing; :func:`launch_sweep` trains the missing ones through Hydra
multiruns of ``python -m captionless3d.train`` (a subprocess: the library never imports its entry points), one per
group of variants that miss the same seeds, with a progress line per run and the raw output appended to
``out/reproduce.log``; :func:`failure_report` names the run directory, log and last error of every run that did not
finish.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from captionless3d.errors import ConfigError

__all__ = [
    "Clock",
    "LaunchResult",
    "Run",
    "SweepPlan",
    "compose_check",
    "duration",
    "failure_report",
    "find_runs",
    "hydra_quote",
    "launch_sweep",
    "plan_sweep",
    "run_dir_name",
]

_LAUNCH = re.compile(r"\[HYDRA\]\s+#(\d+) : (.*)$")
_SUMMARY = re.compile(r"run summary: (\{.*\})\s*$")
_SET_ASIDE = ".incomplete-"


# --------------------------------------------------------------------------------------------------------- helpers
class Clock:
    """Wall time since creation, printed as ``[m:ss]`` in front of progress lines."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        print(f"[{duration(self.elapsed()):>8}] {message}", flush=True)


def duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def hydra_quote(value: str) -> str:
    """``value`` as a Hydra override value (quoted unless it is a plain path-like word)."""
    return value if re.fullmatch(r"[\w/.\-:@]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_dir_name(variant: str, seed: int) -> str:
    """The directory of run (variant, seed) inside a sweep (``hydra.sweep.subdir`` of the reproduce presets)."""
    return f"{variant}_seed{seed}"


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# ---------------------------------------------------------------------------------------------------- config check
def compose_check(variants: Sequence[str], seed: int, overrides: Sequence[str]) -> Any:
    """Compose the training config of every variant as the sweep will (``experiment=<variant> seed=<seed>
    <overrides>``) and return the first one with its ``hydra`` section. A bad override, group option or variant is a
    :class:`ConfigError` carrying Hydra's message, before anything trains."""
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR

    first = None
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
        for variant in variants:
            try:
                cfg = compose("train", overrides=[f"experiment={variant}", f"seed={seed}", *overrides],
                              return_hydra_config=True)
            except Exception as exc:  # Hydra's composition errors carry the useful message (available options ...)
                message = str(exc).strip() or type(exc).__name__
                raise ConfigError("bad override or variant: the training config does not compose "
                                  f"(experiment={variant}, overrides {' '.join(overrides)}):\n{message}") from None
            first = first if first is not None else cfg
    return first


# ----------------------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    """One training run directory of a sweep (it has ``.hydra/``)."""

    run_dir: Path
    experiment: str
    seed: int | None
    summary: dict | None
    config: Any
    overrides: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        logs = sorted(self.run_dir.glob("*.log"))
        return logs[0] if logs else self.run_dir / "train.log"

    def finished(self, benchmark: str) -> bool:
        return bool(self.summary and (self.summary.get("metrics") or {}).get(benchmark))


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception:  # a half-written file of a killed run: treated as unknown
        return None


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run directory directly below ``sweep_dir`` (it has ``.hydra/``), by name; directories set aside by
    :func:`set_aside` are not runs of the sweep any more."""
    from omegaconf import OmegaConf

    runs = []
    for hydra_dir in sorted(Path(sweep_dir).glob("*/.hydra")):
        run_dir = hydra_dir.parent
        if _SET_ASIDE in run_dir.name:
            continue
        config = _load_yaml(hydra_dir / "config.yaml") or OmegaConf.create({})
        overrides = _load_yaml(hydra_dir / "overrides.yaml")
        summary = None
        if (run_dir / "summary.json").is_file():
            try:
                summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                summary = None
        seed = OmegaConf.select(config, "seed", default=None)
        runs.append(Run(run_dir, str(OmegaConf.select(config, "experiment_name", default=run_dir.name)),
                        None if seed is None else int(seed), summary, config,
                        [str(o) for o in overrides] if overrides is not None else []))
    return runs


@dataclass
class SweepPlan:
    """Which (variant, seed) runs of a sweep are done, and which are to train."""

    done: dict[tuple[str, int], Run]
    missing: list[tuple[str, int]]
    incomplete: list[Run]  # directories of requested runs that did not finish (set aside before training)


def _comparable(overrides: Sequence[str]) -> list[str]:
    """Overrides that define what a run trains (not which variant / seed, not where Hydra writes)."""
    return sorted(o for o in overrides if _override_key(o) not in ("experiment", "seed")
                  and not _override_key(o).startswith("hydra."))


def plan_sweep(out: Path, variants: Sequence[str], seeds: Sequence[int], overrides: Sequence[str],
               benchmark: str) -> SweepPlan:
    """The state of the sweep in ``out`` for ``variants`` × ``seeds``: finished runs are kept, the rest is missing.

    A finished run trained with other overrides than ``overrides`` is a :class:`ConfigError` (its numbers would not
    be comparable): resume with the same overrides, or choose another ``out``.
    """
    wanted = [(v, int(s)) for v in variants for s in seeds]
    done: dict[tuple[str, int], Run] = {}
    incomplete: list[Run] = []
    for run in find_runs(out):
        key = (run.experiment, run.seed)
        if key not in wanted:
            continue
        if not run.finished(benchmark):
            incomplete.append(run)
            continue
        if run.overrides and _comparable(run.overrides) != _comparable(overrides):
            raise ConfigError(
                f"{run.run_dir}: this finished run was trained with overrides {_comparable(run.overrides)}, not "
                f"{_comparable(overrides)}; resume with the same overrides or choose another output directory")
        done[key] = run
    return SweepPlan(done, [k for k in wanted if k not in done], incomplete)


def set_aside(run: Run) -> Path:
    """Rename an unfinished run directory to ``<dir>.incomplete-<time>`` (kept for its log) so the run can be
    trained again in its own directory."""
    target = run.run_dir.with_name(f"{run.run_dir.name}{_SET_ASIDE}{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    run.run_dir.rename(target)
    return target


def launch_groups(missing: Sequence[tuple[str, int]]) -> list[tuple[list[str], list[int]]]:
    """The missing runs as few rectangular multiruns: variants that miss the same seeds share one."""
    seeds_of: dict[str, list[int]] = {}
    for variant, seed in missing:
        seeds_of.setdefault(variant, []).append(seed)
    groups: dict[tuple[int, ...], list[str]] = {}
    for variant, seeds in seeds_of.items():
        groups.setdefault(tuple(seeds), []).append(variant)
    return [(variants, list(seeds)) for seeds, variants in groups.items()]


# --------------------------------------------------------------------------------------------------------- launch
@dataclass
class LaunchResult:
    """What :func:`launch_sweep` ran: per multirun its command and exit code; per launched run the seconds from its
    launch to the next launch (or the end)."""

    commands: list[list[str]] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)
    run_seconds: dict[tuple[str, int], float] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(code == 0 for code in self.returncodes)


def _job_key(overrides: str) -> tuple[str, int] | None:
    values = dict(o.split("=", 1) for o in overrides.split() if "=" in o)
    try:
        return values["experiment"], int(values["seed"])
    except (KeyError, ValueError):
        return None


def launch_sweep(out: Path, missing: Sequence[tuple[str, int]], overrides: Sequence[str], clock: Clock,
                 *, verbose: bool = False) -> LaunchResult:
    """Train the ``missing`` (variant, seed) runs into ``out`` (Hydra multiruns of the real entry point), printing one
    progress line per run with an ETA; the raw output is appended to ``out/reproduce.log``. Stops at the first
    multirun that fails; Ctrl-C lets the running job write its checkpoint and stop."""
    out.mkdir(parents=True, exist_ok=True)
    result = LaunchResult()
    started = time.perf_counter()
    total = len(missing)
    finished_seconds: list[float] = []
    launched_before = 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(out / "reproduce.log", "a", encoding="utf-8") as log:
        for variants, seeds in launch_groups(missing):
            command = [sys.executable, "-m", "captionless3d.train", "-m", f"experiment={','.join(variants)}",
                       f"seed={','.join(str(s) for s in seeds)}", *overrides,
                       f"hydra.sweep.dir={hydra_quote(str(out))}"]
            result.commands.append(command)
            log.write(f"\n=== {datetime.now().astimezone().isoformat(timespec='seconds')} {shlex.join(command)}\n")
            log.flush()
            launch_times: dict[tuple[str, int], float] = {}
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                    env=env, errors="replace")
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if verbose:
                        print(line, end="", flush=True)
                    launch = _LAUNCH.search(line)
                    if launch:
                        key = _job_key(launch.group(2))
                        now = time.perf_counter() - started
                        if launch_times:  # the previous run of this multirun ended when this one launched
                            last = max(launch_times, key=launch_times.get)
                            result.run_seconds[last] = round(now - launch_times[last], 1)
                        if key is not None:
                            launch_times[key] = now
                        number = launched_before + int(launch.group(1)) + 1
                        eta = ""
                        if finished_seconds:
                            remaining = (total - number + 1) * sum(finished_seconds) / len(finished_seconds)
                            eta = f", ≈ {duration(remaining)} left"
                        clock.say(f"run {number}/{total}: {_short(launch.group(2))}{eta}")
                        continue
                    summary = _SUMMARY.search(line)
                    if summary:
                        try:
                            info = json.loads(summary.group(1))
                        except json.JSONDecodeError:
                            continue
                        if launch_times:
                            finished_seconds.append(time.perf_counter() - started - max(launch_times.values()))
                        clock.say(f"  finished in {info.get('wall_seconds', '?')} s: {info.get('run_dir', '')}")
                proc.wait()
            except KeyboardInterrupt:
                result.interrupted = True
                try:
                    proc.wait(timeout=60)  # the child got the same SIGINT; let it write its checkpoint and stop
                except (subprocess.TimeoutExpired, KeyboardInterrupt):
                    proc.kill()
                    proc.wait()
            if launch_times:
                last = max(launch_times, key=launch_times.get)
                result.run_seconds[last] = round(time.perf_counter() - started - launch_times[last], 1)
            result.returncodes.append(proc.returncode)
            launched_before += len(variants) * len(seeds)
            if result.interrupted or proc.returncode != 0:
                break
    result.seconds = time.perf_counter() - started
    return result


def _short(overrides: str) -> str:
    keep = [o for o in overrides.split() if o.split("=", 1)[0] in ("experiment", "seed")]
    return " ".join(keep) or overrides


# -------------------------------------------------------------------------------------------------------- failure
def _last_error_in(text: str) -> str | None:
    """The last error line of a log: an ERROR record, an ``error:`` line or an exception line."""
    patterns = (
        re.compile(r"\]\[ERROR\] - (.*)$"),
        re.compile(r"^error: (.*)$"),
        re.compile(r"^((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$"),
    )
    for line in reversed(text.splitlines()):
        for pattern in patterns:
            match = pattern.search(line.strip())
            if match:
                return match.group(1).strip()
    return None


def _last_error(log: Path) -> str | None:
    try:
        return _last_error_in(log.read_text("utf-8", errors="replace"))
    except OSError:
        return None


def _multirun_error(log_path: Path) -> tuple[dict[str, str], str | None]:
    """``(overrides of the run Hydra names as failed, its error line)`` from the multirun output: Hydra reports an
    unexpected exception (not one of ours, which the run logs itself) of the first failing run only, at the end."""
    try:
        text = log_path.read_text("utf-8", errors="replace")
    except OSError:
        return {}, None
    matches = list(re.finditer(r"Error executing job with overrides: (\[.*\])", text))
    match = matches[-1] if matches else None  # the last one
    if match is None:
        return {}, None
    try:
        overrides = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in ast.literal_eval(match.group(1)) if "=" in o}
    except (ValueError, SyntaxError):
        overrides = {}
    return overrides, _last_error_in(text[match.end():])


def failure_report(runs: Sequence[Run], wanted: Sequence[tuple[str, int]], result: LaunchResult, benchmark: str,
                   log_path: Path) -> str:
    """Why the sweep has no table: every requested run that did not finish, with its run dir, log and last error,
    and how many never started."""
    present = {(r.experiment, r.seed): r for r in runs}
    failed = [present[k] for k in wanted if k in present and not present[k].finished(benchmark)]
    not_started = [k for k in wanted if k not in present]
    codes = ", ".join(str(c) for c in result.returncodes) or "none"
    lines = [f"error: {len(failed) + len(not_started)} of {len(wanted)} training runs did not finish (multirun exit "
             f"code(s): {codes}); no table was written."]
    hydra_failed, hydra_reason = _multirun_error(log_path)
    for run in failed:
        reason = _last_error(run.log)
        if reason is None and hydra_reason and hydra_failed.get("experiment") == run.experiment \
                and hydra_failed.get("seed") == str(run.seed):
            reason = hydra_reason
        reason = reason or "no error message in its log (see the full multirun output below)"
        lines += [f"  run experiment={run.experiment} seed={run.seed} failed: {reason}",
                  f"    run dir: {run.run_dir}",
                  f"    log:     {run.log}"]
    if not_started:
        lines.append(f"  {len(not_started)} run(s) not started (a multirun stops at a failing run).")
        if not failed:
            reason = _last_error(log_path)
            if reason:
                lines.append(f"  multirun error: {reason}")
    lines.append(f"  full multirun output: {log_path}")
    return "\n".join(lines)
