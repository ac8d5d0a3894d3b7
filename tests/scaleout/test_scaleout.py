"""Many daemons behind one address: sessions pinned by nginx, and the loss of a daemon.

Three real daemons on loopback behind the real nginx running the reference
configuration (deploy/nginx/nginx.conf: TLS at the proxy, ketama hash of the
x-buildd-session header). The tests run in file order on one cluster: the
sessions are opened first, the loss of a daemon comes last. Where a call
went is checked on the daemons themselves (their status, caches and
metrics) and in nginx's access log, never assumed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.cluster import (
    HEALTH,
    PROXY,
    SESSIONS,
    SPARE_PORT,
    Cluster,
    ScaleDaemon,
    kill,
    seeded_session_ids,
)
from support.ketama import Ring
from support.projects import probe_project
from support.remote import TOKENS

GATE_BACKEND = Path(__file__).with_name("gate_backend.py")
CALL_TIMEOUT = 20.0


def _project(root: Path, tag: str, gate: Path | None = None) -> Path:
    """A probe project unique to ``tag`` (so its digest is), 2 MiB of it incompressible:
    more than nginx's default request body limit of 1 MiB."""
    project = probe_project(root / tag, root / f"{tag}.log", name=f"p-{tag.lower()}")
    shutil.copy(GATE_BACKEND, project / "_probe" / "gate_backend.py")
    text = (project / "pyproject.toml").read_text()
    (project / "pyproject.toml").write_text(text.replace('"probe_backend"', '"gate_backend"'))
    (project / "tag.txt").write_text(tag)
    (project / "noise.bin").write_bytes(hashlib.shake_256(tag.encode()).digest(2 << 20))
    if gate is not None:
        (project / "gate.json").write_text(
            json.dumps({"started": str(gate / f"{tag}.started"), "go": str(gate / "go")})
        )
    return project


def _sessions_of(daemon: ScaleDaemon) -> set[str]:
    with daemon.client() as direct:
        return {s.session_id for s in direct.status().sessions}


# ------------------------------------------------------------------ spread --


@pytest.fixture(scope="module")
def opened(cluster: Cluster) -> Cluster:
    """The 60 seeded sessions, opened through the proxy; ``cluster.placement`` says where."""
    ids = seeded_session_ids()
    assert len({i[:8] for i in ids}) == SESSIONS  # access-log prefixes are unambiguous
    with cluster.client() as client:
        for session_id in ids:
            info = client.open_session("scaleout", session_id=session_id).info
            assert info.session_id == session_id
            cluster.placement[session_id] = info.daemon_id
    return cluster


def test_sixty_sessions_spread_over_three_daemons(opened: Cluster) -> None:
    cluster, ids = opened, seeded_session_ids()
    counts = Counter(cluster.placement.values())
    # Fixed names and fixed ids: these counts are the same on every run.
    assert min(counts[d.name] for d in cluster.daemons) >= 0.2 * SESSIONS, counts
    # Exactly where nginx's ketama ring puts each id (support/ketama.py).
    ring, names = cluster.ring(), cluster.by_address()
    assert {i: names[ring.server(i)] for i in ids} == cluster.placement
    # Each daemon holds exactly the sessions the proxy's answers said it holds.
    for daemon in cluster.daemons:
        mine = {i for i, name in cluster.placement.items() if name == daemon.name}
        assert _sessions_of(daemon) == mine, daemon.name


def test_health_checks_answer_through_the_proxy(cluster: Cluster) -> None:
    with cluster.client() as client:
        assert client.health()
    # The plain-text listener for probes, without TLS or token.
    with Client(HEALTH, autostart=False) as plain:
        assert plain.health()
        with pytest.raises(grpc.RpcError) as other:
            plain.stub.GetStatus(pb.GetStatusRequest(), timeout=CALL_TIMEOUT)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- affinity --


