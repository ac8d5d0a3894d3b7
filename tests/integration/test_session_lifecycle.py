"""Sessions over the wire: join, keep-alive, expiry, phases, interpreters, installers."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.daemon import DaemonProcess
from support.projects import probe_project, read_probe_log, setuptools_project
from support.reliability import wait_until

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]


def test_a_session_is_joined_by_id_from_another_client(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    source = setuptools_project(tmp_path / "p")
    with Client(daemon.address, autostart=False) as first:
        session = first.open_session("join-a")
        session.metadata(str(source)).result()
        # The instance may come from the store with hook calls of earlier sessions.
        [before] = first.status(session.id).sessions[0].environments
    with Client(daemon.address, autostart=False) as second:
        joined = second.join_session(session.id)
        joined.metadata(str(source), no_cache=True).result()
        [env] = second.status(session.id).sessions[0].environments
        assert env.id == before.id
        assert env.hook_calls == before.hook_calls + 2
        joined.close()


def test_idle_session_expires_and_without_the_store_its_environments_go(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon(["--session-ttl", "1", "--no-store"])
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "p", log)
    with Client(process.address, autostart=False) as client:
        held = client.open_session("held")
        with held.keepalive():
            held.metadata(str(source)).result()
            idle = client.open_session("idle")
            idle.metadata(str(source)).result()
            idle_env = Path(read_probe_log(log)[-1]["prefix"])
            held_env = Path(read_probe_log(log)[0]["prefix"])
            wait_until(lambda: not idle_env.exists(), "the idle session's environment to go")
            with pytest.raises(RequestFailed) as gone:
                client.join_session(idle.id)
            assert gone.value.status == grpc.StatusCode.NOT_FOUND
            # The kept-alive session outlived several TTLs and still works.
            assert held_env.exists()
            # Past the cache: the hooks must run, in the session's own environment.
            held.metadata(str(source), no_cache=True).result()
            assert read_probe_log(log)[-1]["prefix"] == str(held_env)
        wait_until(lambda: not held_env.exists(), "the released session to expire")


def test_phases_arrive_in_order_with_elapsed_times(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    # A daemon of its own: an empty store, so the environment is created here.
    process = make_daemon()
    source = setuptools_project(tmp_path / "phases")
    with Client(process.address, autostart=False) as client:
        session = client.open_session("phases")
        events = list(session.metadata(str(source)))
        session.close()
    kinds = [e.phase.kind for e in events if e.HasField("phase")]
    assert kinds[0] == pb.PHASE_KIND_KEY_RESOLVED
    assert pb.PHASE_KIND_CREATING_ENVIRONMENT in kinds
    assert pb.PHASE_KIND_INSTALLING_REQUIREMENTS in kinds
    assert kinds.index(pb.PHASE_KIND_CREATING_ENVIRONMENT) < kinds.index(
        pb.PHASE_KIND_ENVIRONMENT_LEASED
    )
    hooks = [e.phase.hook for e in events if e.phase.kind == pb.PHASE_KIND_RUNNING_HOOK]
    assert hooks == ["get_requires_for_build_wheel", "prepare_metadata_for_build_wheel"]
    elapsed = [e.phase.elapsed_seconds for e in events if e.HasField("phase")]
    assert elapsed == sorted(elapsed)
    assert any(e.HasField("log") and e.log.text for e in events)
    assert events[-1].HasField("result")
    assert sum(1 for e in events if e.HasField("result") or e.HasField("failure")) == 1


def test_quiet_requests_get_no_backend_lines(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "quiet")
    session = client.open_session("quiet")
    events = list(session.metadata(str(source), quiet=True))
    assert not [e for e in events if e.HasField("log")]
    session.close()


@pytest.mark.parametrize("version", ["3.10", "3.12", "3.13"])
def test_requests_pick_their_interpreter(client: Client, tmp_path: Path, version: str) -> None:
    if not (
        shutil.which(f"python{version}")
        or list(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
    ):
        pytest.skip(f"Python {version} is not installed here")
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "interp", log)
    session = client.open_session(f"python-{version}")
    session.metadata(str(source), python=version).result()
    mine = session.metadata(str(source)).result()
    assert mine.metadata
    records = read_probe_log(log)
    envs = client.status(session.id).sessions[0].environments
    versions = sorted(e.python_version.rsplit(".", 1)[0] for e in envs)
    assert versions == sorted([version, "{}.{}".format(*sys.version_info[:2])])
    assert records[0]["prefix"] != records[-1]["prefix"]
    session.close()


def test_unknown_interpreter_is_a_clear_error(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "nopython")
    session = client.open_session("no-python")
    with pytest.raises(RequestFailed) as failure:
        session.metadata(str(source), python="2.5").result()
    assert failure.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert "2.5" in failure.value.message
    session.close()


def test_pip_installer_builds_too(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon(["--installer", "pip"])
    source = setuptools_project(tmp_path / "pip")
    with Client(process.address, autostart=False) as client:
        assert client.status().daemon.installer == "pip"
        session = client.open_session("pip")
        result = session.build(
            str(source), distributions=("wheel",), output_directory=str(tmp_path / "o")
        ).result()
        assert Path(result.artifacts[0].path).is_file()
        session.close()


def test_cancel_stops_the_hook_and_frees_the_instance(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "cancel", log, hold=30)
    session = client.open_session("cancel")
    call = session.metadata(str(source))
    leased = ""
    running = False
    for event in call:
        if event.HasField("phase") and event.phase.kind == pb.PHASE_KIND_ENVIRONMENT_LEASED:
            leased = event.phase.environment_path
        # The probe prints this after reading its 30-second hold.
        if (
            event.HasField("log")
            and "probe: get_requires_for_build_wheel starting" in event.log.text
        ):
            running = True
            break
    assert running and leased
    leased_id = _instance_id(Path(leased))
    call.cancel()
    probe_project(source, log, hold=0)
    session.metadata(str(source)).result()
    records = read_probe_log(log)
    # The killed hook never wrote its record; the next request ran at once in
    # a fresh instance, since a killed hook leaves its instance in doubt.
    assert [r["hook"] for r in records] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert records[0]["instance"] not in (None, leased_id)
    # Gone; a new instance may have taken its slot, and so its path.
    assert not Path(leased).exists() or _instance_id(Path(leased)) != leased_id
    session.close()


def _instance_id(path: Path) -> str:
    return str(json.loads((path / "buildd-env.json").read_text())["id"])


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_cancelled_calls_give_their_server_threads_back(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    log = tmp_path / "probe.log"
    with Client(process.address, autostart=False) as client:
        session = client.open_session("threads")
        warm = probe_project(tmp_path / "warm", log)
        session.metadata(str(warm)).result()
        baseline = _threads(process.pid)
        # Without the fix each cancelled call pins one server thread for good;
        # with it, at most a couple of pool threads more than before may stay
        # (calls overlapping for a moment make the pool grow, idle threads stay).
        for index in range(8):
            source = probe_project(tmp_path / f"slow{index}", log, hold=30)
            call = session.metadata(str(source))
            for event in call:
                if event.HasField("log") and "starting" in event.log.text:
                    break
            call.cancel()
        wait_until(lambda: _threads(process.pid) <= baseline + 2, "the server threads to return")
        session.metadata(str(warm)).result()
        session.close()
