"""A cached upload that changed on disk is refused, evicted, and replaced by the next upload.

Sandboxed hooks cannot see the blob cache (test_sandbox.py); what can still
write there is the daemon's own user, and a local principal's hook. Here
that hook is the hostile backend of a local session on the daemon's socket,
which overwrites another session's cached blob with a project of its own.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client
from buildd_client.errors import RequestFailed
from support.hostile import hostile_project, needs_bwrap, records

if TYPE_CHECKING:
    from .conftest import MakeDaemon

pytestmark = [pytest.mark.integration, needs_bwrap]


def _injected(path: Path) -> Path:
    """An sdist of a project named "injected" (what a poisoner would put in)."""
    data = b"[build-system]\nrequires = []\nbuild-backend = 'x'\n"
    with tarfile.open(path, "w:gz") as archive:
        for name, body in (("injected-1.0/pyproject.toml", data), ("injected-1.0/PKG-INFO", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return path


def test_a_blob_rewritten_by_a_hook_is_refused_and_evicted(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    victim = hostile_project(tmp_path / "victim", name="victims-project")
    with Client(daemon.address, autostart=False) as client:
        first = client.open_session("uploader")
        digest = first.upload(victim)
        assert b"Name: victims-project" in first.metadata(digest).result().metadata
        blob = daemon.state_dir / "blobs" / digest.removeprefix("sha256:")
        # A local principal's hook (not sandboxed) overwrites the cached blob.
        poison = _injected(tmp_path / "injected-1.0.tar.gz")
        copier = hostile_project(
            tmp_path / "poisoner",
            name="poisoner",
            copy={"from": str(poison), "to": str(blob)},
        )
        call = client.open_session("poisoner").metadata(str(copier))
        found = records(call)
        call.result()
        assert any(r.get("copied") == "ok" for r in found), found
        assert hashlib.sha256(blob.read_bytes()).hexdigest() != blob.name

        later = client.open_session("later")
        with pytest.raises(RequestFailed) as refused:
            later.metadata(digest).result()
        error = refused.value
        assert error.status == grpc.StatusCode.DATA_LOSS
        assert error.kind == pb.FAILURE_KIND_BLOB_CORRUPT
        assert error.path == digest
        assert digest in error.message and "upload it again" in error.message
        # Evicted: the daemon asks for it again, and the next upload replaces it.
        assert client.stub.FindMissingBlobs(pb.FindMissingBlobsRequest(digests=[digest])).missing
        assert later.upload(victim) == digest
        assert b"Name: victims-project" in later.metadata(digest).result().metadata


def test_the_cli_uploads_a_corrupt_blob_again_by_itself(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon()
    project = hostile_project(tmp_path / "proj", name="cli-project")
    env = dict(os.environ, BUILDD_ADDRESS=daemon.address, BUILDD_NO_AUTOSTART="1")
    env["XDG_STATE_HOME"] = str(tmp_path / "first")
    command = [sys.executable, "-m", "buildd_client", "metadata", "--upload", str(project)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [blob] = (daemon.state_dir / "blobs").glob("[0-9a-f]*")
    blob.chmod(0o600)
    blob.write_bytes(_injected(tmp_path / "injected-1.0.tar.gz").read_bytes())
    # Another default session (another state folder): it unpacks the blob afresh.
    env["XDG_STATE_HOME"] = str(tmp_path / "second")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "Name: cli-project" in again.stdout
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_cached_blobs_are_read_only_files(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon()
    with Client(daemon.address, autostart=False) as client:
        digest = client.open_session("ro").upload(hostile_project(tmp_path / "p"))
    blob = daemon.state_dir / "blobs" / digest.removeprefix("sha256:")
    assert blob.stat().st_mode & 0o777 == 0o400
    assert (daemon.state_dir / "blobs").stat().st_mode & 0o777 == 0o700
