"""The nine faults of the reliability issue, each a test against a real daemon.

Evidence comes from the processes and files themselves: a hook writes its own
pid and its child's, and the test polls ``/proc`` for the process group (a
bounded poll: the daemon must make it true, the test fails when it does not);
environments are looked up in status and on disk. docs/reliability.md lists
what each test proves and the figures of a run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from buildd_client.client import Session
from support.daemon import DaemonProcess, short_tempdir
from support.projects import probe_project, read_probe_log, setuptools_project
from support.reliability import (
    Bystander,
    backend_project,
    env_dirs,
    group_members,
    leftovers,
    start_client_process,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .conftest import MakeDaemon

pytestmark = pytest.mark.integration

HOOK_TIMEOUT = 4
# How long a killed hook's process group may take to disappear.
GROUP_GONE_WITHIN = 5.0

# get_requires hangs while a file "hang" exists, with a child in its group;
# it writes "HOOK_PID CHILD_PID GROUP" to "pids" first, as the machine sees
# them (under the daemon's containment the hook has a PID namespace of its
# own, where os.getpid() is that namespace's number; /proc is the machine's).
HANG = """
import subprocess, sys, time

_SLEEPER = (
    "import os, time; open('child.tmp', 'w').write(os.readlink('/proc/self')); "
    "os.replace('child.tmp', 'child.pid'); time.sleep(1000)"
)

def get_requires_for_build_wheel(config_settings=None):
    if os.path.exists("hang"):
        if os.path.exists("child.pid"):
            os.remove("child.pid")
        subprocess.Popen([sys.executable, "-c", _SLEEPER])
        while not os.path.exists("child.pid"):
            time.sleep(0.01)
        child = open("child.pid").read()
        group = open("/proc/self/stat").read().rsplit(")", 1)[1].split()[2]
        with open("pids.tmp", "w") as out:
            out.write(f"{os.readlink('/proc/self')} {child} {group}")
        os.replace("pids.tmp", "pids")
        print("hanging with child", child, flush=True)
        time.sleep(1000)
    return []
"""

# prepare_metadata dies while a file "crash" says how: "exit" or "signal".
CRASH = """
import signal, sys

_prepare = prepare_metadata_for_build_wheel

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    mode = open("crash").read() if os.path.exists("crash") else ""
    if mode:
        print("crashing now: last words", flush=True)
        if mode == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(3)
    return _prepare(metadata_directory, config_settings)
