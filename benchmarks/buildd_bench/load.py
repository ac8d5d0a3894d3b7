"""Concurrent clients on one daemon: figures P4, and P4b with watches held open."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .context import Context
from .features import missing_watch
from .figure import Figure
from .settings import RUN_SCRIPT, log, tail, tool_environ
from .stats import fmt_ms, median, pctl


def p4_worker(address: str, session_id: str, src: str, calls: int) -> int:
    """One P4 client process: warm up, say ready, wait for go, make ``calls`` calls.

    With a metadata cache in the daemon every call asks for the hooks anyway
    (``no_cache``): P4 is the hooks' throughput, not the cache's; the worker
    counts the answers that still said ``cached``.
    """
    from buildd_client import Client

    errors: list[str] = []
    latencies: list[float] = []
    cached = 0
    with Client(address, autostart=False) as client:
        session = client.join_session(session_id)
        fresh: dict[str, Any] = {}
        if "no_cache" in inspect.signature(session.metadata).parameters:
            fresh["no_cache"] = True
        try:
            session.metadata(src, **fresh).result()
        except Exception as exc:
            errors.append(f"warm-up: {exc!r}")
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                result = session.metadata(src, **fresh).result()
                latencies.append(time.perf_counter() - t0)
                cached += bool(getattr(result, "cached", False))
            except Exception as exc:
                errors.append(repr(exc))
        end = time.perf_counter()
    print(
        json.dumps(
            {
                "start": start,
                "end": end,
                "latencies": latencies,
                "errors": errors,
                "cached": cached,
                "no_cache": bool(fresh),
            }
        )
    )
    return 0


@dataclass
class LoadRun:
    """One P4 load: every client's result and the daemon's CPU over the timed calls."""

    results: list[dict[str, Any]]
    daemon_cpu: float

    @property
    def latencies(self) -> list[float]:
        return [float(v) for r in self.results for v in r["latencies"]]

    @property
    def errors(self) -> list[str]:
        return [str(e) for r in self.results for e in r["errors"]]

    @property
    def cached(self) -> int:
        return sum(int(r.get("cached", 0)) for r in self.results)

    @property
    def no_cache(self) -> bool:
        return any(r.get("no_cache") for r in self.results)

    @property
    def window(self) -> float:
        ends = [float(r["end"]) for r in self.results]
        return max(ends) - min(float(r["start"]) for r in self.results)


def run_load(ctx: Context, tag: str = "p4") -> LoadRun:
    """``--p4-clients`` processes x ``--p4-calls`` metadata calls in one shared session."""
    clients, calls = ctx.args.p4_clients, ctx.args.p4_calls
    daemon = ctx.daemon
    with daemon.client() as client:
        session_id = client.open_session(f"buildd-bench/{tag}").id
    assignment = [ctx.projects[i % len(ctx.projects)] for i in range(clients)]
    sources = [ctx.ws.fresh_tree(p, copy=f"{tag}-{i:02d}") for i, p in enumerate(assignment)]
    workers: list[subprocess.Popen[str]] = []
    stderr_paths = [ctx.ws.log_file(f"{tag}-client-{i:02d}.log") for i in range(clients)]
    try:
        for i, src in enumerate(sources):
            with stderr_paths[i].open("w") as err:
                workers.append(
                    subprocess.Popen(
                        [
                            *(sys.executable, str(RUN_SCRIPT), "--p4-worker", daemon.address),
                            *(session_id, str(src), str(calls)),
                        ],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=tool_environ(),
                    )
                )
        log(f"{tag.upper()}: {clients} clients warming up (each one untimed call, concurrently)")
        for i, worker in enumerate(workers):
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"P4 client {i} did not start:\n{tail(stderr_paths[i])}")
        cpu_before = daemon.cpu_seconds()
        log(f"{tag.upper()}: go ({clients} x {calls} calls)")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for i, worker in enumerate(workers):
            out, _ = worker.communicate(timeout=3600)
            if worker.returncode != 0:
                raise RuntimeError(f"P4 client {i} failed:\n{tail(stderr_paths[i])}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu_after = daemon.cpu_seconds()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        with daemon.client() as client, contextlib.suppress(Exception):
            client.close_session(session_id)
    return LoadRun(results, cpu_after - cpu_before)


def figure_p4(ctx: Context) -> Figure:
    """16 concurrent client processes x 25 metadata calls in one shared session."""
    clients, calls = ctx.args.p4_clients, ctx.args.p4_calls
    cores = len(os.sched_getaffinity(0))
    assignment = [ctx.projects[i % len(ctx.projects)] for i in range(clients)]
    load = run_load(ctx)
    ctx.p4_load = load
    results = load.results
    window = load.window
    latencies = load.latencies
    errors = load.errors
    done = len(latencies)
    throughput = done / window
    # The CPU-bound limit: the cores divided by the CPU one fresh hook subprocess
    # needs, averaged over the calls actually made (each client's project).
    cpu_per_call = {p.id: median(ctx.hook_cost(p).process_cpu) for p in ctx.projects}
    mean_cpu = statistics.fmean(cpu_per_call[p.id] for p in assignment)
    limit = cores / mean_cpu
    share = throughput / limit
    daemon_cpu = load.daemon_cpu / max(done, 1)
    details = "\n".join(
        [
            f"{clients} client processes (client library, one channel each) in one shared "
            f"session, client i on a private copy of project i mod {len(ctx.projects)}; "
            f"each makes one untimed call, waits for all, then {calls} timed calls"
            + (
                ", every one asking the daemon to run the hooks even when its metadata cache "
                "holds the answer (`no_cache`), so that this is the hooks' throughput."
                if load.no_cache
                else "."
            ),
            "",
            "| measure | value |",
            "|---|---|",
            f"| calls completed / errors | {done} / {len(errors)} |",
            f"| answers from the cache | {load.cached} |",
            f"| window (first start to last end) | {window:.2f} s |",
            f"| throughput | {throughput:.2f} calls/s |",
            f"| latency median / p90 / max | {fmt_ms(median(latencies))} / "
            f"{fmt_ms(pctl(latencies, 0.9))} / {fmt_ms(max(latencies, default=math.nan))} |",
            "| CPU of one fresh hook subprocess (import + hook), per project | "
            + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu_per_call.items())
            + " |",
            f"| CPU-bound limit = {cores} cores / {mean_cpu * 1000:.0f} ms mean CPU per call "
            f"| {limit:.2f} calls/s |",
            f"| throughput / limit | {share:.2f} |",
            f"| daemon CPU per call (daemon + its hook and installer children) "
            f"| {daemon_cpu * 1000:.0f} ms |",
        ]
    )
    if errors:
        details += "\n\nFirst errors:\n\n" + "\n".join(f"    {e}" for e in errors[:5])
    ctx.raw["P4"] = {
        "results": results,
        "cores": cores,
        "cpu_per_call": cpu_per_call,
        "limit": limit,
        "daemon_cpu_per_call": daemon_cpu,
    }
    log(f"P4: {throughput:.2f} calls/s, limit {limit:.2f}, {len(errors)} errors")
    return Figure(
        "P4",
        f"{clients} concurrent clients x {calls} metadata calls",
        "no errors; throughput at least 0.8 of the CPU-bound limit",
        f"{len(errors)} errors; {throughput:.2f} calls/s = {share:.2f} of {limit:.2f}",
        not errors and share >= 0.8,
        details,
    )


class WatchHolder:
    """The process holding P4b's watches open (``run.py --watch-worker``)."""

    def __init__(self, ctx: Context, count: int, trees: int, sessions: int) -> None:
        project = next((p for p in ctx.projects if p.name == "tomli"), ctx.projects[0])
        self.project = project
        paths = [str(ctx.ws.fresh_tree(project, copy=f"p4b-watch-{i:03d}")) for i in range(trees)]
        spec = ctx.ws.root / "p4b-watches.json"
        spec.write_text(
            json.dumps({"sessions": sessions, "trees": paths, "watches": count}),
            encoding="utf-8",
        )
        self.stderr = ctx.ws.log_file("p4b-watches.log")
        with self.stderr.open("w") as err:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, str(RUN_SCRIPT), "--watch-worker"),
                    *(ctx.daemon.address, str(spec)),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=tool_environ(),
            )

    def ready(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line:
            raise RuntimeError(f"the watch holder did not start:\n{tail(self.stderr)}")
        return dict(json.loads(line))

    def stop(self) -> dict[str, Any]:
        out, _ = self.process.communicate("stop\n", timeout=600)
        if self.process.returncode != 0 or not out.strip():
            raise RuntimeError(f"the watch holder failed:\n{tail(self.stderr)}")
        return dict(json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def figure_p4b(ctx: Context) -> Figure:
    """The P4 load again, with many WatchMetadata streams held open meanwhile."""
    count, sessions = ctx.args.p4b_watches, ctx.args.p4b_watch_sessions
    trees = min(count, ctx.args.p4b_trees or count)
    figure = f"{count} concurrent `WatchMetadata` streams held open plus the P4 load"
    goal = "0 errors; P4's p90 no more than 1.2x without the watches"
    no_watch = missing_watch()
    if no_watch:
        return Figure.not_measured("P4b", figure, goal, no_watch)
    baseline = ctx.p4_load
    if baseline is None:
        log("P4b: the load without watches first (P4 did not run)")
        baseline = run_load(ctx, "p4b-base")
    log(f"P4b: opening {count} watches of {trees} trees in {sessions} sessions")
    holder = WatchHolder(ctx, count, trees, sessions)
    try:
        ready = holder.ready()
        log(f"P4b: {ready['ready']} watches ready in {ready['seconds']:.1f}s; the load again")
        loaded = run_load(ctx, "p4b")
        end = holder.stop()
    except Exception:
        holder.kill()
        raise
    watch_errors = list(ready["errors"]) + list(end["errors"])
    errors = loaded.errors + watch_errors
    for error in watch_errors[:5]:
        ctx.fail("P4b watch", error)
    if len(watch_errors) > 5:
        ctx.fail("P4b watch", f"... and {len(watch_errors) - 5} more (all in the .json)")
    p90_base, p90_loaded = pctl(baseline.latencies, 0.9), pctl(loaded.latencies, 0.9)
    ratio = p90_loaded / p90_base
    ctx.raw["P4b"] = {
        "baseline": baseline.results,
        "loaded": loaded.results,
        "watches": {"ready": ready, "end": end},
    }
    details = "\n".join(
        [
            f"{count} watches (`Session.watch_metadata`) on {trees} copies of "
            f"`{holder.project.id}` (each copy watched from {count // trees} session(s)), in "
            f"{sessions} sessions of one process, each awaited until its first event; then "
            "the P4 load (same clients, calls and projects) ran while the ones that opened "
            "stayed open, and each was checked to be still open at the end. Baseline: P4's "
            "own run"
            + (" in this report." if ctx.p4_load is baseline else " (made for P4b).")
            + f" This machine allows {inotify_instances()} inotify instances per user "
            "(`fs.inotify.max_user_instances`, shared by every process of the daemon's user).",
            "",
            "| measure | without watches | with watches |",
            "|---|---|---|",
            f"| calls / errors | {len(baseline.latencies)} / {len(baseline.errors)} "
            f"| {len(loaded.latencies)} / {len(loaded.errors)} |",
            f"| latency median | {fmt_ms(median(baseline.latencies))} "
            f"| {fmt_ms(median(loaded.latencies))} |",
            f"| latency p90 | {fmt_ms(p90_base)} | {fmt_ms(p90_loaded)} |",
            f"| throughput | {len(baseline.latencies) / baseline.window:.2f} calls/s "
            f"| {len(loaded.latencies) / loaded.window:.2f} calls/s |",
            f"| watches open / failed or ended early | | {ready['ready']} / {len(watch_errors)} |",
            f"| watch events during the load (none expected: no watched tree changed) | "
            f"| {end.get('events_during_load', 'n/a')} |",
        ]
    )
    log(f"P4b: p90 {fmt_ms(p90_loaded)} vs {fmt_ms(p90_base)}, {len(errors)} errors")
    return Figure(
        "P4b",
        figure,
        goal,
        f"{len(errors)} errors; p90 {fmt_ms(p90_loaded)} vs {fmt_ms(p90_base)} = {ratio:.2f}x",
        None if math.isnan(ratio) else not errors and ratio <= 1.2,
        details,
    )


def inotify_instances() -> str:
    try:
        return Path("/proc/sys/fs/inotify/max_user_instances").read_text().strip()
    except OSError:
        return "unknown"
