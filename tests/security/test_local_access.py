"""Other local users: loopback TCP needs the daemon user's token; shared folders are refused.

We run as root, so "another user" is ``nobody``: a client process started
with ``setpriv`` under that uid, running the system Python 3.11 with this
checkout's packages on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from buildd_client import Client
from buildd_client.addresses import local_token_path
from support.daemon import DaemonProcess, short_tempdir
from support.hostile import hostile_project
from support.remote import free_port

if TYPE_CHECKING:
    from .conftest import MakeDaemon

pytestmark = pytest.mark.integration

NOBODY = 65534
REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
needs_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or not SYSTEM_PYTHON.exists(),
    reason=f"needs root, setpriv and {SYSTEM_PYTHON} to act as another user",
)

# What the other user tries: every call, through a raw stub (no token to send).
INTRUDER = """
import json, sys
import grpc
from buildd.v1 import buildd_pb2 as pb, buildd_pb2_grpc

address, source = sys.argv[1:3]
stub = buildd_pb2_grpc.BuilddStub(grpc.insecure_channel(address))
outcome = {}

def attempt(name, call):
    try:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            result = list(result)
        outcome[name] = "OK " + str(result)[:300]
    except grpc.RpcError as exc:
        outcome[name] = exc.code().name

attempt("GetStatus", lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=30))
opened = []
attempt("OpenSession", lambda: opened.append(stub.OpenSession(pb.OpenSessionRequest(), timeout=30)))
session_id = opened[0].session_id if opened else ""
context = pb.BuildContext(session_id=session_id, source=pb.Source(path=source))
attempt("PrepareMetadata", lambda: stub.PrepareMetadata(
    pb.PrepareMetadataRequest(context=context), timeout=60))
attempt("Shutdown", lambda: stub.Shutdown(pb.ShutdownRequest(), timeout=30))
print(json.dumps(outcome))
"""


def _as_nobody(*args: str) -> dict[str, Any]:
    # Somewhere nobody may read (pytest's tmp_path is root's alone).
    folder = Path(tempfile.mkdtemp(prefix="bd-intruder-", dir="/var/tmp"))
    folder.chmod(0o755)
    script = folder / "intruder.py"
    script.write_text(textwrap.dedent(INTRUDER))
    script.chmod(0o644)
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    paths = [str(REPO / "proto"), str(REPO / "client")] + ([str(site)] if site else sys.path[1:])
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(paths), "HOME": "/"}
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*command, str(SYSTEM_PYTHON), str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@needs_other_user
def test_another_user_gets_nothing_from_a_loopback_daemon(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    port = free_port()
    daemon = make_daemon(start=False)
    daemon.address = f"127.0.0.1:{port}"
    daemon.start()
    # A project only root may read (pytest's tmp_path is root's alone).
    secret = hostile_project(tmp_path / "secret", name="root-only-project")
    outcome = _as_nobody(daemon.address, str(secret))
    assert outcome == {
        "GetStatus": "UNAUTHENTICATED",
        "OpenSession": "UNAUTHENTICATED",
        "PrepareMetadata": "UNAUTHENTICATED",
        "Shutdown": "UNAUTHENTICATED",
    }
    # The daemon's own user gets in with the token the daemon left for it.
    token = Path(local_token_path(port))
    info = token.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    with Client(daemon.address, autostart=False) as client:
        assert client.status().principal == "local"
        result = client.open_session("owner").metadata(str(secret)).result()
    assert b"Name: root-only-project" in result.metadata
    daemon.stop()
    assert not token.exists()


def test_a_loopback_call_without_the_token_is_refused(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(start=False)
    daemon.address = f"127.0.0.1:{free_port()}"
    daemon.start()
    with grpc.insecure_channel(daemon.address) as channel:
        from buildd.v1 import buildd_pb2 as pb
        from buildd.v1 import buildd_pb2_grpc

        stub = buildd_pb2_grpc.BuilddStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetStatus(pb.GetStatusRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _refused(process: DaemonProcess) -> str:
    done = subprocess.run(
        process.command(), capture_output=True, text=True, timeout=60, env=process.environment()
    )
    assert done.returncode == 2, done.stderr
    return done.stderr


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=["world", "world-sticky", "group"])
def test_a_socket_folder_others_can_write_is_refused(wheelhouse: Path, mode: int) -> None:
    root = short_tempdir()
    try:
        shared = root / "shared"
        shared.mkdir()
        shared.chmod(mode)
        process = DaemonProcess(wheelhouse, root=root)
        process.address = f"unix://{shared}/buildd.sock"
        said = _refused(process)
        assert f"the socket's folder {shared} is writable by" in said
        assert not (shared / "buildd.sock").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("case", ["world-writable", "under-a-world-writable-folder", "nobodys"])
def test_a_state_folder_others_can_replace_is_refused(wheelhouse: Path, case: str) -> None:
    root = short_tempdir()
    try:
        process = DaemonProcess(wheelhouse, root=root)
        if case == "under-a-world-writable-folder":
            (root / "open").mkdir()
            (root / "open").chmod(0o777)
            process.state_dir = root / "open" / "state"
            process.state_dir.mkdir(mode=0o700)
            culprit = root / "open"
        else:
            process.state_dir.mkdir()
            culprit = process.state_dir
            if case == "world-writable":
                process.state_dir.chmod(0o777)
            else:
                if os.geteuid() != 0:
                    pytest.skip("only root can give a folder to nobody")
                process.state_dir.chmod(0o700)
                os.chown(process.state_dir, NOBODY, NOBODY)
        said = _refused(process)
        assert f"state dir {culprit}" in said
        assert "writable by" in said or "belongs to uid" in said
    finally:
        shutil.rmtree(root, ignore_errors=True)
