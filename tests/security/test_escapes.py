"""Processes escape no call: whatever ends a call, everything the hook started is gone.

The hostile grandchild leaves the hook's session (``setsid``), ignores
SIGTERM, names nothing of the daemon on its command line, connects to the
test's socket and sleeps. Its connection ends when it dies, so an end of
file is the proof. Each ending a call can have is tried: a normal return
(also with the grandchild holding the hook's stdout), the hook timeout, a
cancel, the client's death, a drain, and a SIGKILL of the daemon followed by
a restart; on the plain path (an in-tree backend) and on the fork path
(setuptools, forked from the environment's fork server).

These run with the daemon's defaults (``--containment auto``): the callers
are local, so each call gets a PID namespace of its own.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING, Any

import pytest

from buildd_client import Client
from buildd_client.errors import RequestFailed
from support.hostile import (
    Escapees,
    configure,
    hostile_project,
    hostile_setuptools_project,
    needs_bwrap,
    records,
)
from support.reliability import start_client_process

if TYPE_CHECKING:
    from pathlib import Path

    from buildd.v1 import buildd_pb2 as pb
    from buildd_client.calls import Call

    from .conftest import MakeDaemon

pytestmark = [pytest.mark.integration, needs_bwrap]

PREPARE = "prepare_metadata_for_build_wheel"


def _grandchild_project(
    root: Path, escapees: Escapees, *, hold: bool = False, hang: int = 0
) -> Path:
    """A hostile project whose prepare_metadata leaves one grandchild (and then hangs)."""
    return hostile_project(
        root,
        grandchild={"socket": str(escapees.path), "hold_stdout": hold},
        grandchild_hook=PREPARE,
        hang=hang,
    )


def _until_grandchild(call: Call[Any]) -> list[pb.Event]:
    """Read the call's events until the hook says its grandchild has connected."""
    seen: list[pb.Event] = []
    for event in call:
        seen.append(event)
        if any("grandchild" in record for record in records([event])):
            return seen
    raise AssertionError(f"the call ended before its grandchild started: {seen[-3:]}")


@pytest.mark.parametrize("hold_stdout", [False, True], ids=["detached", "holding-stdout"])
def test_a_grandchild_is_gone_when_the_call_returns(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path, hold_stdout: bool
) -> None:
    daemon = make_daemon()
    source = _grandchild_project(tmp_path / "p", escapees, hold=hold_stdout)
    with Client(daemon.address, autostart=False) as client:
        call = client.open_session("escape").metadata(str(source))
        events = list(call)
        call.result()
    [record] = [r for r in records(events) if "grandchild" in r]
    assert record["grandchild"] == "started: connected"
    assert escapees.accept().startswith("alive")
    # Already gone as the answer arrives: not killed later, and the call did
    # not wait for the stdout it held.
    assert escapees.gone_now()