"""


@pytest.fixture(scope="module")
def fault_daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse, args=["--hook-timeout", str(HOOK_TIMEOUT)]).start()
    yield process
    process.cleanup()


@pytest.fixture
def client(fault_daemon: DaemonProcess) -> Iterator[Client]:
    with Client(fault_daemon.address, autostart=False) as value:
        yield value


def _hang_project(root: Path) -> Path:
    source = backend_project(root, HANG)
    (source / "hang").touch()
    return source


def _hook_pids(source: Path) -> tuple[int, int]:
    """(the hook's process group, its child): both run, the child in the hook's group."""
    wait_until((source / "pids").exists, "the hook to start", 60)
    hook, child, group = (int(text) for text in (source / "pids").read_text().split())
    # The setup holds: the hook and its child run in one group, which is the
    # hook's own (uncontained) or its bubblewrap's (in a PID namespace).
    assert {hook, child} <= set(group_members(group))
    return group, child


CREATING = pb.PHASE_KIND_CREATING_ENVIRONMENT


def _only_env(client: Client, session_id: str) -> pb.EnvironmentInfo:
    [env] = client.status(session_id).sessions[0].environments
    return env


def _discarded(client: Client, session_id: str, path: str) -> bool:
    envs = client.status(session_id).sessions[0].environments
    return not Path(path).exists() and all(env.path != path for env in envs)


def _recover(client: Client, session: Session, source: Path, old_path: str) -> None:
    """The next request works, in a new instance.

    Paths are stable: a new instance may take the discarded one's slot, and so
    its path; it was then created by this very request.
    """
    for name in ("hang", "pids", "crash"):
        (source / name).unlink(missing_ok=True)
    events = list(session.metadata(str(source)))
    created = [e.phase.environment_path for e in events if e.phase.kind == CREATING]
    env = _only_env(client, session.id)
    assert env.path != old_path or created == [old_path, old_path]
    assert env.state == pb.ENVIRONMENT_STATE_IDLE


# ---------------------------------------------------------- 1: hook crash --


@pytest.mark.parametrize(
    ("mode", "words"), [("exit", "exit code 3"), ("signal", "SIGKILL")], ids=["exit", "signal"]
)
def test_fault1_crashing_hook(client: Client, tmp_path: Path, mode: str, words: str) -> None:
    source = backend_project(tmp_path / "crash", CRASH)
    (source / "crash").write_text(mode)
    session = client.open_session(f"fault1-{mode}")
    call = session.metadata(str(source))
    leased = [e.phase.environment_path for e in call if e.phase.environment_path]
    with pytest.raises(RequestFailed) as failure:
        call.result()
    error = failure.value
    print(f"fault 1 ({mode}): {error.status.name}: {error.message}")
    assert error.status == grpc.StatusCode.FAILED_PRECONDITION
    assert error.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert error.hook == "prepare_metadata_for_build_wheel"
    assert words in error.message
    assert "crashing now: last words" in error.last_lines
    # Rule 5: the instance is gone, from status and from disk.
    assert leased and _discarded(client, session.id, leased[-1])
    _recover(client, session, source, leased[-1])
    session.close()


# ------------------------------------------------------------ 2: hook hang --


def test_fault2_hanging_hook_times_out(client: Client, tmp_path: Path) -> None:
    source = _hang_project(tmp_path / "hang")
    session = client.open_session("fault2")
    call = session.metadata(str(source))
    hook, child = _hook_pids(source)
    leased = _only_env(client, session.id).path
    with pytest.raises(RequestFailed) as failure:
        call.result()
    error = failure.value
    print(f"fault 2: {error.status.name}: {error.message}")
    assert error.status == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error.kind == pb.FAILURE_KIND_TIMEOUT
    assert error.hook == "get_requires_for_build_wheel"
    assert f"timeout of {HOOK_TIMEOUT} s" in error.message
    assert "process group was killed" in error.message
    assert any(line.startswith("hanging with child") for line in error.last_lines)
    # The whole group, child included.
    took = wait_until(lambda: not group_members(hook), "the group to go", GROUP_GONE_WITHIN)
    print(f"fault 2: group {hook} (child {child}) gone {took:.2f} s after the error")
    assert _discarded(client, session.id, leased)
    _recover(client, session, source, leased)
    session.close()


# ---------------------------------------------- 3 and 4: client goes away --


def test_fault3_client_process_killed_mid_hook(
    fault_daemon: DaemonProcess, client: Client, tmp_path: Path
) -> None:
    source = _hang_project(tmp_path / "orphaned")
    session = client.open_session("fault3")
    other = start_client_process("client_process", [fault_daemon.address, session.id, str(source)])
    try:
        hook, _ = _hook_pids(source)
        leased = _only_env(client, session.id).path
        other.kill()
        other.wait(timeout=30)
    finally:
        if other.poll() is None:
            other.kill()
        if other.stdout is not None:
            other.stdout.close()
    took = wait_until(lambda: not group_members(hook), "the group to go", GROUP_GONE_WITHIN)
    print(f"fault 3: hook group {hook} gone {took:.2f} s after the client was killed")
    wait_until(lambda: _discarded(client, session.id, leased), "the instance to be discarded", 10)
    _recover(client, session, source, leased)
    session.close()


def test_fault4_explicit_cancel(client: Client, tmp_path: Path) -> None:
    source = _hang_project(tmp_path / "cancelled")
    session = client.open_session("fault4")
    call = session.metadata(str(source))
    for event in call:
        if event.log.text.startswith("hanging with child"):
            break
    hook, _ = _hook_pids(source)
    leased = _only_env(client, session.id).path
    call.cancel()
    with pytest.raises(RequestFailed) as failure:
        call.result()
    assert call.cancelled
    assert failure.value.status == grpc.StatusCode.CANCELLED
    took = wait_until(lambda: not group_members(hook), "the group to go", GROUP_GONE_WITHIN)
    print(f"fault 4: hook group {hook} gone {took:.2f} s after the cancel")
    wait_until(lambda: _discarded(client, session.id, leased), "the instance to be discarded", 10)
    _recover(client, session, source, leased)
    session.close()


# ---------------------------------------------------- 5: SIGTERM in flight --


def test_fault5_sigterm_with_work_in_flight(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    grace = 5
    process = make_daemon(["--grace", str(grace)])
    log, starts = tmp_path / "probe.log", tmp_path / "starts.log"
    short = probe_project(tmp_path / "short", log, hold=0.5, start_log=str(starts))
    long = _hang_project(tmp_path / "long")
    outcomes: dict[str, object] = {}

    def run(session: Session, name: str, source: Path) -> None:
        try:
            outcomes[name] = session.metadata(str(source)).result()
        except RequestFailed as exc:
            outcomes[name] = exc

    with Client(process.address, autostart=False) as client:
        session = client.open_session("fault5")
        threads = [
            threading.Thread(target=run, args=(session, "long", long)),
            threading.Thread(target=run, args=(session, "short", short)),
        ]
        threads[0].start()
        hook, _ = _hook_pids(long)
        threads[1].start()
        wait_until(lambda: bool(read_probe_log(starts)), "the short call's hook to start")
        os.kill(process.pid, signal.SIGTERM)
        wait_until(lambda: client.status().daemon.draining, "the drain to begin")
        # New work is refused while the running calls go on.
        with pytest.raises(RequestFailed) as no_session:
            client.open_session("too-late")
        with pytest.raises(RequestFailed) as no_call:
            session.metadata(str(short)).result()
        for refused in (no_session.value, no_call.value):
            print(f"fault 5: refused with {refused.status.name}: {refused.message}")
            assert refused.status == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in refused.message
        for thread in threads:
            thread.join(60)
    assert process.process is not None
    assert process.process.wait(timeout=60) == 0
    # The short call finished within the grace; the long one was cancelled.
    result = outcomes["short"]
    assert isinstance(result, pb.MetadataResult), result
    assert b"Name: short" in result.metadata
    cancelled = outcomes["long"]
    assert isinstance(cancelled, RequestFailed), cancelled
    print(f"fault 5: the long call ended with {cancelled.status.name}: {cancelled.message}")
    assert cancelled.status in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    wait_until(lambda: not group_members(hook), "the long hook's group to go", GROUP_GONE_WITHIN)
    assert [r["hook"] for r in read_probe_log(log)] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert leftovers(process.state_dir) == []
    assert not process.socket.exists()


# -------------------------------------------------- 6: SIGKILL and restart --


def test_fault6_sigkill_then_restart(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon()
    # A key of its own: the hanging request cannot lease this idle instance.
    source = probe_project(
        tmp_path / "warm", tmp_path / "probe.log", static_requires=["flit_core<4"]
    )
    hanging = _hang_project(tmp_path / "hang")
    with Client(process.address, autostart=False) as client:
        session = client.open_session("fault6")
        session.metadata(str(source)).result()
        [idle] = env_dirs(process.state_dir)
        busy = client.open_session("fault6-busy")
        call = busy.metadata(str(hanging))
        hook, _ = _hook_pids(hanging)
        [leased] = [p for p in env_dirs(process.state_dir) if p != idle]
        process.stop(signal.SIGKILL)
        call.cancel()
    assert idle.exists() and leased.exists()

    again = make_daemon(root=process.root)
    # The idle store instance is complete and kept; the one a hook held when
    # the daemon died is in an unknown state and deleted.
    assert env_dirs(process.state_dir) == [idle]
    wait_until(lambda: not group_members(hook), "the orphaned hook's group to go", 10)
    assert leftovers(process.state_dir) == []
    with Client(again.address, autostart=False) as client:
        stale = Session(client, pb.SessionInfo(session_id=session.id))
        errors = []
        with pytest.raises(RequestFailed) as joined:
            client.join_session(session.id)
        errors.append(joined.value)
        with pytest.raises(RequestFailed) as built:
            stale.metadata(str(source)).result()
        errors.append(built.value)
        with pytest.raises(RequestFailed) as closed:
            client.close_session(session.id)
        errors.append(closed.value)
        for error in errors:
            print(f"fault 6: old session id: {error.status.name}: {error.message}")
            assert error.status == grpc.StatusCode.NOT_FOUND
            assert error.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
            assert session.id in error.message
        fresh = client.open_session("after-kill")
        fresh.metadata(str(source)).result()
        fresh.close()


# ------------------------------------------------------------ 7: disk full --


@pytest.fixture
def tiny_state_root() -> Iterator[Path]:
    """A daemon root whose state/ is a 20 MiB tmpfs (needs root and CAP_SYS_ADMIN)."""
    root = short_tempdir()
    state = root / "state"
    state.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_fault7_disk_full_during_creation(
    make_daemon: MakeDaemon, tiny_state_root: Path, tmp_path: Path
) -> None:
    process = make_daemon(root=tiny_state_root)
    bystander = Bystander(process.address, tmp_path)
    ballast = process.state_dir / "ballast"
    # Leave about 1 MiB: a virtualenv fits, setuptools does not.
    free = os.statvfs(process.state_dir)
    with ballast.open("wb") as out:
        out.truncate(0)
        os.posix_fallocate(out.fileno(), 0, free.f_bavail * free.f_frsize - (1 << 20))
    source = setuptools_project(tmp_path / "big")
    with Client(process.address, autostart=False) as client:
        session = client.open_session("fault7")
        with pytest.raises(RequestFailed) as failure:
            session.metadata(str(source)).result()
        error = failure.value
        print(f"fault 7: {error.status.name}: {error.message}")
        assert error.status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.kind == pb.FAILURE_KIND_RESOURCE_EXHAUSTED
        assert "no space left" in error.message.lower()
        assert str(process.state_dir) in error.message
        # The partial environment is gone; only the bystander's is left.
        assert [str(p) for p in env_dirs(process.state_dir)] == [bystander.path]
        assert client.status(session.id).sessions[0].environments == []
        bystander.check()
        # Once there is room again, the same request works.
        ballast.unlink()
        assert b"Name: demo-setuptools" in session.metadata(str(source)).result().metadata
        session.close()
    bystander.close()
    assert process.stop() == 0


# ------------------------------------------------- 8: tampered environment --


def _delete_module(env: Path) -> None:
    next(env.glob("lib/python*/site-packages/flit_core/buildapi.py")).unlink()


def _delete_interpreter(env: Path) -> None:
    (env / "bin" / "python").unlink()


def _delete_description(env: Path) -> None:
    (env / "buildd-env.json").unlink()


def _delete_everything(env: Path) -> None:
    shutil.rmtree(env)


@pytest.mark.parametrize(
    "tamper",
    [_delete_module, _delete_interpreter, _delete_description, _delete_everything],
    ids=["module-deleted", "interpreter-deleted", "description-deleted", "folder-deleted"],
)
def test_fault8_environment_tampered_with(
    client: Client, tmp_path: Path, tamper: Callable[[Path], None]
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "tampered", log, static_requires=["flit_core"])
    session = client.open_session("fault8")
    session.metadata(str(source)).result()
    old = _only_env(client, session.id)
    before = old.path
    tamper(Path(before))
    # A cached answer runs nothing in the instance; the hooks must run here.
    result = session.metadata(str(source), no_cache=True).result()
    assert b"Name: tampered" in result.metadata
    after = _only_env(client, session.id)
    # A new instance (it may take the slot, and so the path, of the tampered one).
    assert after.id != old.id
    assert read_probe_log(log)[-1]["instance"] == after.id
    assert read_probe_log(log)[-1]["prefix"] == after.path
    assert "flit-core" in after.requirements
    session.close()


# ------------------------------------------------- 9: session ends mid-call --


def test_fault9_session_closed_during_a_call(client: Client, tmp_path: Path) -> None:
    log, starts = tmp_path / "probe.log", tmp_path / "starts.log"
    source = probe_project(tmp_path / "held", log, hold=1.0, start_log=str(starts))
    session = client.open_session("fault9")
    call = session.metadata(str(source))
    wait_until(lambda: bool(read_probe_log(starts)), "the first hook to start")
    leased = _only_env(client, session.id)
    assert leased.state == pb.ENVIRONMENT_STATE_LEASED
    closed = session.close()
    print(f"fault 9: CloseSession during the call: {closed}".replace("\n", " "))
    assert (closed.environments_deleted, closed.environments_pending) == (0, 1)
    # The call finishes, in its environment, although its session has ended...
    result = call.result()
    assert b"Name: held" in result.metadata
    assert {r["prefix"] for r in read_probe_log(log)} == {leased.path}
    # ...then the session's folder is deleted, and the environment is back in
    # its principal's store, idle.
    session_dir = client.status().daemon.state_dir + f"/sessions/{session.id}"
    wait_until(lambda: not Path(session_dir).exists(), "the session's folder to go", 10)
    stored = {e.path: e.state for row in client.status().store for e in row.environments}
    assert stored[leased.path] == pb.ENVIRONMENT_STATE_IDLE


def test_fault9_expiry_waits_for_a_running_call(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    """By design a session cannot expire while one of its calls runs (the call holds it)."""
    ttl = 1.0
    process = make_daemon(["--session-ttl", str(ttl)])
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "long", log, hold=1.5)
    with Client(process.address, autostart=False) as client:
        session = client.open_session("fault9-ttl")
        result = session.metadata(str(source)).result()
        assert b"Name: long" in result.metadata
        records = read_probe_log(log)
        # The call outlived the TTL (two hooks of 1.5 s each) and its session too.
        assert records[-1]["end"] - records[0]["start"] > 2 * ttl
        env = Path(records[0]["prefix"])
        assert {r["prefix"] for r in records} == {str(env)}
        # Only once the call is over does the idle clock run out.
        wait_until(
            lambda: leftovers(process.state_dir) == [], "the expired session's folder to go", 10
        )
        with pytest.raises(RequestFailed) as gone:
            client.join_session(session.id)
        assert gone.value.status == grpc.StatusCode.NOT_FOUND
        assert "expired" in gone.value.message
    # Its environment stays in the principal's store.
    assert (env / "buildd-env.json").is_file()