def test_every_call_of_a_session_lands_on_its_daemon(opened: Cluster, tmp_path: Path) -> None:
    cluster = opened
    # Two sessions of each daemon.
    chosen = [
        sorted(i for i, name in cluster.placement.items() if name == d.name)[k]
        for d in cluster.daemons
        for k in range(2)
    ]
    digests: dict[str, str] = {}
    built: dict[str, int] = Counter()
    with cluster.client() as client:
        for session_id in chosen:
            session = client.join_session(session_id)
            digest = session.upload(_project(tmp_path, session_id[:8]))
            digests[session_id] = digest
            result = session.build(digest, distributions=["wheel"], timeout=120).result()
            [wheel] = session.download(result.artifacts, tmp_path / "out" / session_id[:8])
            assert wheel.stat().st_size == result.artifacts[0].size
            built[cluster.placement[session_id]] += result.artifacts[0].size
            with session.keepalive(0.05) as holder:
                assert holder.wait_heartbeat(CALL_TIMEOUT)
            [status] = client.status(session_id).sessions
            assert status.session_id == session_id
    for daemon in cluster.daemons:
        mine = [i for i in chosen if cluster.placement[i] == daemon.name]
        with daemon.client() as direct:
            envs = {
                s.session_id: list(s.environments)
                for s in direct.status().sessions
                if s.session_id in chosen
            }
        # The build ran here, in an environment of that session, from that upload...
        assert sorted(envs) == sorted(mine), daemon.name
        for session_id in mine:
            [env] = envs[session_id]
            assert env.hook_calls >= 2 and digests[session_id] in env.sources
        # ...the upload is in this daemon's cache and no other's...
        for session_id, digest in digests.items():
            blob = daemon.state_dir / "blobs" / digest.removeprefix("sha256:")
            assert blob.is_file() == (session_id in mine), (daemon.name, session_id)
        # ...and the download came from here.
        sent = _metric(daemon, 'buildd_bytes_total{direction="downloaded"}')
        assert sent == built[daemon.name], daemon.name
    # nginx's own record: every call of these sessions went to their daemon.
    addresses = {d.name: d.address for d in cluster.daemons}
    by_prefix = {i[:8]: i for i in chosen}
    expected = {
        "OpenSession",
        "JoinSession",
        "FindMissingBlobs",
        "UploadBlob",
        "Build",
        "DownloadArtifact",
        "KeepAlive",
        "GetStatus",
    }
    # A call is logged when it ends, and a cancelled KeepAlive ends when nginx
    # has seen the cancel: wait (bounded) for the lines, then check them all.
    deadline = time.monotonic() + CALL_TIMEOUT
    while True:
        seen: dict[str, set[str]] = {i: set() for i in chosen}
        entries = [e for e in cluster.nginx.access_log() if e["session"] in by_prefix]
        for entry in entries:
            seen[by_prefix[entry["session"]]].add(entry["uri"].rsplit("/", 1)[-1])
        if all(expected <= methods for methods in seen.values()):
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)
    for entry in entries:
        session_id = by_prefix[entry["session"]]
        assert entry["upstream"] == addresses[cluster.placement[session_id]], entry
        method = entry["uri"].rsplit("/", 1)[-1]
        # The client ends its KeepAlive stream by cancelling it: no trailer.
        assert (entry["status"], entry["grpc"]) in (
            ("200", "0"),
            *([("200", "-")] if method == "KeepAlive" else []),
        ), entry


def _metric(daemon: ScaleDaemon, sample: str) -> float:
    url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return 0.0


# --------------------------------------------------------------- scale-up --


def test_a_fourth_daemon_takes_over_about_a_quarter_and_gives_it_back(
    opened: Cluster, wheelhouse: Path
) -> None:
    cluster = opened
    three = [d.address for d in cluster.daemons]
    spare = ScaleDaemon(wheelhouse, "d3", SPARE_PORT, cluster.tokens)
    try:
        spare.start()
        ring, bigger = cluster.ring(), Ring([*three, spare.address])
        moved = {i for i in cluster.placement if bigger.server(i) == spare.address}
        # Consistent hashing: a session either stays or moves to the new daemon.
        assert all(bigger.server(i) in (ring.server(i), spare.address) for i in cluster.placement)
        assert 0.1 * SESSIONS <= len(moved) <= 0.4 * SESSIONS, len(moved)
        cluster.nginx.reload([*three, spare.address])
        with cluster.client() as client:
            for session_id, name in cluster.placement.items():
                if session_id in moved:
                    with pytest.raises(RequestFailed) as lost:
                        client.join_session(session_id)
                    assert lost.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
                    assert "unknown to this daemon (d3): open a new session" in lost.value.message
                else:
                    assert client.join_session(session_id).info.daemon_id == name
        # The moved sessions were never lost: their daemons still hold them.
        assert set().union(*(_sessions_of(d) for d in cluster.daemons)) == set(cluster.placement)
        cluster.nginx.reload(three)
        with cluster.client() as client:
            for session_id, name in cluster.placement.items():
                assert client.join_session(session_id).info.daemon_id == name
    finally:
        spare.cleanup()


# --------------------------------------------------------------- the loss --


