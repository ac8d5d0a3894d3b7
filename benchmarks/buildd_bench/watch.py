"""Metadata pushed by WatchMetadata: figure P7, and the watches P4b holds open."""

from __future__ import annotations

import json
import math
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import GET_REQUIRES, PREPARE_METADATA, Context
from .features import missing_watch
from .figure import Figure
from .metadata import hooks_alone
from .projects import Project
from .settings import log
from .stats import fmt_ms, median, pctl

if TYPE_CHECKING:
    from collections.abc import Iterable

    from buildd_client import Session
    from buildd_client.watch import Watch

# A WatchMetadata event that brings no news within this long is a failure.
EVENT_TIMEOUT = 120.0
# After an event, the tree is left alone this long before the next save, so
# that the watch's debounce never merges two saves.
SETTLE = 0.3

# `description = "..."` in pyproject.toml's [project] table (the first one).
DESCRIPTION = re.compile(r'^(description\s*=\s*)(["\'])(.*?)\2\s*$', re.MULTILINE)


class EventReader:
    """Reads a watch handle in a thread: (arrival time, event) pairs, then its end.

    ``next`` returns as soon as an event arrives, and raises as soon as the
    watch has ended (the daemon refused or closed it) or ``timeout`` passed.
    """

    _END = object()

    def __init__(self, handle: Iterable[Any]) -> None:
        self.handle = handle
        self.events: queue.Queue[tuple[float, Any]] = queue.Queue()
        self.ended: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.handle:
                self.events.put((time.perf_counter(), event))
        except BaseException as exc:
            self.ended = exc
        finally:
            self.done.set()
            self.events.put((time.perf_counter(), self._END))

    def next(self, timeout: float) -> tuple[float, Any]:
        try:
            arrived, event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"no WatchMetadata event within {timeout:.0f} s") from None
        if event is self._END:
            self.events.put((arrived, event))  # every later call sees the end too
            raise RuntimeError(f"the watch ended: {self.ended!r}") from self.ended
        return arrived, event

    def drain(self) -> int:
        """Take the events waiting now; how many (the end, if reached, stays)."""
        count = 0
        while True:
            try:
                arrived, event = self.events.get_nowait()
            except queue.Empty:
                return count
            if event is self._END:
                self.events.put((arrived, event))
                return count
            count += 1


def open_watch(session: Session, src: Path | str) -> Watch:
    """``session.watch_metadata(src)``: an iterable of WatchMetadataEvent with ``cancel()``."""
    return session.watch_metadata(src)


def event_metadata(event: Any) -> bytes | None:
    """The METADATA bytes of a metadata event; None for a failure event."""
    if event.WhichOneof("kind") != "metadata":
        return None
    return bytes(event.metadata.metadata)


def describe_edit(pyproject: Path, n: int) -> str:
    """Save pyproject.toml with a new [project] description; returns the new Summary."""
    text = pyproject.read_text(encoding="utf-8")
    table = text.find("[project]")
    match = DESCRIPTION.search(text, table) if table >= 0 else None
    if match is None:
        raise RuntimeError(f"{pyproject} has no static [project] description to edit")
    original = match.group(3).split(" (buildd-bench save ", 1)[0]
    summary = f"{original} (buildd-bench save {n})"
    new = text[: match.start()] + f"{match.group(1)}{match.group(2)}{summary}{match.group(2)}"
    new += text[match.end() :]
    # In place, as most editors save (truncate and write).
    with pyproject.open("w", encoding="utf-8") as out:
        out.write(new)
    return summary


@dataclass
class Save:
    seconds: float  # from starting to write pyproject.toml to the event's arrival
    daemon_latency: float  # the event's own latency_seconds (the daemon's view)
    daemon_hook_seconds: float
    changed_paths: list[str] = field(default_factory=list)


def _p7_project(ctx: Context, session: Session, project: Project) -> list[Save]:
    src = ctx.ws.fresh_tree(project)
    pyproject = src / "pyproject.toml"
    handle = open_watch(session, src)
    reader = EventReader(handle)
    saves: list[Save] = []
    try:
        _, first = reader.next(EVENT_TIMEOUT)
        if event_metadata(first) is None:
            raise RuntimeError(f"the watch's first event is a failure: {first}")
        time.sleep(SETTLE)
        reader.drain()
        for n in range(1, ctx.args.p7_saves + 1):
            start = time.perf_counter()
            summary = describe_edit(pyproject, n)
            wanted = f"Summary: {summary}".encode()
            while True:
                arrived, event = reader.next(EVENT_TIMEOUT)
                body = event_metadata(event)
                if body is not None and wanted in body:
                    break
            saves.append(
                Save(
                    arrived - start,
                    float(getattr(event, "latency_seconds", math.nan)),
                    float(getattr(event, "hook_seconds", math.nan)),
                    list(getattr(event, "changed_paths", [])),
                )
            )
            time.sleep(SETTLE)
            reader.drain()
    finally:
        handle.cancel()
        reader.done.wait(30)
    return saves


