"""A bounded stress test: many client processes, one daemon, evidence from a probe backend.

16 client processes (``support.stress_worker``, the client library in a real
process each) share 4 sessions, 4 to a session, and send seeded-random
metadata and wheel requests for 12 probe projects over 4 keys (wheels go to
the default ``<source>/dist``, so sessions publish the same file name into
the same folder at once); along the way they cancel requests, close sessions
under each other's feet, and give some requests deadlines too short to make.
A monitor thread samples the daemon's status, its environment folders on disk
and its memory meanwhile.

What must hold, from evidence rather than timing:

- no two hook calls ever ran in one environment instance at once (the probe
  records ``sys.prefix``, start and end of every call; a start log catches the
  calls killed mid-hook too, and nothing may start in an instance after a
  call in it was killed);
- every request ended within its deadline, by a result, a typed failure
  from the daemon, or our own cancel: no request with a generous deadline
  ran into it (that is what a deadlock would look like);
- the environment count never went above ``--max-envs`` nor above
  ``--max-envs-per-key`` for one (session, key), in status or on disk;
- after every session is closed, no environment folder is left, and the
  daemon's RSS is back within ``RSS_SLACK_KIB`` of where it was after a
  warm-up run of the same shape.

Size: ``BUILDD_STRESS_SCALE=N`` multiplies the requests per worker (default 1:
16 x 32 = 512 requests, 65 to 80 s on 2 cores); ``BUILDD_STRESS_SEED``
replays a run's sequence of requests (not its thread timing);
``BUILDD_STRESS_REPORT=FILE`` writes the figures as JSON. docs/reliability.md
holds the figures of recorded runs.

The two tests at the end replay, deterministically, the races behind the two
daemon bugs this work found: an ended session's folder left behind when one
of its instances was being evicted, and two publishes of one artifact name
sharing a temporary file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from buildd_client import Client
from buildd_server.artifacts import artifacts
from buildd_server.config import Config
from buildd_server.pool.pool import Pool
from buildd_server.service.service import BuildService
from buildd_server.service.sessions import Session, SessionRegistry
from support.projects import probe_project, read_probe_log
from support.reliability import (
    client_env,
    env_dirs,
    leftovers,
    poll_until,
    proc_status_kib,
    wait_until,
)

if TYPE_CHECKING:
    from support.daemon import DaemonProcess

    from .conftest import MakeDaemon


SCALE = float(os.environ.get("BUILDD_STRESS_SCALE", "1"))
SEED = int(os.environ.get("BUILDD_STRESS_SEED", "0")) or random.SystemRandom().randrange(1, 10**9)
WORKERS = 16
GROUP_SIZE = 4  # workers per session
REQUESTS_PER_WORKER = max(1, math.ceil(32 * SCALE))
WARMUP_REQUESTS_PER_WORKER = 2
# Static requirements from the test wheelhouse: four keys. The probe backend
# itself needs nothing installed.
KEYS: dict[str, list[str]] = {
    "bare": [],
    "flit": ["flit_core"],
    "wheel": ["wheel"],
    "packaging": ["packaging"],
}
SOURCES_PER_KEY = 3
MAX_ENVS_PER_KEY = 2
# Four sessions could want 4 keys x 2 instances each: the global cap bites.
MAX_ENVS = 24
# A generous deadline no request should come near, and a share of requests
# with deadlines too short to make, which must end by DEADLINE_EXCEEDED in time.
DEADLINE = 120.0
SHORT_DEADLINE = (0.05, 0.5)
# How much the daemon's RSS may have grown over the run, once everything ended.
RSS_SLACK_KIB = 6 * 1024
# Client-side allowance past a deadline for the stream to wind down.
DEADLINE_SLACK = 2.0

WORKER_CONFIG: dict[str, Any] = {
    "group_size": GROUP_SIZE,
    "metadata_share": 0.5,
    "short_deadline_share": 0.05,
    "short_deadline": SHORT_DEADLINE,
    "deadline": DEADLINE,
    "cancel_share": 0.1,
    "cancel_window": 0.5,
    "close_share": 0.015,
}


class Monitor(threading.Thread):
    """Samples status, environment folders on disk and RSS until stopped."""

    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(name="stress-monitor", daemon=True)
        self.daemon_process = daemon
        self.stop_event = threading.Event()
        self.samples = 0
        self.max_total = 0
        self.max_per_key = 0
        self.max_on_disk = 0
        self.max_rss_kib = 0
        self.max_threads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        with Client(self.daemon_process.address, autostart=False) as client:
            while not self.stop_event.wait(0.05):
                try:
                    self._sample(client)
                except Exception as exc:
                    self.errors.append(repr(exc))

    def _sample(self, client: Client) -> None:
        status = client.status()
        # The caps hold per (principal, key) in the store, per (session, key) without it.
        per_key = Counter(
            (env.principal, env.key_id) for row in status.store for env in row.environments
        )
        per_key.update(
            (session.session_id, env.key_id)
            for session in status.sessions
            for env in session.environments
            if not env.store_key_id
        )
        self.max_total = max(self.max_total, sum(per_key.values()))
        self.max_per_key = max(self.max_per_key, max(per_key.values(), default=0))
        self.max_on_disk = max(self.max_on_disk, len(env_dirs(self.daemon_process.state_dir)))
        pid = self.daemon_process.pid
        self.max_rss_kib = max(self.max_rss_kib, proc_status_kib(pid, "VmRSS"))
        self.max_threads = max(self.max_threads, proc_status_kib(pid, "Threads"))
        self.samples += 1


def _make_sources(root: Path, log: Path, start_log: Path) -> list[dict[str, str]]:
    sources = []
    holds = itertools.cycle([0.0, 0.02, 0.05])
    for key, requires in KEYS.items():
        for number in range(SOURCES_PER_KEY):
            path = probe_project(
                root / f"{key}-{number}",
                log,
                static_requires=requires,
                hold=next(holds),
                start_log=str(start_log),
            )
            sources.append({"path": str(path), "key": key})
    return sources


def _run_fleet(
    daemon: DaemonProcess, work: Path, sources: list[dict[str, str]], requests: int, seed: int
) -> list[dict[str, Any]]:
    """Run the 16 workers to the end; every session they used is closed afterwards."""
    for folder in ("results", "groups"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    config = dict(
        WORKER_CONFIG,
        address=daemon.address,
        seed=seed,
        requests=requests,
        sources=sources,
        results=str(work / "results"),
        groups=str(work / "groups"),
    )
    config_file = work / "config.json"
    config_file.write_text(json.dumps(config))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "support.stress_worker", str(config_file), str(index)],
            env=client_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(WORKERS)
    ]
    failed = []
    for index, worker in enumerate(workers):
        # Bounded: every request has a deadline, so a worker cannot run longer.
        output, _ = worker.communicate(timeout=requests * DEADLINE)
        if worker.returncode != 0:
            failed.append(f"worker {index} exited {worker.returncode}:\n{output[-3000:]}")
    assert not failed, "\n".join(failed)
    with Client(daemon.address, autostart=False) as client:
        for session in client.status().sessions:
            client.close_session(session.session_id)
        for group_file in (work / "groups").glob("group-*"):
            group_file.unlink()
    records = []
    for result in sorted((work / "results").glob("worker-*.jsonl")):
        records += [json.loads(line) for line in result.read_text().splitlines()]
        result.unlink()
    return records


def _overlaps(
    finished: list[dict[str, Any]], started: list[dict[str, Any]]
) -> tuple[int, int, int]:
    """(overlapping pairs, starts after a killed call, killed calls) per instance.

    Instances are told apart by the id in their marker, not by path: the store
    may put a new instance at the path of a discarded one.
    """
    by_prefix: dict[str, list[tuple[float, float]]] = {}
    for record in finished:
        by_prefix.setdefault(record["instance"], []).append((record["start"], record["end"]))
    overlapping = 0
    for calls in by_prefix.values():
        calls.sort()
        latest_end = -math.inf
        for start, end in calls:
            if start < latest_end:
                overlapping += 1
            latest_end = max(latest_end, end)
    # A call that started but never recorded its end was killed: its instance
    # must be discarded, so no call may start in that prefix afterwards.
    done = {(r["pid"], r["hook"]) for r in finished}
    starts: dict[str, list[float]] = {}
    for record in started:
        starts.setdefault(record["instance"], []).append(record["start"])
    killed = [r for r in started if (r["pid"], r["hook"]) not in done]
    after_kill = sum(1 for k in killed for start in starts[k["instance"]] if start > k["start"])
    return overlapping, after_kill, len(killed)


def _rss_settled(pid: int, ceiling_kib: int) -> bool:
    return proc_status_kib(pid, "VmRSS") <= ceiling_kib


@pytest.mark.integration
def test_stress(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    print(f"stress seed {SEED} (replay with BUILDD_STRESS_SEED={SEED}), scale {SCALE}")
    daemon = make_daemon(["--max-envs-per-key", str(MAX_ENVS_PER_KEY), "--max-envs", str(MAX_ENVS)])
    log, start_log = tmp_path / "probe.log", tmp_path / "starts.log"
    sources = _make_sources(tmp_path / "src", log, start_log)

    # Warm-up of the same shape: imports, gRPC threads, allocator arenas.
    warmup = _run_fleet(daemon, tmp_path / "warmup", sources, WARMUP_REQUESTS_PER_WORKER, SEED)
    # The warm-up's environments stay in the store: empty it, so the run starts cold.
    with Client(daemon.address, autostart=False) as client:
        wait_until(
            lambda: client.prune_store().environments_kept == 0, "the warm-up's leases to end"
        )
    wait_until(lambda: not env_dirs(daemon.state_dir), "the warm-up's environments to go")
    rss_before = proc_status_kib(daemon.pid, "VmRSS")

    monitor = Monitor(daemon)
    monitor.start()
    started = time.monotonic()
    try:
        records = _run_fleet(daemon, tmp_path / "run", sources, REQUESTS_PER_WORKER, SEED + 1)
    finally:
        monitor.stop_event.set()
        monitor.join()
    duration = time.monotonic() - started

    # Everything ended: nothing on disk, memory back where it was.
    wait_until(
        lambda: not leftovers(daemon.state_dir),
        "every session folder to go",
        30,
        explain=lambda: f"{leftovers(daemon.state_dir)[:20]}\n{daemon.log()[-5000:]}",
    )
    with Client(daemon.address, autostart=False) as client:
        assert list(client.status().sessions) == []
    # Freed memory may reach the kernel a moment after the last call: allow
    # it a bounded while to get under the ceiling, then judge.
    poll_until(lambda: _rss_settled(daemon.pid, rss_before + RSS_SLACK_KIB), 30)
    rss_after = proc_status_kib(daemon.pid, "VmRSS")

    outcomes = Counter(
        r["outcome"] if r["outcome"] != "error" else f"error {r['code']}" for r in records
    )
    finished, starts = read_probe_log(log), read_probe_log(start_log)
    overlapping, after_kill, killed = _overlaps(finished, starts)
    figures = {
        "seed": SEED,
        "scale": SCALE,
        "workers": WORKERS,
        "requests": len(records),
        "warmup_requests": len(warmup),
        "kinds": dict(Counter(r["kind"] for r in records)),
        "keys": len({r["key"] for r in records}),
        "outcomes": dict(outcomes),
        "cancels_requested": sum(1 for r in records if r["cancel_after"] is not None),
        "short_deadlines": sum(1 for r in records if r["short_deadline"]),
        "sessions_closed_mid_run": sum(1 for r in records if r["closed_session"]),
        "sessions": len({r["session"] for r in records}),
        "hook_calls_finished": len(finished),
        "hook_calls_started": len(starts),
        "hook_calls_killed": killed,
        "instances": len({r["instance"] for r in starts}),
        "overlapping_calls": overlapping,
        "starts_after_a_kill": after_kill,
        "max_envs_status": monitor.max_total,
        "max_envs_on_disk": monitor.max_on_disk,
        "max_envs_per_key_status": monitor.max_per_key,
        "caps": {"max_envs": MAX_ENVS, "max_envs_per_key": MAX_ENVS_PER_KEY},
        "status_samples": monitor.samples,
        "max_elapsed_long": max(
            (r["elapsed"] for r in records if not r["short_deadline"]), default=0.0
        ),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_peak_kib": monitor.max_rss_kib,
        "max_threads": monitor.max_threads,
        "duration_seconds": round(duration, 1),
    }
    print(json.dumps(figures, indent=1))
    report = os.environ.get("BUILDD_STRESS_REPORT")
    if report:
        Path(report).write_text(json.dumps(figures, indent=1) + "\n")

    assert not monitor.errors, monitor.errors[:5]
    assert len(records) == WORKERS * REQUESTS_PER_WORKER >= 500 * min(SCALE, 1)
    assert figures["keys"] >= 4
    # Rule 1 under load.
    assert overlapping == 0, figures
    assert after_kill == 0, figures
    # The caps, in status and on disk, at every sample.
    assert monitor.samples > 100
    assert monitor.max_total <= MAX_ENVS, figures
    assert monitor.max_on_disk <= MAX_ENVS, figures
    assert monitor.max_per_key <= MAX_ENVS_PER_KEY, figures
    # Deadlines: everything ended in time, and by something the daemon said.
    late = [r for r in records if r["elapsed"] > r["deadline"] + DEADLINE_SLACK]
    assert not late, late[:3]
    unexplained = [r for r in records if not _explained(r)]
    assert not unexplained, unexplained[:5]
    # Memory.
    assert rss_after - rss_before <= RSS_SLACK_KIB, figures
    # Wheels of all sessions went into each source's dist/ at once: every
    # publish completed or cleaned up after itself.
    for source in sources:
        root = Path(source["path"])
        wheel = f"{root.name.replace('-', '_')}-1.0-py3-none-any.whl"
        dist = root / "dist"
        if dist.exists():
            assert sorted(p.name for p in dist.iterdir()) == [wheel]


def _explained(record: dict[str, Any]) -> bool:
    """Whether a request ended in a way this test provoked or the contract allows."""
    outcome, code = record["outcome"], record.get("code")
    if outcome in ("result", "cancelled"):
        return True
    if code == "NOT_FOUND":
        # Its session was closed by a partner worker under it: the daemon says so.
        return bool(record["failure_event"]) and "session" in record["message"]
    if code == "DEADLINE_EXCEEDED":
        # Only a deadline too short to make may run out; never a generous one.
        return bool(record["short_deadline"])
    return False


class _BlockingFactory:
    """Destroys environments only when allowed: holds an eviction half-way."""

    def __init__(self) -> None:
        self.destroying = threading.Event()
        self.allow = threading.Event()

    def destroy(self, env: SimpleNamespace) -> None:
        self.destroying.set()
        assert self.allow.wait(30), "the test never let the destruction finish"
        shutil.rmtree(env.path)


def test_an_instance_evicted_while_its_session_ends_leaves_no_folder(tmp_path: Path) -> None:
    """What the stress test found, replayed deterministically.

    Session A's idle instance is evicted to make room for session B's
    creation; while B's thread deletes it, A is closed. A's end cannot remove
    A's folder (the instance is still there) and A has no request left to do
    it later: the destruction itself must.
    """
    state = tmp_path / "state"
    factory = _BlockingFactory()

    def on_end(session: Session) -> None:
        service.session_ended(session)

    def destroy(env: SimpleNamespace) -> None:
        service.destroy_environment(env)  # type: ignore[arg-type]

    registry = SessionRegistry(state / "sessions", 60.0, on_end)
    pool: Pool[str, Any] = Pool(
        max_per_key=1, max_total=1, destroy=destroy, validate=lambda env: True
    )
    config = Config(address="unix:///unused", state_dir=state)
    service = BuildService(config, registry, pool, factory, "uv")  # type: ignore[arg-type]

    def instance_of(session_id: str) -> SimpleNamespace:
        path = state / "sessions" / session_id / "envs" / "env"
        path.mkdir(parents=True)
        return SimpleNamespace(path=path, in_store=False)

    one, two = registry.open("a"), registry.open("b")
    pool.acquire(one.id, "key", lambda: instance_of(one.id), deadline=None).release()
    leases: list[Any] = []
    creator = threading.Thread(
        target=lambda: leases.append(
            pool.acquire(two.id, "key", lambda: instance_of(two.id), deadline=None)
        )
    )
    creator.start()
    assert factory.destroying.wait(30)
    registry.close(one.id)
    factory.allow.set()
    creator.join(30)
    assert leases, "session B got no instance"
    assert not one.directory.exists(), sorted(one.directory.rglob("*"))
    assert two.directory.exists()


def test_two_builds_publishing_one_name_into_one_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests (two sessions, say) build the same wheel into ``<source>/dist`` at once.

    Both must succeed, each reporting the digest of the file it wrote. The
    barrier holds both publishes between "my file is in place" and "hash it",
    the window in which a shared temporary name let one overwrite the other.
    """
    barrier = threading.Barrier(2, timeout=30)
    original = artifacts.sha256_of

    def meet_then_hash(path: Path) -> str:
        barrier.wait()
        return original(path)

    monkeypatch.setattr(artifacts, "sha256_of", meet_then_hash)
    outdir = tmp_path / "dist"
    outcomes: list[tuple[Path, int, str] | BaseException] = []

    def build(content: bytes) -> None:
        built = tmp_path / content.decode() / "demo-1.0-py3-none-any.whl"
        built.parent.mkdir()
        built.write_bytes(content)
        try:
            outcomes.append(artifacts.publish(built, outdir))
        except BaseException as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=build, args=(text,)) for text in (b"one", b"two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(isinstance(outcome, tuple) for outcome in outcomes), outcomes
    digests = {outcome[2] for outcome in outcomes if isinstance(outcome, tuple)}
    assert digests == {hashlib.sha256(b"one").hexdigest(), hashlib.sha256(b"two").hexdigest()}
    # The last rename wins; no temporary file is left behind.
    assert [p.name for p in outdir.iterdir()] == ["demo-1.0-py3-none-any.whl"]
