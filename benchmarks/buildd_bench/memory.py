"""Daemon memory: figures P5 (sessions) and P5b (store instances on disk)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from .context import Context
from .daemon import Daemon
from .features import missing_store
from .figure import Figure
from .settings import log
from .store import store_instances


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


# P5b's projects: an in-tree backend that only prepares metadata, and a
# requirement set that differs per key (every one installs six from the
# index; ``six>=0.N`` are different requirement sets, so different keys).
P5B_BACKEND = '''"""A minimal PEP 517 backend: metadata only (benchmarks, figure P5b)."""

import os


def get_requires_for_build_wheel(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "bench_store-1.0.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as out:
        out.write("Metadata-Version: 2.1\\nName: bench-store\\nVersion: 1.0\\n")
    return name
'''
P5B_PYPROJECT = """[build-system]
requires = ["six>=0.{key}"]
build-backend = "bench_store_backend"
backend-path = ["."]
"""


def p5b_tree(root: Path, key: int, slot: int) -> Path:
    tree = root / f"key-{key:03d}" / f"slot-{slot}"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "pyproject.toml").write_text(P5B_PYPROJECT.format(key=key), encoding="utf-8")
    (tree / "bench_store_backend.py").write_text(P5B_BACKEND, encoding="utf-8")
    return tree


def _fill(daemon: Daemon, trees: list[Path], errors: list[str]) -> None:
    """One session: prepare metadata of every tree in turn; the session stays open."""
    with daemon.client() as client:
        session = client.open_session("buildd-bench/p5b")
        for tree in trees:
            try:
                session.metadata(tree, quiet=True).result()
            except Exception as exc:
                errors.append(f"{tree}: {exc!r}")


def figure_p5b(ctx: Context) -> Figure:
    """Daemon RSS with keys x slots store instances on disk, made through the daemon."""
    keys, slots = ctx.args.p5b_keys, ctx.args.p5b_slots
    wanted = keys * slots
    figure = f"daemon RSS with {wanted} store instances on disk"
    goal = "at most 70 MiB"
    no_store = missing_store()
    if no_store:
        return Figure.not_measured("P5b", figure, goal, no_store)
    state = ctx.ws.root / "p5b-state"
    flags = ["--store-size", "1T", "--max-envs", str(wanted + 64)]
    daemon = ctx.start_daemon("p5b", extra_args=flags, state_dir=state)
    root = ctx.ws.root / "work" / "p5b"
    per_session = [[p5b_tree(root, k, s) for k in range(keys)] for s in range(slots)]
    errors: list[str] = []
    log(f"P5b: {slots} sessions at once, each preparing metadata of {keys} keys")
    start = time.perf_counter()
    threads = [
        threading.Thread(target=_fill, args=(daemon, trees, errors), daemon=True)
        for trees in per_session
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fill_seconds = time.perf_counter() - start
    # Closing returns every session's instances to the store.
    with daemon.client() as client:
        for session in client.status().sessions:
            client.close_session(session.session_id)
    time.sleep(1.0)
    made = len(store_instances(state))
    rss_filled = daemon.rss_kib()
    daemon.stop()
    restarted = ctx.start_daemon("p5b-restart", extra_args=flags, state_dir=state)
    time.sleep(1.0)
    rss_restart = restarted.rss_kib()
    with restarted.client() as client:
        client.status()
    rss_status = restarted.rss_kib()
    kept = len(store_instances(state))
    restarted.stop()
    if not ctx.args.keep:
        shutil.rmtree(state, ignore_errors=True)
    for error in errors[:10]:
        ctx.fail("P5b metadata call", error)
    worst = max(rss_filled, rss_restart, rss_status)
    details = "\n".join(
        [
            f"How the instances were made: {slots} session(s) of one principal, open at "
            f"the same time, each prepared metadata of {keys} projects whose "
            f"`[build-system].requires` differ (`six>=0.N`, N = 0..{keys - 1}: {keys} keys, "
            "each installing six from the index) with a metadata-only in-tree backend. "
            "Sessions of one principal share its store's idle instances, so a key gets a "
            "second slot only when two of its calls overlap: the default gives every "
            "instance a key of its own (`--p5b-slots 1`), so that the count is exact. Then "
            "every session was closed, returning its instances to the store. Instances "
            "counted on disk: the "
            "`<state>/envs/<principal>/<key-id>/<slot>` folders holding a virtualenv "
            "(`pyvenv.cfg`). The daemon ran with "
            f"`{' '.join(flags)}` so that no cap evicts them.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| instances on disk after the sessions closed | {made} of {wanted} |",
            f"| instances on disk after the restart | {kept} |",
            f"| time to make them | {fill_seconds:.0f} s |",
            f"| metadata calls that failed | {len(errors)} |",
            "| VmRSS of the daemon that made them, sessions closed "
            f"| {rss_filled / 1024:.1f} MiB |",
            f"| VmRSS of a fresh daemon on that state, 1 s after its first status call "
            f"| {rss_restart / 1024:.1f} MiB |",
            f"| ... after one more status call | {rss_status / 1024:.1f} MiB |",
        ]
    )
    ctx.raw["P5b"] = {
        "instances": made,
        "kept_after_restart": kept,
        "rss_filled_kib": rss_filled,
        "rss_restart_kib": rss_restart,
        "rss_status_kib": rss_status,
        "errors": errors,
    }
    log(f"P5b: {made} instances, RSS {rss_filled / 1024:.1f} / {rss_restart / 1024:.1f} MiB")
    return Figure(
        "P5b",
        figure,
        goal,
        f"{worst / 1024:.1f} MiB (the larger of the filling daemon and a restarted one); "
        f"{made} instances",
        made >= wanted and worst <= 70 * 1024,
        details,
    )
