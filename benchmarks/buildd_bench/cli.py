"""The command line: ``python benchmarks/run.py [options]``."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from .builds import BUILD_FIGURES, BuildMatrix, figure_p1, figure_p1b, figure_p3, figure_p3b
from .context import Context
from .figure import CATALOGUE, FIGURES, Figure
from .load import figure_p4, figure_p4b, p4_worker
from .machine import CpuMeter, machine, tool_versions
from .memory import figure_p5, figure_p5b
from .metadata import figure_p2, figure_p2b
from .native import figure_p6
from .projects import select_projects, unpack
from .proxy import figure_p8
from .report import markdown_report
from .settings import DEFAULT_OUT, console_script, log
from .tools import find_uv
from .watch import figure_p7, watch_worker
from .workspace import workspace

# In the order they run (the report sorts them by FIGURES).
FIGURE_FUNCTIONS: dict[str, Callable[[Context], Figure]] = {
    "P2": figure_p2,
    "P2b": figure_p2b,
    "P4": figure_p4,
    "P4b": figure_p4b,
    "P5": figure_p5,
    "P5b": figure_p5b,
    "P6": figure_p6,
    "P7": figure_p7,
    "P8": figure_p8,
}
MATRIX_FIGURES: dict[str, Callable[[BuildMatrix], Figure]] = {
    "P1": figure_p1,
    "P1b": figure_p1b,
    "P3": figure_p3,
    "P3b": figure_p3b,
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Benchmark buildd against uv build, python -m build and pip wheel.",
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="timed runs per tool and project (default: 5)"
    )
    parser.add_argument(
        "--projects",
        nargs="+",
        metavar="NAME",
        help="only these projects of projects.toml (names, space or comma separated)",
    )
    parser.add_argument(
        "--only",
        metavar="IDS",
        help=f"only these figures, comma separated, of {','.join(FIGURES)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the Markdown report (default: benchmarks/results/latest.md); raw samples go "
        "next to it as .json",
    )
    parser.add_argument("--p2-calls", type=int, default=30, help="P2 and P2b calls per project")
    parser.add_argument(
        "--hook-runs", type=int, default=10, help="processes timing a hook alone per project"
    )
    parser.add_argument("--p4-clients", type=int, default=16, help="P4 client processes")
    parser.add_argument("--p4-calls", type=int, default=25, help="P4 calls per client")
    parser.add_argument("--p4b-watches", type=int, default=200, help="P4b watches held open")
    parser.add_argument(
        "--p4b-trees",
        type=int,
        default=16,
        help="P4b trees the watches follow (default: 16; the daemon watches at most 32 "
        "trees by default, --max-watched-trees, and the machine's inotify instances are few)",
    )
    parser.add_argument(
        "--p4b-watch-sessions", type=int, default=4, help="P4b sessions the watches are in"
    )
    parser.add_argument("--p5-sessions", type=int, default=1000, help="P5 sessions")
    parser.add_argument("--p5b-keys", type=int, default=200, help="P5b keys in the store")
    parser.add_argument(
        "--p5b-slots",
        type=int,
        default=1,
        help="P5b sessions filling the store at once (instances per key only where calls overlap)",
    )
    parser.add_argument(
        "--p6-rounds", type=int, default=3, help="P6 rebuilds per tool and project (default: 3)"
    )
    parser.add_argument("--p7-saves", type=int, default=10, help="P7 saves per project")
    parser.add_argument("--p8-calls", type=int, default=200, help="P8 status calls per address")
    parser.add_argument(
        "--keep", action="store_true", help="keep the /tmp work folder (trees, logs, daemon state)"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    wanted = {f.strip().lower() for f in (args.only or ",".join(FIGURES)).split(",") if f.strip()}
    unknown = wanted - {f.lower() for f in FIGURES}
    if unknown:
        parser.error(f"unknown figure(s) {', '.join(sorted(unknown))}: choose from {FIGURES}")
    args.figures = [f for f in FIGURES if f.lower() in wanted]
    return args


def check_prerequisites() -> None:
    if importlib.util.find_spec("build") is None:
        raise SystemExit(f"pypa/build is missing: {sys.executable} -m pip install build")
    if importlib.util.find_spec("buildd_client") is None:
        raise SystemExit(f"buildd is not installed in {sys.executable}: pip install -e .")
    console_script("buildd-client")
    console_script("buildd-server")
    find_uv()


def guarded(ctx: Context, what: str, step: Callable[[], object]) -> bool:
    """Run one step; a failure goes to the report's "Failed runs", not out of the run."""
    try:
        step()
    except Exception:
        ctx.fail(what, traceback.format_exc(limit=8))
        return False
    return True


def failed_figure(figure: str) -> Figure:
    what, goal = CATALOGUE[figure]
    return Figure.failed(figure, what, goal, "the run failed: see Failed runs")


def run_figure(ctx: Context, figure: str) -> Figure:
    """One figure; when its run raises, a "failed" row and the traceback in Failed runs."""
    log(f"figure {figure}")
    result: list[Figure] = []
    if guarded(ctx, figure, lambda: result.append(FIGURE_FUNCTIONS[figure](ctx))):
        return result[0]
    return failed_figure(figure)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--p4-worker"]:
        address, session_id, src, calls = argv[1:5]
        return p4_worker(address, session_id, src, int(calls))
    if argv[:1] == ["--watch-worker"]:
        return watch_worker(argv[1], argv[2])
    args = parse_args(argv)
    check_prerequisites()
    projects = select_projects(args.projects)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    machine_info = machine()
    pristine = {p.id: unpack(p) for p in projects}
    meter = CpuMeter()
    versions = tool_versions()
    figures: list[Figure] = []
    matrix: BuildMatrix | None = None
    with workspace(pristine, args.keep) as ws:
        ctx = Context(args, projects, ws)
        try:
            if BUILD_FIGURES & set(args.figures):
                matrix = BuildMatrix(ctx)
                wanted = [f for f in args.figures if f in MATRIX_FIGURES]
                if guarded(ctx, "the wheel-build matrix", matrix.run):
                    figures += [MATRIX_FIGURES[f](matrix) for f in wanted]
                else:
                    figures += [failed_figure(f) for f in wanted]
                    matrix = None
            for figure in FIGURE_FUNCTIONS:
                if figure in args.figures:
                    figures.append(run_figure(ctx, figure))
            figures.sort(key=lambda f: FIGURES.index(f.id))
            guarded(ctx, "listing the warm environments' packages", ctx.record_env_packages)
        finally:
            ctx.close()
        other_cpu = meter.other_share()
        report = markdown_report(
            ctx,
            machine_info=machine_info,
            other_cpu=other_cpu,
            figures=figures,
            matrix=matrix,
            versions=versions,
            started=started,
            seconds=time.perf_counter() - t0,
        )
        raw = {
            "argv": args.argv,
            "started": started.isoformat(),
            "machine": dict(machine_info),
            "other_cpu_seconds": other_cpu[0],
            "versions": dict(versions),
            "env_packages": ctx.env_packages,
            "figures": [asdict(f) for f in figures],
            "samples": [asdict(s) for s in ctx.samples],
            "failures": ctx.failures,
            **ctx.raw,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    print(report)
    log(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0
