"""Warm metadata through the client library on an open channel: figure P2."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

from .context import Context
from .figure import Figure
from .settings import log
from .stats import fmt_ms, median, pctl


def figure_p2(ctx: Context) -> Figure:
    """Warm metadata through the client library minus the hook's own cost."""
    calls = ctx.args.p2_calls
    lines = [
        f"{calls} calls of `session.metadata(src).result()` per project on one open channel, "
        "in the warm session, after one untimed call; the hook's own cost is "
        "`prepare_metadata_for_build_wheel` timed alone in a fresh process of the same "
        f"environment with the backend already imported ({ctx.args.hook_runs} processes, "
        "after one untimed).",
        "",
        "| project | client call median | p90 | hook alone median | backend import median "
        "| overhead (call − hook) |",
        "|---|---|---|---|---|---|",
    ]
    overheads: list[float] = []
    raw: dict[str, Any] = {}
    for project in ctx.projects:
        ctx.ensure_warm(project)
        src = ctx.ws.fresh_tree(project)
        with ctx.daemon.client() as client:
            session = client.join_session(ctx.warm_session())
            session.metadata(src).result()  # untimed: the tree as a warm IDE sees it
            times: list[float] = []
            for _ in range(calls):
                start = time.perf_counter()
                session.metadata(src).result()
                times.append(time.perf_counter() - start)
        cost = ctx.hook_cost(project)
        overhead = median(times) - median(cost.hook_seconds)
        overheads.append(overhead)
        note = "" if cost.has_hook else " (no prepare hook: build_wheel timed)"
        lines.append(
            f"| {project.id} | {fmt_ms(median(times))} | {fmt_ms(pctl(times, 0.9))} "
            f"| {fmt_ms(median(cost.hook_seconds))}{note} | {fmt_ms(median(cost.import_seconds))} "
            f"| {fmt_ms(overhead)} |"
        )
        raw[project.id] = {"calls": times, "hook": asdict(cost)}
        log(f"P2 {project.id}: call {fmt_ms(median(times))}, overhead {fmt_ms(overhead)}")
    ctx.raw["P2"] = raw
    worst = max(overheads) if overheads else math.nan
    return Figure(
        "P2",
        "warm metadata through the client library, minus the hook's own cost "
        "(worst project's median)",
        "at most 15 ms at the median",
        fmt_ms(worst),
        None if math.isnan(worst) else worst <= 0.015,
        "\n".join(lines),
    )