def test_a_grandchild_is_gone_after_the_hook_timeout(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon(["--hook-timeout", "3"])
    source = _grandchild_project(tmp_path / "p", escapees, hang=1000)
    with Client(daemon.address, autostart=False) as client:
        call = client.open_session("escape").metadata(str(source))
        _until_grandchild(call)
        escapees.accept()
        with pytest.raises(RequestFailed, match="timeout"):
            call.result()
    assert escapees.gone_within(10)


def test_a_grandchild_is_gone_after_a_cancel(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = _grandchild_project(tmp_path / "p", escapees, hang=1000)
    with Client(daemon.address, autostart=False) as client:
        call = client.open_session("escape").metadata(str(source))
        _until_grandchild(call)
        escapees.accept()
        call.cancel()
    assert escapees.gone_within(10)


def test_a_grandchild_is_gone_after_the_client_dies(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = _grandchild_project(tmp_path / "p", escapees, hang=1000)
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("escape")
        other = start_client_process("client_process", [daemon.address, session.id, str(source)])
        try:
            assert other.stdout is not None
            for line in other.stdout:
                if line.startswith("log HOSTILE") and "grandchild" in line:
                    break
            escapees.accept()
            other.kill()
            other.wait(timeout=30)
        finally:
            if other.poll() is None:
                other.kill()
            if other.stdout is not None:
                other.stdout.close()
        assert escapees.gone_within(15)


def test_a_grandchild_is_gone_after_a_drain(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon(["--grace", "1"])
    source = _grandchild_project(tmp_path / "p", escapees, hang=1000)
    with Client(daemon.address, autostart=False) as client:
        call = client.open_session("escape").metadata(str(source))
        _until_grandchild(call)
        escapees.accept()
        assert daemon.stop(signal.SIGTERM) == 0
    assert escapees.gone_within(15)


def test_a_grandchild_is_gone_when_the_daemon_is_killed_and_a_restart_works(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = _grandchild_project(tmp_path / "p", escapees, hang=1000)
    with Client(daemon.address, autostart=False) as client:
        call = client.open_session("escape").metadata(str(source))
        _until_grandchild(call)
        escapees.accept()
        daemon.stop(signal.SIGKILL)
        call.cancel()
    # The daemon's death takes its calls along, before any restart.
    assert escapees.gone_within(10)
    again = make_daemon(root=daemon.root)
    configure(source, name="after-restart")
    with Client(again.address, autostart=False) as client:
        result = client.open_session("after").metadata(str(source)).result()
    assert b"Name: after-restart" in result.metadata


# ------------------------------------------------------------ fork path --


def _fork_server_pid(daemon_log: str) -> int:
    for line in daemon_log.splitlines():
        if '"fork_server_ready"' in line:
            return int(json.loads(line)["pid"])
    raise AssertionError("no fork server became ready")


def _forked_records(events: list[pb.Event], zygote: int) -> list[dict[str, Any]]:
    found = [r for r in records(events) if r["hook"] == "setup.py"]
    assert found, "setup.py ran in no hook"
    for record in found:
        # Forked: the fork server is an ancestor (under an init of the call's own).
        assert zygote in record["ancestors"], record["ancestors"]
    return found


def _warm(client: Client, source: Path, escapees: Escapees, **probe: Any) -> Any:
    """A session with a warm fork server for ``source``, then the probes switched on."""
    session = client.open_session("fork-escape")
    session.metadata(str(source)).result()  # plain, then forked; starts the fork server
    configure(source, name="hostile-setuptools", **probe)
    return session


def test_a_forked_hooks_grandchild_is_gone_when_the_call_returns(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path
) -> None:
    daemon = make_daemon()
    source = hostile_setuptools_project(tmp_path / "p")
    probe = {"grandchild": {"socket": str(escapees.path), "hold_stdout": True}}
    with Client(daemon.address, autostart=False) as client:
        session = _warm(client, source, escapees, **probe)
        call = session.metadata(str(source))
        events = list(call)
        call.result()
    forked = _forked_records(events, _fork_server_pid(daemon.log()))
    assert [r["grandchild"] for r in forked] == ["started: connected"] * len(forked)
    for index in range(len(forked)):
        escapees.accept()
        assert escapees.gone_now(index)


@pytest.mark.parametrize("ending", ["cancel", "daemon-killed"])
def test_a_forked_hooks_grandchild_is_gone_after_a_cancel_or_the_daemons_death(
    make_daemon: MakeDaemon, escapees: Escapees, tmp_path: Path, ending: str
) -> None:
    daemon = make_daemon()
    source = hostile_setuptools_project(tmp_path / "p")
    probe = {"grandchild": {"socket": str(escapees.path)}, "hang": 1000}
    with Client(daemon.address, autostart=False) as client:
        session = _warm(client, source, escapees, **probe)
        call = session.metadata(str(source))
        events = _until_grandchild(call)
        escapees.accept()
        _forked_records(events, _fork_server_pid(daemon.log()))
        if ending == "cancel":
            call.cancel()
        else:
            daemon.stop(signal.SIGKILL)
            call.cancel()
    assert escapees.gone_within(10)


if sys.platform != "linux":  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="PID namespaces are Linux's"))
