"""A token holder's build reaches nothing but its own request.

The daemon serves TLS and tokens; ``bob`` has an uploaded project built (so
the blob cache and bob's session hold his files), then ``alice`` uploads a
hostile project whose backend tries to rewrite bob's cached blob, patch bob's
unpacked source, read the token file, the TLS key and the daemon's /proc,
list the state folder, write into its own environment and into the system,
and leave something in /tmp. Its record, streamed back as a log line, says
what it reached; the files themselves are checked afterwards, and whatever
token it found is replayed against the daemon.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client
from buildd_client.credentials import Credentials
from buildd_client.errors import RequestFailed
from support.hostile import Escapees, hostile_project, needs_bwrap, reached, records

if TYPE_CHECKING:
    from support.remote import RemoteDaemon

pytestmark = [pytest.mark.integration, needs_bwrap]


def _bystander(farm: RemoteDaemon, tmp_path: Path) -> tuple[Client, Any, Path, Path]:
    """bob's session with an uploaded, unpacked, built project: (client, session, blob, source)."""
    source = hostile_project(tmp_path / "bobs", name="bobs-project")
    client = farm.client("bob")
    session = client.open_session("bystander")
    digest = session.upload(source)
    assert b"Name: bobs-project" in session.metadata(digest).result().metadata
    blob = farm.state_dir / "blobs" / digest.removeprefix("sha256:")
    [unpacked] = farm.state_dir.glob(f"sessions/{session.id}/work/upload-*/*/pyproject.toml")
    return client, session, blob, unpacked


# Unique per run: what an earlier (failing) run left must not pass for this one's.
MARK = uuid.uuid4().hex[:12]
SYSTEM_FILE = Path(f"/usr/hostile-was-here-{MARK}")
TMP_MARKER = f"buildd-hostile-tmp-{MARK}"


def _probes(farm: RemoteDaemon, blob: Path, victim: Path, token_file: Path) -> dict[str, Any]:
    state = farm.state_dir
    assert farm.process is not None
    daemon = farm.process.pid
    return {
        "write": [str(blob), str(victim), str(state / "daemon.pid"), str(SYSTEM_FILE)],
        "write_env": True,
        "write_source": True,
        "read": [
            str(token_file),
            str(farm.pki.server),  # the TLS key (and certificate)
            f"/proc/{daemon}/environ",
            f"/proc/{daemon}/cmdline",
            str(blob),
        ],
        "list": [str(state / "blobs"), str(state / "sessions"), str(state)],
        "discover": True,
        "tmp_marker": TMP_MARKER,
    }


def _replay(farm: RemoteDaemon, found: dict[str, str]) -> list[str]:
    """Every token in what the hook read, tried as an admin: the names that worked."""
    worked = []
    for text in found.values():
        for line in text.removeprefix("ok: ").splitlines():
            token = line.partition(":")[2].strip() if ":" in line else line.strip()
            if len(token) < 16 or line.startswith("#"):
                continue
            creds = Credentials(tls_ca=farm.pki.ca.read_bytes(), token=token)
            with Client(farm.address, autostart=False, credentials=creds) as client:
                try:
                    client.status()
                except RequestFailed:
                    continue
                worked.append(line.partition(":")[0])
    return worked