def test_losing_a_daemon(opened: Cluster, tmp_path: Path) -> None:
    cluster = opened
    victim = cluster.by_name("d1")
    survivors = [d for d in cluster.daemons if d is not victim]
    ring, names = cluster.ring(), cluster.by_address()
    lost = sorted(i for i, name in cluster.placement.items() if name == victim.name)
    kept = sorted(i for i, name in cluster.placement.items() if name != victim.name)
    gate = tmp_path / "gate"
    gate.mkdir()
    outcomes: dict[str, object] = {}

    def build(session_id: str, digest: str) -> None:
        with cluster.client() as own:
            try:
                session = own.join_session(session_id)
                result = session.build(digest, distributions=["wheel"], timeout=120).result()
                outcomes[session_id] = session.download(result.artifacts, tmp_path / session_id)
            except RequestFailed as exc:
                outcomes[session_id] = exc

    # One build running on every daemon when one of them dies.
    running = {
        d.name: sorted(i for i, n in cluster.placement.items() if n == d.name)[2]
        for d in cluster.daemons
    }
    threads = []
    with cluster.client() as client:
        for session_id in running.values():
            digest = client.join_session(session_id).upload(
                _project(tmp_path, session_id[:8], gate)
            )
            thread = threading.Thread(target=build, args=(session_id, digest))
            thread.start()
            threads.append(thread)
        for session_id in running.values():
            started = gate / f"{session_id[:8]}.started"
            deadline = time.monotonic() + 60
            while not started.exists():
                assert time.monotonic() < deadline, f"the build of {session_id} never started"
                time.sleep(0.02)
        kill(victim)

        # Its running build ends at once, with an error (no hang)...
        threads[1].join(CALL_TIMEOUT)
        assert not threads[1].is_alive()
        failed = outcomes[running["d1"]]
        assert isinstance(failed, RequestFailed), failed
        assert failed.kind == pb.FAILURE_KIND_UNAVAILABLE, failed
        assert failed.message.startswith("the call broke off before its end"), failed

        # ...and each of its sessions gets the typed error, from the next daemon
        # on the ring, naming the session and saying to open a new one.
        for session_id in lost:
            started = time.monotonic()
            with pytest.raises(RequestFailed) as gone:
                client.join_session(session_id)
            assert time.monotonic() - started < CALL_TIMEOUT
            answering = names[ring.server_without(session_id, [victim.address])]
            assert gone.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
            assert gone.value.status == grpc.StatusCode.NOT_FOUND
            assert gone.value.message == (
                f"session {session_id!r} is unknown to this daemon ({answering}): open a new "
                "session (the daemon that held it may have stopped or been lost, or it ended "
                "long ago)"
            )

        # Work for a lost session creates nothing on the daemon that answers.
        orphan = lost[0]
        answering = cluster.by_name(names[ring.server_without(orphan, [victim.address])])
        session = client.join_session(kept[0])  # a Session object to misuse
        session.info.session_id = orphan
        project = _project(tmp_path, "orphan")
        with pytest.raises(RequestFailed) as upload:
            session.upload(project)
        assert upload.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
        some_digest = "sha256:" + hashlib.sha256(b"orphan").hexdigest()
        failure = session.build(some_digest, distributions=["wheel"], timeout=CALL_TIMEOUT)
        with pytest.raises(RequestFailed) as refused:
            failure.result()
        assert refused.value.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
        assert orphan not in _sessions_of(answering)
        assert not any(_has_upload(d, project) for d in survivors)

        # The other daemons' builds go on and finish without an error.
        (gate / "go").touch()
        for thread in (threads[0], threads[2]):
            thread.join(120)
        for name in ("d0", "d2"):
            [wheel] = outcomes[running[name]]  # type: ignore[misc]
            assert wheel.name.endswith(".whl") and wheel.stat().st_size > 0
        # Their sessions are all still there, on their daemons.
        for daemon in survivors:
            mine = {i for i in kept if cluster.placement[i] == daemon.name}
            assert _sessions_of(daemon) == mine

        # A new session opens on a live daemon, and builds there.
        fresh = client.open_session("after the loss")
        assert fresh.info.daemon_id in {d.name for d in survivors}
        digest = fresh.upload(_project(tmp_path, "fresh"))
        assert fresh.build(digest, distributions=["wheel"], timeout=120).result().artifacts

    # The client's default session: a remembered id of a lost session is
    # reopened on a live daemon, and the build works.
    state = tmp_path / "state"
    (state / "buildd").mkdir(parents=True)
    (state / "buildd" / "sessions.json").write_text(json.dumps({PROXY: lost[1]}))
    token = tmp_path / "alice.token"
    token.write_text(TOKENS["alice"] + "\n")
    token.chmod(0o600)
    project = _project(tmp_path, "cli")
    env = dict(os.environ, XDG_STATE_HOME=str(state), BUILDD_NO_AUTOSTART="1")
    env.pop("BUILDD_SESSION", None)
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(str(repo / p) for p in ("proto", "client"))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "buildd_client",
            "--address",
            PROXY,
            "--tls-ca",
            str(cluster.ca),
            "--token-file",
            str(token),
            "-q",
            "build",
            "--upload",
            "--wheel",
            str(project),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    [wheel] = run.stdout.split()
    assert Path(wheel).is_file() and Path(wheel).parent == project / "dist"
    reopened = json.loads((state / "buildd" / "sessions.json").read_text())[PROXY]
    assert reopened != lost[1]
    with cluster.client() as client:
        assert client.join_session(reopened).info.daemon_id in {d.name for d in survivors}


def _has_upload(daemon: ScaleDaemon, project: Path) -> bool:
    tag = (project / "tag.txt").read_text()
    return any(
        tag.encode() in _gunzip(blob)
        for blob in (daemon.state_dir / "blobs").glob("*")
        if blob.is_file()
    )


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except OSError:
        return b""
