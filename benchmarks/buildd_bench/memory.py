"""Daemon memory: figure P5."""

from __future__ import annotations

import time

from .context import Context
from .daemon import Daemon
from .figure import Figure
from .settings import log


def figure_p5(ctx: Context) -> Figure:
    """A fresh daemon's idle RSS, and its growth over opened-and-closed sessions."""
    count = ctx.args.p5_sessions
    daemon = Daemon(ctx.ws.root, name="p5")
    log(f"P5: starting a fresh daemon at {daemon.address}")
    daemon.start()
    try:
        time.sleep(1.0)
        idle = daemon.rss_kib()
        first = min(10, count)
        after_first = idle
        with daemon.client() as client:
            start = time.perf_counter()
            for i in range(count):
                session = client.open_session("buildd-bench/p5")
                session.close()
                if i + 1 == first:
                    time.sleep(0.5)
                    after_first = daemon.rss_kib()
            seconds = time.perf_counter() - start
        time.sleep(1.0)
        after = daemon.rss_kib()
    finally:
        daemon.stop()
    growth = after - idle
    details = "\n".join(
        [
            "VmRSS of the `buildd-server` process (/proc/PID/status), a fresh daemon started "
            "for this figure; sessions opened and closed one after another through one "
            "client channel.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| idle, 1 s after it answered its first status call | {idle / 1024:.1f} MiB |",
            f"| after the first {first} sessions | {after_first / 1024:.1f} MiB |",
            f"| after {count} sessions | {after / 1024:.1f} MiB |",
            f"| growth over idle | {growth / 1024:.2f} MiB |",
            f"| growth after the first {first} | {(after - after_first) / 1024:.2f} MiB |",
            f"| open + close rate | {count / seconds:.0f} sessions/s |",
        ]
    )
    ctx.raw["P5"] = {"idle_kib": idle, "after_first_kib": after_first, "after_kib": after}
    log(f"P5: idle {idle / 1024:.1f} MiB, growth {growth / 1024:.2f} MiB")
    return Figure(
        "P5",
        f"idle daemon RSS; growth after {count} sessions opened and closed",
        "at most 60 MiB; at most 5 MiB",
        f"{idle / 1024:.1f} MiB; +{growth / 1024:.2f} MiB",
        idle <= 60 * 1024 and growth <= 5 * 1024,
        details,
    )
