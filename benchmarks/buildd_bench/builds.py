"""The wheel-build matrix: every tool on every project, interleaved; P1, P1b, P3, P3b."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .context import Context
from .daemon import Daemon
from .features import missing_store
from .figure import Figure
from .projects import Project
from .settings import log
from .stats import fmt_s, fmt_x, geomean, median
from .store import prune_store
from .tools import (
    COLD,
    NEWKEY,
    PIP,
    PYBUILD,
    TOOL_LABELS,
    UV,
    WARM,
    BuilddCold,
    BuilddNewKey,
    BuilddWarm,
    PipWheel,
    PyBuild,
    Sample,
    Tool,
    UvBuild,
    find_uv,
    run_tool,
)

BUILD_FIGURES = frozenset({"P1", "P1b", "P3", "P3b"})
# What ``buildd-client -v`` prints when the daemon makes a new environment.
CREATING_ENVIRONMENT = "creating environment"


def empty_store(daemon: Daemon) -> Callable[[], None]:
    """Before each P3b run: make sure no environment of any key survives on ``daemon``.

    With the store: ``buildd-client store prune``, then nothing may be left on
    disk. Without one, a session's environments die with it: check that no
    session holds any.
    """
    no_store = missing_store()

    def empty() -> None:
        if not no_store:
            prune_store(daemon)
            return
        with daemon.client() as client:
            status = client.status()
        held = [env.path for s in status.sessions for env in s.environments]
        if held:
            raise RuntimeError(f"{len(held)} environment(s) still held, e.g. {held[0]}")

    return empty


def created_environment(sample: Sample) -> bool | None:
    """Did this buildd run create an environment (its ``-v`` log says so)? None: no log."""
    try:
        text = Path(sample.log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return CREATING_ENVIRONMENT in text


class BuildMatrix:
    """Every tool on every project, interleaved run by run, with the medians."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.samples: list[Sample] = []
        # Per buildd tool: how many timed runs created an environment, of how many.
        self.creations: dict[str, tuple[int, int]] = {}

    def run(self) -> None:
        ctx = self.ctx
        daemon = ctx.daemon
        # P3b's daemon: nothing but those runs ever uses it, and its store is
        # emptied (untimed) before each of them.
        newkey_daemon = ctx.start_daemon("p3b")
        tools: list[Tool] = [
            BuilddWarm(daemon, ctx.warm_session()),
            BuilddCold(daemon),
            BuilddNewKey(newkey_daemon, empty_store(newkey_daemon)),
            UvBuild(find_uv()),
            PyBuild(),
            PipWheel(),
        ]
        # Warm every cache (uv's, pip's HTTP cache, the warm session) once, untimed.
        for project in ctx.projects:
            for tool in tools:
                log(f"warm-up: {TOOL_LABELS[tool.id]} on {project.id}")
                sample = run_tool(tool, ctx.ws, project, 0)
                if not sample.ok:
                    log(f"warm-up FAILED: {TOOL_LABELS[tool.id]} on {project.id}: {sample.error}")
                elif tool.id == WARM:
                    ctx.warmed.add(project.id)
        for round_ in range(1, ctx.args.rounds + 1):
            # Rotate the tool order every round: no tool always runs right after another.
            shift = (round_ - 1) % len(tools)
            order = tools[shift:] + tools[:shift]
            for project in ctx.projects:
                for tool in order:
                    sample = run_tool(tool, ctx.ws, project, round_)
                    self.samples.append(sample)
                    state = f"{sample.seconds:.3f}s" if sample.ok else "FAILED"
                    log(f"round {round_}/{ctx.args.rounds} {project.id:18} {tool.id:12} {state}")
                    if not sample.ok:
                        log(sample.error)
        ctx.samples.extend(self.samples)
        for tool_id in (COLD, NEWKEY):
            seen = [created_environment(s) for s in self.samples if s.tool == tool_id and s.ok]
            self.creations[tool_id] = (sum(1 for c in seen if c), len(seen))

    def times(self, tool: str, project: Project) -> list[float]:
        return [
            s.seconds for s in self.samples if s.tool == tool and s.project == project.id and s.ok
        ]

    def failures(self, tool: str, project: Project) -> int:
        return sum(
            1 for s in self.samples if s.tool == tool and s.project == project.id and not s.ok
        )

    def median(self, tool: str, project: Project) -> float:
        return median(self.times(tool, project))

    def ratios(self, slow: str, fast: str) -> list[float]:
        """Per project: median(slow) / median(fast); above 1 means ``fast`` is faster."""
        return [self.median(slow, p) / self.median(fast, p) for p in self.ctx.projects]

    def table(self) -> str:
        tools = list(TOOL_LABELS)
        head = ["project", "backend", *(TOOL_LABELS[t] for t in tools)]
        head += ["uv / warm", "build / warm", "pip / warm", "uv / new session", "uv / new key"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        columns: dict[str, list[float]] = {}
        for project in self.ctx.projects:
            cells = [project.id, project.backend]
            for tool in tools:
                value = fmt_s(self.median(tool, project))
                failed = self.failures(tool, project)
                cells.append(value + (f" ({failed} failed)" if failed else ""))
            for name, (slow, fast) in {
                "uv/warm": (UV, WARM),
                "build/warm": (PYBUILD, WARM),
                "pip/warm": (PIP, WARM),
                "uv/cold": (UV, COLD),
                "uv/newkey": (UV, NEWKEY),
            }.items():
                ratio = self.median(slow, project) / self.median(fast, project)
                columns.setdefault(name, []).append(ratio)
                cells.append(fmt_x(ratio))
            lines.append("| " + " | ".join(cells) + " |")
        geo = ["**geometric mean**", ""]
        geo += [fmt_s(geomean([self.median(t, p) for p in self.ctx.projects])) for t in tools]
        geo += [f"**{fmt_x(geomean(values))}**" for values in columns.values()]
        lines.append("| " + " | ".join(geo) + " |")
        return "\n".join(lines)

    def spread_table(self) -> str:
        tools = list(TOOL_LABELS)
        head = ["project", *(TOOL_LABELS[t] for t in tools)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for project in self.ctx.projects:
            cells = [project.id]
            for tool in tools:
                values = self.times(tool, project)
                cells.append(f"{min(values):.3f} – {max(values):.3f}" if values else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def wheel_check(self) -> str:
        """Do all tools produce the same wheel name and the same list of files?"""
        notes = []
        for project in self.ctx.projects:
            seen: dict[tuple[str, tuple[str, ...]], set[str]] = {}
            for s in self.samples:
                if s.project == project.id and s.ok:
                    seen.setdefault((s.wheel, tuple(s.wheel_files)), set()).add(s.tool)
            if len(seen) > 1:
                variants = "; ".join(
                    f"{', '.join(sorted(tools))}: {name} ({len(files)} files)"
                    for (name, files), tools in seen.items()
                )
                notes.append(f"- {project.id}: the tools' wheels differ: {variants}")
        if not notes:
            return "All tools produced the same wheel file name and the same list of files."
        return "\n".join(notes)

    def section(self) -> list[str]:
        """The report's wheel-build section: the medians, how they were taken, the spread."""
        return [
            "",
            f"## Wheel builds (P1, P1b, P3, P3b): median wall time in seconds, "
            f"{self.ctx.args.rounds} rounds",
            "",
            self.table(),
            "",
            "Ratios are median(other tool) / median(buildd) per project: above 1 means buildd "
            "is faster. The last row is the geometric mean over the projects. "
            "*buildd warm*: `buildd-client build --wheel` in one session warmed by an untimed "
            "first build; *buildd new session*: the same command (with `-v`, so the log shows "
            "whether an environment was created) as the first build of a session opened "
            "(untimed) just before, on the same daemon, whose store holds the key from the "
            "earlier sessions; *buildd new key*: the same on a second daemon whose store is "
            "emptied (untimed, `buildd-client store prune`, then checked on disk) before "
            "every run, so the key is always new to it.",
            "",
            "Every run is one whole process timed with `time.perf_counter()` from start to "
            "exit, in a fresh copy of the unpacked sdist (no `build/`, no `*.egg-info` left "
            "by anyone) writing to a fresh output folder. Tools run interleaved: round by "
            "round, project by project, the six tools in an order rotated every round. "
            "All tools use the same index, PyPI, with their configuration isolated "
            "(uv `--no-config`; pip and pypa/build with `PIP_CONFIG_FILE=/dev/null`). "
            "Network fetches are served by each tool's own cache: one untimed warm-up run "
            "of every tool on every project came first, so every tool ran with warm caches.",
            "",
            "Spread (min – max, seconds):",
            "",
            self.spread_table(),
            "",
            self.wheel_check(),
        ]


def figure_p1(matrix: BuildMatrix) -> Figure:
    ratio = geomean(matrix.ratios(UV, WARM))
    return Figure(
        "P1",
        "warm `buildd-client build --wheel` (whole CLI process) vs `uv build --wheel`, "
        "geometric mean of the per-project median ratios",
        "at least 4x faster",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 4.0,
    )


def figure_p1b(matrix: BuildMatrix) -> Figure:
    ratio = geomean(matrix.ratios(PYBUILD, WARM))
    return Figure(
        "P1b",
        "the same vs `python -m build --wheel`",
        "at least 12x faster",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 12.0,
    )


def _slower(matrix: BuildMatrix, ratios: list[float], goal: float) -> str:
    slower = [
        f"{p.id} ({fmt_x(r)})"
        for p, r in zip(matrix.ctx.projects, ratios, strict=True)
        if not r >= goal
    ]
    if slower:
        return f"Below {goal:.1f}x on: {', '.join(slower)}"
    return f"At least {goal:.1f}x on every project"


def _creations(matrix: BuildMatrix, tool: str) -> str:
    made, runs = matrix.creations.get(tool, (0, 0))
    return f"{made} of {runs} timed runs created an environment"


def figure_p3(matrix: BuildMatrix) -> Figure:
    figure = (
        "first `buildd-client build --wheel` in a new session, the store holding the key, "
        "vs `uv build --wheel` (uv time / buildd time, geometric mean)"
    )
    goal = "at least 2.0x faster"
    no_store = missing_store()
    if no_store:
        return Figure.not_measured("P3", figure, goal, no_store)
    ratios = matrix.ratios(UV, COLD)
    ratio = geomean(ratios)
    return Figure(
        "P3",
        figure,
        goal,
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 2.0,
        f"{_slower(matrix, ratios, 2.0)}; {_creations(matrix, COLD)} "
        "(0 means the store held the key every time).",
    )


def figure_p3b(matrix: BuildMatrix) -> Figure:
    ratios = matrix.ratios(UV, NEWKEY)
    ratio = geomean(ratios)
    no_store = missing_store()
    how = (
        "the daemon has no store, so every session starts without environments"
        if no_store
        else "the store emptied before every run"
    )
    return Figure(
        "P3b",
        "the same with the key new to the store (empty store) vs `uv build --wheel`",
        "at least 1.0x (no slower than uv)",
        fmt_x(ratio),
        None if math.isnan(ratio) else ratio >= 1.0,
        f"{_slower(matrix, ratios, 1.0)}; {how}; {_creations(matrix, NEWKEY)} (all of them must).",
    )
