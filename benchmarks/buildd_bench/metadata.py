"""Warm metadata through the client library on an open channel: figures P2 and P2b."""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import PREPARE_METADATA, Context
from .features import missing_metadata_cache
from .figure import Figure
from .projects import Project
from .settings import log
from .stats import fmt_ms, median, pctl

if TYPE_CHECKING:
    from buildd_client import Session

# The files a change to which any metadata cache must notice, first found is edited.
EDITABLE_FILES = ("pyproject.toml", "setup.py", "setup.cfg")


@dataclass
class TimedCall:
    """One metadata call: its round trip, the hooks the daemon reported, cache hit."""

    seconds: float
    hooks: list[str] = field(default_factory=list)
    cached: bool | None = None  # None: the daemon has no metadata cache to ask


def timed_metadata(session: Session, src: Path) -> TimedCall:
    """``session.metadata(src)``, timed from the request to its result.

    The events are read as they come (as ``result()`` does anyway), to learn
    which hooks the daemon ran for this call (its HOOK_FINISHED phases).
    """
    from buildd.v1 import buildd_pb2 as pb

    start = time.perf_counter()
    call = session.metadata(src)
    hooks = [
        event.phase.hook
        for event in call
        if event.WhichOneof("kind") == "phase" and event.phase.kind == pb.PHASE_KIND_HOOK_FINISHED
    ]
    result = call.result()
    seconds = time.perf_counter() - start
    cached = bool(result.cached) if hasattr(result, "cached") else None
    return TimedCall(seconds, hooks, cached)


def edit_tree(tree: Path, n: int) -> Path:
    """Change a file every backend reads (a comment appended): the tree is no longer the same."""
    for name in EDITABLE_FILES:
        path = tree / name
        if path.is_file():
            with path.open("a", encoding="utf-8") as out:
                out.write(f"\n# buildd-bench edit {n}\n")
            return path
    raise RuntimeError(f"{tree} has none of {', '.join(EDITABLE_FILES)}")


def _cache_hits(calls: list[TimedCall]) -> str:
    if any(c.cached is None for c in calls):
        return "n/a"
    return f"{sum(1 for c in calls if c.cached)}/{len(calls)}"


def figure_p2(ctx: Context) -> Figure:
    """Warm metadata of an unchanged tree: the client library's round trip."""
    calls = ctx.args.p2_calls
    no_cache = missing_metadata_cache()
    lines = [
        f"{calls} calls of `session.metadata(src).result()` per project on one open channel, "
        "in the warm session, after one untimed call, on a tree nothing changes between "
        "calls. Round trip from the request to its result; cache hits as the daemon reports "
        "them (`MetadataResult.cached`)."
        + (f" Note: {no_cache}, so every call runs the hooks." if no_cache else ""),
        "",
        "| project | call median | p90 | cache hits | calls that ran a hook |",
        "|---|---|---|---|---|",
    ]
    medians: list[float] = []
    raw: dict[str, Any] = {}
    for project in ctx.projects:
        ctx.ensure_warm(project)
        src = ctx.ws.fresh_tree(project)
        with ctx.daemon.client() as client:
            session = client.join_session(ctx.warm_session())
            session.metadata(src).result()  # untimed: the tree as a warm IDE sees it
            timed = [timed_metadata(session, src) for _ in range(calls)]
        times = [c.seconds for c in timed]
        medians.append(median(times))
        with_hooks = sum(1 for c in timed if c.hooks)
        lines.append(
            f"| {project.id} | {fmt_ms(median(times))} | {fmt_ms(pctl(times, 0.9))} "
            f"| {_cache_hits(timed)} | {with_hooks}/{len(timed)} |"
        )
        raw[project.id] = [asdict(c) for c in timed]
        log(f"P2 {project.id}: call {fmt_ms(median(times))}, cache hits {_cache_hits(timed)}")
    ctx.raw["P2"] = raw
    worst = max(medians) if medians else math.nan
    return Figure(
        "P2",
        "warm metadata, unchanged tree, client library on an open channel: round trip "
        "(worst project's median)",
        "at most 5 ms at the median",
        fmt_ms(worst),
        None if math.isnan(worst) else worst <= 0.005,
        "\n".join(lines),
    )


def hooks_alone(ctx: Context, project: Project, hooks: list[str]) -> float:
    """The hooks' own cost: each one timed alone, backend imported, median, summed."""
    total = 0.0
    for hook in hooks:
        # Without a prepare hook the daemon builds a wheel; the probe does too.
        name = PREPARE_METADATA if hook in (PREPARE_METADATA, "build_wheel") else hook
        total += median(ctx.hook_cost(project, name).hook_seconds)
    return total


def figure_p2b(ctx: Context) -> Figure:
    """Warm metadata after a file changed, minus the hooks' own cost."""
    calls = ctx.args.p2_calls
    lines = [
        f"{calls} calls per project in the warm session, each right after (untimed) a comment "
        f"was appended to the first of {', '.join(EDITABLE_FILES)} in the tree, so no cache "
        "may answer. From each call's round trip the harness subtracts the own cost of the "
        "hooks the daemon reported running for it (its HOOK_FINISHED phases), each timed "
        f"alone in a fresh process of the same environment with the backend already "
        f"imported ({ctx.args.hook_runs} processes per hook, after one untimed, median).",
        "",
        "| project | call median | hooks run per call | hooks alone | overhead median | p90 "
        "| cache hits |",
        "|---|---|---|---|---|---|---|",
    ]
    overheads: list[float] = []
    raw: dict[str, Any] = {}
    for project in ctx.projects:
        ctx.ensure_warm(project)
        src = ctx.ws.fresh_tree(project)
        timed: list[TimedCall] = []
        with ctx.daemon.client() as client:
            session = client.join_session(ctx.warm_session())
            session.metadata(src).result()  # untimed
            for n in range(calls):
                edit_tree(src, n)
                timed.append(timed_metadata(session, src))
        # The hook probes run after the calls: they must not warm the tree for them.
        costs = [hooks_alone(ctx, project, c.hooks) for c in timed]
        over = [c.seconds - cost for c, cost in zip(timed, costs, strict=True)]
        overheads.append(median(over))
        # The hooks most calls ran (a call may differ, e.g. one that also installed).
        typical = Counter(tuple(c.hooks) for c in timed).most_common(1)[0][0] if timed else ()
        lines.append(
            f"| {project.id} | {fmt_ms(median([c.seconds for c in timed]))} "
            f"| {', '.join(typical) or 'none'} | {fmt_ms(median(costs))} "
            f"| {fmt_ms(median(over))} | {fmt_ms(pctl(over, 0.9))} | {_cache_hits(timed)} |"
        )
        raw[project.id] = {
            "calls": [asdict(c) for c in timed],
            "hooks_alone": costs,
            "hook_costs": {
                hook: asdict(cost)
                for (pid, hook), cost in ctx.hook_costs.items()
                if pid == project.id
            },
        }
        log(f"P2b {project.id}: overhead {fmt_ms(median(over))}")
    ctx.raw["P2b"] = raw
    worst = max(overheads) if overheads else math.nan
    return Figure(
        "P2b",
        "warm metadata after a file changed, minus the hooks' own cost (worst project's median)",
        "at most 15 ms at the median",
        fmt_ms(worst),
        None if math.isnan(worst) else worst <= 0.015,
        "\n".join(lines),
    )