def figure_p7(ctx: Context) -> Figure:
    figure = (
        "from saving `pyproject.toml` to the pushed `WatchMetadata` event, minus the hooks' "
        "own cost (worst project's median)"
    )
    goal = "at most 150 ms at the median"
    no_watch = missing_watch()
    if no_watch:
        return Figure.not_measured("P7", figure, goal, no_watch)
    saves = ctx.args.p7_saves
    lines = [
        f"One watch per project (`Session.watch_metadata`, warm session); {saves} saves of "
        "`pyproject.toml`, each giving `[project].description` a new value (written in "
        f"place), {SETTLE:.1f} s apart after each event. Timed from the start of the write "
        "to the arrival of the event carrying the new Summary. Subtracted: the own cost of "
        f"`{GET_REQUIRES}` and `{PREPARE_METADATA}` (a changed tree runs both), each timed "
        "alone as for P2b. The daemon's own view of each event (`latency_seconds`, from "
        "seeing the change; `hook_seconds`) is shown beside.",
        "",
        "| project | save to event median | p90 | hooks alone | minus hooks median "
        "| daemon latency median | daemon hook seconds median |",
        "|---|---|---|---|---|---|---|",
    ]
    results: list[float] = []
    raw: dict[str, Any] = {}
    for project in ctx.projects:
        pyproject = ctx.ws.pristine[project.id] / "pyproject.toml"
        if not pyproject.is_file() or DESCRIPTION.search(pyproject.read_text("utf-8")) is None:
            lines.append(
                f"| {project.id} | not measured: no static [project] description |" + " |" * 5
            )
            continue
        ctx.ensure_warm(project)
        with ctx.daemon.client() as client:
            session = client.join_session(ctx.warm_session())
            try:
                timed = _p7_project(ctx, session, project)
            except Exception as exc:
                ctx.fail(f"P7 {project.id}", repr(exc))
                lines.append(f"| {project.id} | failed (see Failed runs) |" + " |" * 5)
                continue
        hooks = hooks_alone(ctx, project, [GET_REQUIRES, PREPARE_METADATA])
        seconds = [s.seconds for s in timed]
        net = median(seconds) - hooks
        results.append(net)
        lines.append(
            f"| {project.id} | {fmt_ms(median(seconds))} | {fmt_ms(pctl(seconds, 0.9))} "
            f"| {fmt_ms(hooks)} | {fmt_ms(net)} "
            f"| {fmt_ms(median([s.daemon_latency for s in timed]))} "
            f"| {fmt_ms(median([s.daemon_hook_seconds for s in timed]))} |"
        )
        raw[project.id] = {"saves": [s.__dict__ for s in timed], "hooks_alone": hooks}
        log(f"P7 {project.id}: save to event {fmt_ms(median(seconds))}, net {fmt_ms(net)}")
    ctx.raw["P7"] = raw
    if not results:
        return Figure.failed("P7", figure, goal, "no project could be measured")
    worst = max(results)
    return Figure(
        "P7",
        figure,
        goal,
        fmt_ms(worst),
        None if math.isnan(worst) else worst <= 0.150,
        "\n".join(lines),
    )


# ---------------------------------------------------------------- P4b watches --


def watch_plan(trees: int, watches: int, sessions: int) -> list[tuple[int, int]]:
    """(tree, session) of each watch: trees evenly used, a tree's watches in distinct sessions."""
    plan = []
    for tree in range(trees):
        for k in range(watches // trees + (1 if tree < watches % trees else 0)):
            plan.append((tree, (tree + k) % sessions))
    return plan


def watch_worker(address: str, spec_file: str) -> int:
    """Hold watches open: say ready once each sent its first event, stop on a line.

    ``spec_file`` is JSON: {"sessions": S, "trees": [paths], "watches": N}.
    The N watches are spread evenly over the trees, and the k-th watch of
    tree t is in session (t + k) mod S: the watches of one tree are in
    different sessions, and the sessions hold about N / S each. Prints one JSON line
    when ready (every watch sent its first event, failed, or the deadline
    passed) and one at the end.
    """
    from buildd_client import Client

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    trees: list[str] = spec["trees"]
    count = int(spec["watches"])
    errors: list[str] = []
    readers: list[tuple[str, EventReader, Any]] = []
    with Client(address, autostart=False) as client:
        sessions = [client.open_session("buildd-bench/p4b-watch") for _ in range(spec["sessions"])]
        start = time.perf_counter()
        for which, index in watch_plan(len(trees), count, len(sessions)):
            session, tree = sessions[index], trees[which]
            try:
                handle = open_watch(session, tree)
            except Exception as exc:
                errors.append(f"opening the watch of {tree}: {exc!r}")
                continue
            readers.append((tree, EventReader(handle), handle))
        deadline = time.monotonic() + EVENT_TIMEOUT * 5
        open_ = []
        for tree, reader, handle in readers:
            try:
                _, event = reader.next(deadline - time.monotonic())
            except Exception as exc:
                errors.append(f"{tree}: no first event: {exc}")
                continue
            if event_metadata(event) is None:
                errors.append(f"{tree}: first event is a failure: {event}")
            open_.append((tree, reader, handle))
        ready = time.perf_counter() - start
        print(json.dumps({"ready": len(open_), "seconds": ready, "errors": errors}), flush=True)
        sys.stdin.readline()
        late = [f"{tree}: ended early: {r.ended!r}" for tree, r, _ in open_ if r.done.is_set()]
        later = sum(r.drain() for _, r, _ in open_)
        for _, _, handle in readers:
            handle.cancel()
        for session in sessions:
            try:
                session.close()
            except Exception as exc:
                late.append(f"closing {session.id}: {exc!r}")
    print(json.dumps({"errors": late, "events_during_load": later}), flush=True)
    return 0
