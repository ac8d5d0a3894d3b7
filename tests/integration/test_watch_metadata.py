"""WatchMetadata: the metadata first, then an event each time it changes, until the end.

Every wait is bounded: ``Watch.get(timeout)`` raises TimeoutError when the
daemon sends nothing, and nothing here sleeps in the hope that something
happened.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed, Session, Watch
from support.daemon import DaemonProcess
from support.metadata_cases import CASES, Case
from support.projects import flit_project, setuptools_project
from support.reliability import wait_until

WAIT = 120.0  # seconds: a first prepare may create an environment


def _metadata(watch: Watch, timeout: float = WAIT) -> pb.WatchMetadataEvent:
    event = watch.get(timeout)
    assert event.WhichOneof("kind") == "metadata", event
    return event


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_change_is_pushed(client: Client, tmp_path: Path, case: Case) -> None:
    if not case.available():
        pytest.skip("needs git")
    source = case.make(tmp_path / case.name)
    session = client.open_session(f"watch-{case.name}")
    with session.watch_metadata(source) as watch:
        first = _metadata(watch)
        assert first.sequence == 1
        assert case.before.encode() in first.metadata.metadata
        assert case.after.encode() not in first.metadata.metadata
        case.change(source)
        second = _metadata(watch)
        assert second.sequence == 2
        assert case.after.encode() in second.metadata.metadata
        assert second.changed_paths
        assert second.metadata.source_fingerprint != first.metadata.source_fingerprint
        # What the watch pushed is what a fresh hook run gives now.
        fresh = session.metadata(str(source), no_cache=True).result()
        assert fresh.metadata == second.metadata.metadata
    session.close()


def test_a_broken_pyproject_is_reported_and_the_watch_recovers(
    client: Client, tmp_path: Path
) -> None:
    source = flit_project(tmp_path / "broken")
    pyproject = source / "pyproject.toml"
    good = pyproject.read_text()
    session = client.open_session("watch-broken")
    with session.watch_metadata(source) as watch:
        first = _metadata(watch)
        pyproject.write_text(good.replace("[project]", "[project"))
        failed = watch.get(WAIT)
        assert failed.WhichOneof("kind") == "failure"
        assert failed.failure.kind == pb.FAILURE_KIND_INVALID_PROJECT
        assert str(pyproject) in failed.failure.message
        assert "pyproject.toml" in failed.changed_paths
        pyproject.write_text(good)
        # The same metadata as before the failure, sent again: the client
        # must learn that the project is readable again.
        again = _metadata(watch)
        assert again.metadata.metadata == first.metadata.metadata
        assert again.sequence == failed.sequence + 1
    session.close()


def test_unchanged_metadata_sends_nothing(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "quiet")
    session = client.open_session("watch-quiet")
    with session.watch_metadata(source) as watch:
        first = _metadata(watch)
        # Rewritten with the same bytes, and outputs that do not count: no event...
        (source / "pyproject.toml").write_text((source / "pyproject.toml").read_text())
        (source / "build").mkdir(exist_ok=True)
        (source / "build" / "junk.txt").write_text("x")
        (source / "demo_setuptools" / "__init__.py").write_text("VERSION = '1.0'  # same\n")
        # ...then a change that shows: it must be the very next event.
        pyproject = source / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('"1.0"', '"1.5"'))
        second = _metadata(watch)
        assert second.sequence == first.sequence + 1
        assert b"Version: 1.5" in second.metadata.metadata
    session.close()


def test_two_sessions_watching_one_tree_each_get_their_events(
    client: Client, tmp_path: Path
) -> None:
    source = flit_project(tmp_path / "shared")
    one, two = client.open_session("watch-one"), client.open_session("watch-two")
    with one.watch_metadata(source) as first, two.watch_metadata(source) as second:
        assert _metadata(first).sequence == 1
        assert _metadata(second).sequence == 1
        status = client.status()
        assert status.daemon.watched_trees >= 1
        by_id = {s.session_id: s for s in status.sessions}
        assert by_id[one.id].watches == 1
        assert by_id[two.id].watches == 1
        pyproject = source / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('"4.0"', '"4.2"'))
        for watch in (first, second):
            event = _metadata(watch)
            assert event.sequence == 2
            assert b"Version: 4.2" in event.metadata.metadata
        # Each in its own session's environment.
        paths = {_metadata_path(s, source) for s in (one, two)}
        assert len(paths) == 2
    one.close()
    two.close()


def _metadata_path(session: Session, source: Path) -> str:
    return session.metadata(str(source)).result().dist_info_path


def test_closing_the_session_ends_its_watches(client: Client, tmp_path: Path) -> None:
    source = flit_project(tmp_path / "closing")
    session = client.open_session("watch-close")
    watch = session.watch_metadata(source)
    _metadata(watch)
    session.close()
    with pytest.raises(RequestFailed) as ended:
        watch.get(WAIT)
    assert ended.value.status == grpc.StatusCode.NOT_FOUND


def test_watches_per_session_are_capped(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon(["--max-watches-per-session", "2"])
    source = flit_project(tmp_path / "capped")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("watch-cap")
        held = [session.watch_metadata(source) for _ in range(2)]
        for watch in held:
            _metadata(watch)
        refused = session.watch_metadata(source)
        with pytest.raises(RequestFailed) as full:
            refused.get(WAIT)
        assert full.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watches-per-session" in full.value.message
        # Another session has its own count.
        other = client.open_session("watch-cap-other")
        with other.watch_metadata(source) as watch:
            _metadata(watch)
        for watch in held:
            watch.cancel()


@pytest.mark.parametrize(
    ("where", "kind"),
    [("sdist", pb.FAILURE_KIND_INVALID_REQUEST), ("missing", pb.FAILURE_KIND_SOURCE_NOT_FOUND)],
)
def test_what_cannot_be_watched_is_refused(
    client: Client, tmp_path: Path, where: str, kind: int
) -> None:
    target = tmp_path / "x.tar.gz"
    if where == "sdist":
        target.write_bytes(b"not really")
    session = client.open_session("watch-refused")
    with pytest.raises(RequestFailed) as refused:
        session.watch_metadata(target).get(WAIT)
    assert refused.value.kind == kind
    session.close()


def _threads_and_inotify(pid: int) -> tuple[int, int]:
    threads = len(os.listdir(f"/proc/{pid}/task"))
    inotify = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                inotify += 1
        except OSError:
            continue
    return threads, inotify


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_no_thread_or_inotify_handle_outlives_its_watches(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    sources = [flit_project(tmp_path / f"p{i}") for i in range(4)]
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("watch-leak")

        def batch() -> None:
            watches = [session.watch_metadata(source) for source in sources]
            for watch in watches:
                _metadata(watch)
            assert _threads_and_inotify(daemon.pid)[1] >= len(sources)
            for watch in watches:
                watch.cancel()
            wait_until(lambda: client.status().daemon.watched_trees == 0, "the watches to end")

        # Warm: environments exist, the cache answers, the server's own
        # threads for this many concurrent calls are started.
        batch()
        wait_until(lambda: _threads_and_inotify(daemon.pid)[1] == 0, "no inotify handle")
        threads_before = _threads_and_inotify(daemon.pid)[0]
        for _ in range(25):  # 100 watches
            batch()

        def settled() -> bool:
            threads, inotify = _threads_and_inotify(daemon.pid)
            return inotify == 0 and threads <= threads_before

        wait_until(
            settled,
            f"threads ({threads_before} before) and inotify handles to go: "
            f"{_threads_and_inotify(daemon.pid)}",
        )
        assert client.status(session.id).sessions[0].watches == 0
        session.close()


def test_the_cli_prints_each_new_version(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = flit_project(tmp_path / "cli")
    lines: queue.Queue[str] = queue.Queue()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "buildd_client",
            "--address",
            daemon.address,
            "metadata",
            "--watch",
            "--json",
            str(source),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    out = process.stdout
    reader = threading.Thread(target=lambda: [lines.put(line) for line in out])
    reader.start()
    try:
        first = json.loads(lines.get(timeout=WAIT))
        assert first["sequence"] == 1
        assert first["metadata"]["version"] == "4.0"
        pyproject = source / "pyproject.toml"
        pyproject.write_text(pyproject.read_text().replace('"4.0"', '"4.3"'))
        second = json.loads(lines.get(timeout=WAIT))
        assert second["metadata"]["version"] == "4.3"
        assert second["changed"] == ["pyproject.toml"]
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
        reader.join(timeout=60)
    assert code == 130


def test_watches_per_principal_are_capped(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon(["--max-watches-per-principal", "2"])
    source = flit_project(tmp_path / "principal")
    with Client(daemon.address, autostart=False) as client:
        one, two = client.open_session("cap-one"), client.open_session("cap-two")
        held = [one.watch_metadata(source), two.watch_metadata(source)]
        for watch in held:
            _metadata(watch)
        with pytest.raises(RequestFailed) as full:
            one.watch_metadata(source).get(WAIT)
        assert full.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watches-per-principal" in full.value.message
        held[0].cancel()
        # A slot is free again once the daemon saw the cancel.
        wait_until(lambda: client.status(one.id).sessions[0].watches == 0, "the cancel")
        with two.watch_metadata(source) as again:
            _metadata(again)
        held[1].cancel()


def test_a_drain_ends_the_watches(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = flit_project(tmp_path / "drain")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("watch-drain")
        watch = session.watch_metadata(source)
        _metadata(watch)
        client.shutdown(grace=5.0)
        with pytest.raises(RequestFailed) as ended:
            watch.get(WAIT)
        assert ended.value.status == grpc.StatusCode.UNAVAILABLE
    assert daemon.process is not None
    assert daemon.process.wait(timeout=60) == 0
