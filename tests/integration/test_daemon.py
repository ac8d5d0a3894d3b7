"""The daemon process: state-dir lock, orphans, signals, address, health."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess, short_tempdir
from support.projects import probe_project, read_probe_log, setuptools_project

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]


def _env_dirs(state_dir: Path) -> list[Path]:
    return [p for p in (state_dir / "sessions").glob("*/envs/*") if p.is_dir()]


def _leftovers(state_dir: Path) -> list[Path]:
    sessions = state_dir / "sessions"
    return list(sessions.iterdir()) if sessions.exists() else []


def test_socket_is_private(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o600


def test_second_daemon_on_the_same_state_dir_refuses(
    make_daemon: MakeDaemon, wheelhouse: Path
) -> None:
    first = make_daemon()
    second = DaemonProcess(wheelhouse)
    second.state_dir = first.state_dir
    completed = subprocess.run(second.command(), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert str(first.state_dir) in completed.stderr
    assert "in use" in completed.stderr
    second.cleanup()


def test_address_in_use_is_refused(make_daemon: MakeDaemon, wheelhouse: Path) -> None:
    first = make_daemon()
    second = DaemonProcess(wheelhouse)
    second.address = first.address
    completed = subprocess.run(second.command(), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert str(first.socket) in completed.stderr
    second.cleanup()


def test_invalid_address_is_refused(wheelhouse: Path) -> None:
    process = DaemonProcess(wheelhouse)
    process.address = "not a valid address:::"
    completed = subprocess.run(process.command(), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "not a valid address:::" in completed.stderr
    process.cleanup()


def test_sigterm_finishes_cleanly_and_leaves_nothing(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    with Client(process.address, autostart=False) as client:
        session = client.open_session("sigterm")
        session.metadata(str(setuptools_project(tmp_path / "p"))).result()
        assert len(_env_dirs(process.state_dir)) == 1
    assert process.stop(signal.SIGTERM) == 0
    assert not process.socket.exists()
    assert _leftovers(process.state_dir) == []


def test_sigterm_lets_a_running_call_finish(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon(["--grace", "30"])
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "slow", log, hold=1.0)
    with Client(process.address, autostart=False) as client:
        session = client.open_session("drain")
        call = session.metadata(str(source))
        events = iter(call)
        # Wait until the first hook is running, then ask the daemon to stop.
        for event in events:
            if event.HasField("phase") and event.phase.hook:
                break
        os.kill(process.pid, signal.SIGTERM)
        result = call.result()
        assert b"Name: slow" in result.metadata
    assert process.stop() == 0
    assert [r["hook"] for r in read_probe_log(log)] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert _leftovers(process.state_dir) == []


def test_sigkill_then_restart_reclaims_orphans(
    make_daemon: MakeDaemon, wheelhouse: Path, tmp_path: Path
) -> None:
    process = make_daemon()
    with Client(process.address, autostart=False) as client:
        session = client.open_session("crash")
        session.metadata(str(setuptools_project(tmp_path / "p"))).result()
        old_id = session.id
    orphans = _env_dirs(process.state_dir)
    assert len(orphans) == 1
    process.stop(signal.SIGKILL)
    assert orphans[0].exists()

    again = make_daemon(root=process.root)
    assert not orphans[0].exists()
    with Client(again.address, autostart=False) as client:
        with pytest.raises(RequestFailed) as gone:
            client.join_session(old_id)
        assert gone.value.status == grpc.StatusCode.NOT_FOUND
        fresh = client.open_session("after-crash")
        fresh.metadata(str(setuptools_project(tmp_path / "q"))).result()
        fresh.close()


def test_health_and_reflection(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service="buildd.v1.Buildd"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert "buildd.v1.Buildd" in names


def test_unwritable_state_dir_is_refused(wheelhouse: Path) -> None:
    root = short_tempdir()
    process = DaemonProcess(wheelhouse, root=root)
    process.state_dir = root / "state"
    process.state_dir.write_text("a file where the folder should be")
    completed = subprocess.run(process.command(), capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert str(process.state_dir) in completed.stderr
    process.cleanup()


def test_restart_after_sigkill_stops_hooks_left_running(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    # Uncontained (--containment none): a hook then outlives a killed daemon,
    # and the next daemon's reclaim is what stops it. Contained hooks die
    # with the daemon (tests/security/test_escapes.py).
    process = make_daemon(["--containment", "none"])
    source = probe_project(tmp_path / "hang", tmp_path / "probe.log", hold=300)
    with Client(process.address, autostart=False) as client:
        session = client.open_session("orphan-hook")
        call = session.metadata(str(source))
        hook_pid = 0
        for event in call:
            if event.HasField("log") and "starting in" in event.log.text:
                hook_pid = int(event.log.text.rsplit(" ", 1)[1])
                break
        assert hook_pid
        process.stop(signal.SIGKILL)
        call.cancel()
    # The hook runs in its own process group, so it outlived the daemon...
    assert _alive(hook_pid)
    # ...until the next daemon on that state folder reclaims the orphans.
    make_daemon(["--containment", "none"], root=process.root)
    deadline = time.monotonic() + 10
    while _alive(hook_pid):
        assert time.monotonic() < deadline, f"hook {hook_pid} still runs"
        time.sleep(0.05)
    assert _leftovers(process.state_dir) == []


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a killed process that nobody reaped yet is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
