"""Operating a daemon: health during a drain, metrics, admin commands, logs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess
from support.projects import probe_project, setuptools_project

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service="buildd.v1.Buildd"), timeout=10)
        return int(answer.status)


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_health_turns_not_serving_while_draining(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon(["--grace", "60"])
    source = probe_project(tmp_path / "slow", tmp_path / "probe.log", hold=1.0)
    assert _health(process.address) == health_pb2.HealthCheckResponse.SERVING
    with Client(process.address, autostart=False) as client:
        session = client.open_session("drain")
        call = session.metadata(str(source))
        for event in call:
            if event.HasField("log") and "probe: get_requires_for_build_wheel starting" in (
                event.log.text
            ):
                break
        answer = client.shutdown()
        assert answer.active_calls == 1
        # Draining: health says so, new work is refused, the running call goes on.
        assert _health(process.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(RequestFailed) as refused:
            client.open_session("too-late")
        assert refused.value.status == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in refused.value.message
        assert b"Name: slow" in call.result().metadata
    assert process.stop() == 0


def test_metrics_change_when_work_happens(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    port = _free_port()
    process = make_daemon(["--metrics-address", f"127.0.0.1:{port}"])
    before = _metrics(port)
    assert before["buildd_sessions"] == 0
    assert before['buildd_environments{state="idle"}'] == 0
    with Client(process.address, autostart=False) as client:
        session = client.open_session("metrics")
        session.metadata(str(setuptools_project(tmp_path / "p"))).result()
        with pytest.raises(RequestFailed):
            session.metadata(str(tmp_path / "missing")).result()
        during = _metrics(port)
        assert during["buildd_sessions"] == 1
        assert during['buildd_environments{state="idle"}'] == 1
        assert during["buildd_leases_total"] == 1
        assert during['buildd_environment_creation_seconds_count{outcome="ok"}'] == 1
        ok_hooks = 'buildd_hook_duration_seconds_count{hook="%s",outcome="ok"}'
        assert during[ok_hooks % "get_requires_for_build_wheel"] == 1
        assert during[ok_hooks % "prepare_metadata_for_build_wheel"] == 1
        assert during['buildd_errors_total{code="NOT_FOUND"}'] == 1
        assert during["buildd_lease_wait_seconds_count"] == 1
        assert 'buildd_bytes_total{direction="uploaded"}' in during
        assert during["buildd_store_bytes"] > 0
        assert during['buildd_store_validation_failures_total{when="borrow"}'] == 0
        session.close()
        second = client.open_session("metrics-again")
        second.metadata(str(setuptools_project(tmp_path / "p"))).result()
        second.close()
    after = _metrics(port)
    assert after["buildd_sessions"] == 0
    # The store keeps the environment; the second session adopted it.
    assert after['buildd_environments{state="idle"}'] == 1
    assert after['buildd_store_adoptions_total{when="session"}'] == 1
    assert after['buildd_environment_creation_seconds_count{outcome="ok"}'] == 1


def test_health_and_shutdown_commands(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon(["--no-store"])
    with Client(process.address, autostart=False) as client:
        session = client.open_session("before-shutdown")
        session.metadata(str(probe_project(tmp_path / "p", tmp_path / "log"))).result()
    assert list((process.state_dir / "sessions").glob("*/envs/*"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "buildd_client", "--address", process.address, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert cli("health").returncode == 0
    stopped = cli("shutdown")
    assert stopped.returncode == 0, stopped.stderr
    # When the command returns, the daemon has cleaned up.
    assert not process.socket.exists()
    assert not list((process.state_dir / "sessions").glob("*/envs/*"))
    assert process.process is not None
    assert process.process.wait(timeout=60) == 0
    gone = cli("health")
    assert gone.returncode == 3


def test_logs_are_json_lines_bound_to_session_request_and_key(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    with Client(process.address, autostart=False) as client:
        session = client.open_session("logs")
        session.metadata(str(setuptools_project(tmp_path / "p"))).result()
        session.close()
    process.stop()
    events = [json.loads(line) for line in process.log().splitlines() if line.startswith("{")]
    assert events, process.log()
    started = [e for e in events if e["event"] == "request_started"]
    assert len(started) == 1
    assert started[0]["session"] == session.id[:8]
    assert started[0]["request"] and started[0]["key"]
    assert {"daemon_started", "session_opened", "session_ended", "daemon_stopped"} <= {
        e["event"] for e in events
    }


def test_status_reports_draining_flag(client: Client) -> None:
    status = client.status()
    assert status.daemon.draining is False
    assert status.daemon.installer in ("uv", "pip")
    assert isinstance(status, pb.StatusResponse)
