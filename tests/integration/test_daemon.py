"""The daemon process: state-dir lock, orphans, signals, address, health."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess, short_tempdir
from support.projects import probe_project, read_probe_log, setuptools_project

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]


def _env_dirs(state_dir: Path) -> list[Path]:
    """Session environments (--no-store) and store instances."""
    found = [p for p in (state_dir / "sessions").glob("*/envs/*") if p.is_dir()]
    return found + [p for p in (state_dir / "envs").glob("*/*/*") if p.name.isdigit()]


def _running_from(folder: Path) -> list[int]:
    """Pids of processes whose command line names something under ``folder``."""
    marker = os.fsencode(str(folder)) + b"/"
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes() and _alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


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


@pytest.mark.parametrize("store", [True, False])
def test_sigterm_finishes_cleanly_and_leaves_nothing_running(
    make_daemon: MakeDaemon, tmp_path: Path, store: bool
) -> None:
    process = make_daemon([] if store else ["--no-store"])
    with Client(process.address, autostart=False) as client:
        session = client.open_session("sigterm")
        # Twice: the second call runs in the environment's fork server.
        for _ in range(2):
            session.metadata(str(setuptools_project(tmp_path / "p"))).result()
        [env] = _env_dirs(process.state_dir)
        assert _running_from(env), "no fork server runs from the environment"
    assert process.stop(signal.SIGTERM) == 0
    assert not process.socket.exists()
    assert _leftovers(process.state_dir) == []
    # The store keeps the instance, complete; nothing runs from it any more.
    assert _env_dirs(process.state_dir) == ([env] if store else [])
    assert (env / "buildd-env.json").is_file() == store
    assert not (env / "buildd-lease").exists()
    assert _running_from(process.state_dir) == []


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
    # One SIGTERM only: the daemon exits by itself once the call is done.
    assert process.process is not None
    assert process.process.wait(timeout=60) == 0
    assert [r["hook"] for r in read_probe_log(log)] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert _leftovers(process.state_dir) == []


def test_more_sigterms_during_the_drain_and_the_exit_change_nothing(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    # A supervisor may repeat SIGTERM while the daemon drains (systemd,
    # Kubernetes, an impatient operator): each one after the first is a no-op,
    # up to the very end of the process, and the exit stays 0.
    process = make_daemon(["--grace", "30"])
    source = probe_project(tmp_path / "slow", tmp_path / "probe.log", hold=1.0)
    assert process.process is not None
    child = process.process
    with Client(process.address, autostart=False) as client:
        call = client.open_session("storm").metadata(str(source))
        for event in call:
            if event.HasField("phase") and event.phase.hook:
                break
        child.send_signal(signal.SIGTERM)
        stop = threading.Event()

        def storm() -> None:
            # Bounded in count and time; send_signal does nothing once reaped.
            for _ in range(20_000):
                if stop.is_set() or child.poll() is not None:
                    return
                child.send_signal(signal.SIGTERM)
                time.sleep(0.002)

        sender = threading.Thread(target=storm)
        sender.start()
        try:
            assert b"Name: slow" in call.result().metadata
            code = child.wait(timeout=60)
        finally:
            stop.set()
            sender.join(timeout=60)
    assert code == 0
    assert _leftovers(process.state_dir) == []


def test_sigkill_then_restart_reclaims_orphans_and_keeps_the_store(
    make_daemon: MakeDaemon, wheelhouse: Path, tmp_path: Path
) -> None:
    process = make_daemon()
    source = setuptools_project(tmp_path / "p")
    with Client(process.address, autostart=False) as client:
        session = client.open_session("crash")
        session.metadata(str(source)).result()
        old_id = session.id
        (work,) = (process.state_dir / "sessions").iterdir()
    [stored] = _env_dirs(process.state_dir)
    process.stop(signal.SIGKILL)

    again = make_daemon(root=process.root)
    # The session's own folder is reclaimed; the complete store instance stays.
    assert not work.exists()
    assert _env_dirs(process.state_dir) == [stored]
    with Client(again.address, autostart=False) as client:
        with pytest.raises(RequestFailed) as gone:
            client.join_session(old_id)
        assert gone.value.status == grpc.StatusCode.NOT_FOUND
        fresh = client.open_session("after-crash")
        events = list(fresh.metadata(str(source)))
        adopted = [e.phase for e in events if e.phase.kind == pb.PHASE_KIND_ENVIRONMENT_ADOPTED]
        assert [a.environment_path for a in adopted] == [str(stored)]
        fresh.close()


def test_sigkill_then_restart_without_the_store_reclaims_everything(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon(["--no-store"])
    with Client(process.address, autostart=False) as client:
        session = client.open_session("crash")
        session.metadata(str(setuptools_project(tmp_path / "p"))).result()
    orphans = _env_dirs(process.state_dir)
    assert len(orphans) == 1
    process.stop(signal.SIGKILL)
    assert orphans[0].exists()
    make_daemon(["--no-store"], root=process.root)
    assert not orphans[0].exists()


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
    leased = _env_dirs(process.state_dir)
    assert len(leased) == 1 and (leased[0] / "buildd-lease").exists()
    # ...until the next daemon on that state folder reclaims the orphans.
    make_daemon(["--containment", "none"], root=process.root)
    deadline = time.monotonic() + 10
    while _alive(hook_pid):
        assert time.monotonic() < deadline, f"hook {hook_pid} still runs"
        time.sleep(0.05)
    assert _leftovers(process.state_dir) == []
    # Leased when the daemon died: its state is unknown, so it is not kept.
    assert _env_dirs(process.state_dir) == []


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a killed process that nobody reaped yet is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
