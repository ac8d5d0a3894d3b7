"""The daemon checks bubblewrap at start-up, says what is missing, and refuses what it cannot do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client
from support.daemon import DaemonProcess, short_tempdir
from support.hostile import hostile_project, needs_bwrap, reached, records

if TYPE_CHECKING:
    from .conftest import MakeDaemon

pytestmark = pytest.mark.integration

# A PATH without bubblewrap on it (the daemon finds its installer by itself).
NO_BWRAP = {**os.environ, "PATH": "/nonexistent"}


def test_without_bubblewrap_a_sandbox_is_refused_naming_it(wheelhouse: Path) -> None:
    root = short_tempdir()
    process = DaemonProcess(wheelhouse, root=root, args=["--containment", "sandbox"], env=NO_BWRAP)
    done = subprocess.run(
        process.command(), capture_output=True, text=True, timeout=60, env=process.environment()
    )
    process.cleanup()
    assert done.returncode == 2
    assert "--containment sandbox needs a working bubblewrap sandbox" in done.stderr
    assert "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)" in (
        done.stderr
    )


def test_without_bubblewrap_auto_says_what_it_means(make_daemon: MakeDaemon) -> None:
    daemon = make_daemon(env=NO_BWRAP)
    with Client(daemon.address, autostart=False) as client:
        info = client.status().daemon
    assert info.containment_setting == "auto"
    assert info.local_containment == pb.CONTAINMENT_NONE
    [note] = info.containment_notes
    assert "bubblewrap (bwrap) is not installed" in note
    assert "can outlive the call" in note
    assert '"event": "containment"' in daemon.log()


@needs_bwrap
@pytest.mark.parametrize(
    ("setting", "local", "remote"),
    [
        ("auto", pb.CONTAINMENT_PID, pb.CONTAINMENT_SANDBOX),
        ("pid", pb.CONTAINMENT_PID, pb.CONTAINMENT_PID),
        ("sandbox", pb.CONTAINMENT_SANDBOX, pb.CONTAINMENT_SANDBOX),
        ("none", pb.CONTAINMENT_NONE, pb.CONTAINMENT_NONE),
    ],
)
def test_the_setting_is_what_status_reports(
    make_daemon: MakeDaemon, tmp_path: Path, setting: str, local: int, remote: int
) -> None:
    # auto: local callers get a PID namespace per call, remote ones a sandbox.
    daemon = make_daemon(["--containment", setting])
    source = hostile_project(tmp_path / "p", name=f"under-{setting}", write_source=True)
    with Client(daemon.address, autostart=False) as client:
        info = client.status().daemon
        call = client.open_session("setting").metadata(str(source))
        [record, *_] = records(call)
        result = call.result()
    assert info.containment_setting == setting
    assert info.local_containment == local
    assert info.remote_containment == remote
    # Whatever the mode, a hook runs, and writes its own tree.
    assert f"Name: under-{setting}".encode() in result.metadata
    assert reached(record, "write") == {str(source / "written-by-the-hook"): "ok"}