def test_a_hostile_upload_reaches_nothing_outside_its_request(
    farm: RemoteDaemon, token_file: Path, tmp_path: Path
) -> None:
    bob, bobs, blob, victim = _bystander(farm, tmp_path)
    blob_bytes, victim_bytes = blob.read_bytes(), victim.read_bytes()
    pid_file = (farm.state_dir / "daemon.pid").read_bytes()
    source = hostile_project(tmp_path / "alices", **_probes(farm, blob, victim, token_file))
    with farm.client("alice") as alice:
        session = alice.open_session("hostile")
        digest = session.upload(source)
        call = session.metadata(digest)
        first = records(call)
        call.result()
        # A second request: the first one's /tmp must be gone.
        build = session.build(digest, distributions=("wheel",))
        second = records(build)
        build.result()
    assert first and second
    for record in first + second:
        # Its own source tree is the one thing it may write.
        assert list(reached(record, "write")) == [str(Path(_own(record)))], record["write"]
        assert reached(record, "read") == {}, record["read"]
        assert record["list"][str(farm.state_dir / "blobs")].startswith("error")
        assert bobs.id not in record["list"][str(farm.state_dir / "sessions")]
        assert record["discover"] == []
        assert record["tmp_seen"] is False
    # What the files say, whatever the record says.
    assert blob.read_bytes() == blob_bytes
    assert hashlib.sha256(blob_bytes).hexdigest() == blob.name
    assert victim.read_bytes() == victim_bytes
    assert (farm.state_dir / "daemon.pid").read_bytes() == pid_file
    assert not SYSTEM_FILE.exists()
    assert not (Path("/tmp") / TMP_MARKER).exists()
    # Nothing it read works as a token (it read nothing; had it, this would say).
    assert _replay(farm, {**first[0]["read"], **second[0]["read"]}) == []
    # bob's next request is untouched.
    assert b"Name: bobs-project" in bobs.metadata(f"sha256:{blob.name}").result().metadata
    bob.close()


def _own(record: dict[str, Any]) -> str:
    [own] = [path for path in record["write"] if path.endswith("written-by-the-hook")]
    return own


def test_an_allowed_path_is_writable_and_its_neighbours_are_not(
    farm: RemoteDaemon, allowed_root: Path, escapees: Escapees
) -> None:
    neighbour = allowed_root / "neighbour"
    neighbour.mkdir()
    (neighbour / "file.txt").write_text("untouched\n")
    source = hostile_project(
        allowed_root / "hostile",
        write=[str(neighbour / "file.txt")],
        write_source=True,
        grandchild={"socket": str(escapees.path), "hold_stdout": True},
        grandchild_hook="prepare_metadata_for_build_wheel",
    )
    with farm.client("alice") as alice:
        call = alice.open_session("allowed").metadata(str(source))
        found = records(call)
        call.result()
    written = {k: v for record in found for k, v in reached(record, "write").items()}
    assert set(written) == {str(source / "written-by-the-hook")}
    assert (neighbour / "file.txt").read_text() == "untouched\n"
    # The sandboxed hook's grandchild went with it, too.
    escapees.accept()
    assert escapees.gone_now()


def test_the_daemon_reports_its_containment(farm: RemoteDaemon) -> None:
    with farm.client("alice") as alice:
        info = alice.status().daemon
    assert info.remote_containment == pb.CONTAINMENT_SANDBOX
    assert info.local_containment == pb.CONTAINMENT_PID
    assert info.containment_setting == "auto"
    assert list(info.containment_notes) == []


def test_a_token_holder_cannot_have_its_own_program_run_as_the_interpreter(
    farm: RemoteDaemon, tmp_path: Path
) -> None:
    # An interpreter runs outside the sandbox (probed, then run by virtualenv):
    # a "python" of the upload's own, at the path its first call revealed, must
    # never be started.
    folder = Path(tempfile.mkdtemp(prefix="bd-fake-python-", dir="/var/tmp"))
    marker = folder / "it-ran"
    source = hostile_project(tmp_path / "fake", name="fake-python")
    fake = source / "python3"
    fake.write_text(f'#!/bin/sh\necho ran > {marker}\nexec /usr/bin/python3 "$@"\n')
    fake.chmod(0o755)
    try:
        with farm.client("alice") as alice:
            session = alice.open_session("fake-python")
            digest = session.upload(source)
            call = session.metadata(digest)
            [cwd] = {record["cwd"] for record in records(call)}
            call.result()
            with pytest.raises(RequestFailed) as refused:
                session.metadata(digest, python=f"{cwd}/python3").result()
        assert refused.value.status == grpc.StatusCode.PERMISSION_DENIED
        assert refused.value.field == "context.python"
        assert "none of the daemon's interpreters" in refused.value.message
        assert not marker.exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
