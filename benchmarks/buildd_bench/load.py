"""Concurrent clients on one daemon: figure P4."""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

from .context import Context
from .figure import Figure
from .settings import RUN_SCRIPT, log, tail, tool_environ
from .stats import fmt_ms, median, pctl


def p4_worker(address: str, session_id: str, src: str, calls: int) -> int:
    """One P4 client process: warm up, say ready, wait for go, make ``calls`` calls."""
    from buildd_client import Client

    errors: list[str] = []
    latencies: list[float] = []
    with Client(address, autostart=False) as client:
        session = client.join_session(session_id)
        try:
            session.metadata(src).result()
        except Exception as exc:
            errors.append(f"warm-up: {exc!r}")
        print("ready", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                session.metadata(src).result()
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:
                errors.append(repr(exc))
        end = time.perf_counter()
    print(json.dumps({"start": start, "end": end, "latencies": latencies, "errors": errors}))
    return 0


def figure_p4(ctx: Context) -> Figure:
    """16 concurrent client processes x 25 metadata calls in one shared session."""
    clients, calls = ctx.args.p4_clients, ctx.args.p4_calls
    cores = len(os.sched_getaffinity(0))
    daemon = ctx.daemon
    with daemon.client() as client:
        session_id = client.open_session("buildd-bench/p4").id
    assignment = [ctx.projects[i % len(ctx.projects)] for i in range(clients)]
    sources = [ctx.ws.fresh_tree(p, copy=f"p4-{i:02d}") for i, p in enumerate(assignment)]
    workers: list[subprocess.Popen[str]] = []
    stderr_paths = [ctx.ws.log_file(f"p4-client-{i:02d}.log") for i in range(clients)]
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
        log(f"P4: {clients} clients warming up (each one untimed call, concurrently)")
        for i, worker in enumerate(workers):
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"P4 client {i} did not start:\n{tail(stderr_paths[i])}")
        cpu_before = daemon.cpu_seconds()
        log(f"P4: go ({clients} x {calls} calls)")
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
    window = max(r["end"] for r in results) - min(r["start"] for r in results)
    latencies = [v for r in results for v in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    done = len(latencies)
    throughput = done / window
    # The CPU-bound limit: the cores divided by the CPU one fresh hook subprocess
    # needs, averaged over the calls actually made (each client's project).
    cpu_per_call = {p.id: median(ctx.hook_cost(p).process_cpu) for p in ctx.projects}
    mean_cpu = statistics.fmean(cpu_per_call[p.id] for p in assignment)
    limit = cores / mean_cpu
    share = throughput / limit
    daemon_cpu = (cpu_after - cpu_before) / max(done, 1)
    details = "\n".join(
        [
            f"{clients} client processes (client library, one channel each) in one shared "
            f"session, client i on a private copy of project i mod {len(ctx.projects)}; "
            f"each makes one untimed call, waits for all, then {calls} timed calls.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| calls completed / errors | {done} / {len(errors)} |",
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
