"""The store: environments that outlive sessions, per principal, at stable paths.

Evidence comes from the probe backend (which instance, by the id in its
marker, and which path ran each hook, and when) and from the daemon's own
status, phases and metrics; never from wall time.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from buildd_client.credentials import Credentials
from support.daemon import DaemonProcess, short_tempdir
from support.projects import probe_project, read_probe_log
from support.reliability import wait_until
from support.remote import TOKENS, write_token_file

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]
FLIT = ["flit_core<4"]


def _client(process: DaemonProcess) -> Client:
    return Client(process.address, autostart=False)


def _store_dirs(process: DaemonProcess) -> list[Path]:
    return sorted(p for p in (process.state_dir / "envs").glob("*/*/*") if p.name.isdigit())


def _instance_id(path: Path) -> str:
    return str(json.loads((path / "buildd-env.json").read_text())["id"])


def _phases(events: list[pb.Event], kind: int) -> list[pb.Phase]:
    return [e.phase for e in events if e.HasField("phase") and e.phase.kind == kind]


def _overlaps(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of hook calls that ran in the same instance at the same time."""
    found = []
    by_instance: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_instance.setdefault(record["instance"], []).append(record)
    for calls in by_instance.values():
        calls.sort(key=lambda r: r["start"])
        for before, after in itertools.pairwise(calls):
            if after["start"] < before["end"]:
                found.append((before, after))
    return found


# ------------------------------------------------------------ stable paths --


def test_a_source_gets_the_same_path_in_every_session_and_after_a_restart(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    log = tmp_path / "probe.log"
    first = probe_project(tmp_path / "first", log, hold=0.5)
    second = probe_project(tmp_path / "second", log, hold=0.5)
    with _client(process) as client:
        # Two sources of one key at once: two slots of that key.
        session = client.open_session("one")
        calls = [session.metadata(str(first)), session.metadata(str(second))]
        for call in calls:
            call.result()
        session.close()
        slots = {r["root"]: r["prefix"] for r in read_probe_log(log)}
        assert len(set(slots.values())) == 2
        assert {Path(p).name for p in slots.values()} == {"0", "1"}
        # Used in this order, the first source's instance is now the most
        # recently used; the second source still gets its own.
        for _ in range(2):
            session = client.open_session("again")
            session.metadata(str(first)).result()
            session.metadata(str(second)).result()
            session.close()
    assert process.stop() == 0
    again = make_daemon(root=process.root)
    with _client(again) as client:
        session = client.open_session("after-restart")
        # The second source first: the index on disk still says which slot it used.
        session.metadata(str(second)).result()
        session.metadata(str(first)).result()
        session.close()
    records = read_probe_log(log)
    for record in records:
        assert record["prefix"] == slots[record["root"]]
        assert "sessions" not in Path(record["prefix"]).parts
    # The same instances, not only the same paths.
    assert len({r["instance"] for r in records}) == 2


def test_two_sessions_of_one_principal_get_two_slots_never_one_at_once(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "shared", log, hold=0.5)
    with _client(process) as client:
        # The source has a stored instance that both sessions prefer.
        warm = client.open_session("warm")
        warm.metadata(str(source)).result()
        warm.close()
        sessions = [client.open_session(f"s{i}") for i in range(2)]
        start = threading.Barrier(2)
        failures: list[BaseException] = []

        def run(session: Any) -> None:
            try:
                start.wait(30)
                session.metadata(str(source)).result()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures
        for session in sessions:
            session.close()
    records = read_probe_log(log)[2:]
    # The session that got the stored instance took get_requires' answer from
    # it (hookcache.py: the instance keeps it for the principal's sessions);
    # the other ran both hooks in a new slot.
    assert sorted(r["hook"] for r in records) == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert _overlaps(records) == []
    # Each session ran its hooks in one instance, and the two differ.
    prefixes = {r["prefix"] for r in records}
    assert {Path(p).name for p in prefixes} == {"0", "1"}
    assert len({r["instance"] for r in records}) == 2


# -------------------------------------------------------------- principals --


@pytest.fixture
def two_principals(make_daemon: MakeDaemon, tmp_path: Path) -> DaemonProcess:
    tokens = write_token_file(tmp_path / "tokens")
    return make_daemon(
        ["--token-file", str(tokens), "--admin", "ops", "--allow-path", str(tmp_path)]
    )


def _as(process: DaemonProcess, principal: str) -> Client:
    credentials = Credentials(token=TOKENS[principal])
    return Client(process.address, autostart=False, credentials=credentials)


def test_another_principal_never_sees_leases_or_learns_the_path(
    two_principals: DaemonProcess, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "src", log)
    with _as(two_principals, "alice") as alice:
        session = alice.open_session("alice")
        session.metadata(str(source)).result()
        session.close()
        alice_status = alice.status()
        [alice_key] = alice_status.store
    [alice_env] = alice_key.environments
    assert alice_env.principal == "alice" and alice_env.state == pb.ENVIRONMENT_STATE_IDLE
    with _as(two_principals, "bob") as bob:
        session = bob.open_session("bob")
        events = list(session.metadata(str(source)))
        # Bob's store was empty: his own instance was created, none adopted.
        assert _phases(events, pb.PHASE_KIND_CREATING_ENVIRONMENT)
        assert not _phases(events, pb.PHASE_KIND_ENVIRONMENT_ADOPTED)
        status = bob.status()
        session.close()
        # Neither the path nor the principal's folder shows anywhere.
        assert alice_env.path not in str(status)
        assert str(Path(alice_env.path).parent.parent) not in str(status)
        assert [row.principal for row in status.store] == ["bob"]
        assert status.daemon.store_environments == 1
        removed = bob.prune_store()
        assert removed.environments_removed == 1
        with pytest.raises(RequestFailed) as denied:
            bob.prune_store(all_principals=True)
        assert denied.value.status == grpc.StatusCode.PERMISSION_DENIED
    bob_records = read_probe_log(log)[2:]
    assert {r["instance"] for r in bob_records}.isdisjoint({alice_env.id})
    assert all(r["prefix"] != alice_env.path for r in bob_records)
    # Bob's prune left Alice's store alone; an admin sees both principals' stores.
    assert Path(alice_env.path).is_dir()
    with _as(two_principals, "ops") as ops:
        assert [row.principal for row in ops.status().store] == ["alice"]


# --------------------------------------------------------------- validation --


def _tamper_remove(env: Path) -> None:
    next(env.glob("lib/python*/site-packages/flit_core/common.py")).unlink()


def _tamper_pth(env: Path) -> None:
    site = next(env.glob("lib/python*/site-packages"))
    (site / "zz-sneaky.pth").write_text("import os\n")


def _tamper_upgrade(env: Path, wheelhouse: Path) -> None:
    from buildd_server.environments.installers import find_uv

    uv = find_uv()
    assert uv is not None
    argv = [uv, "pip", "install", "--no-config", "--python", str(env / "bin" / "python")]
    argv += ["--no-index", "--find-links", str(wheelhouse), "flit_core>=4"]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@pytest.mark.parametrize("how", ["file-removed", "pth-added", "package-upgraded"])
def test_a_tampered_store_instance_is_discarded_and_rebuilt(
    make_daemon: MakeDaemon, wheelhouse: Path, tmp_path: Path, how: str
) -> None:
    process = make_daemon()
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "src", log, static_requires=FLIT)
    with _client(process) as client:
        session = client.open_session("before")
        session.metadata(str(source)).result()
        session.close()
        [stored] = _store_dirs(process)
        old_id = _instance_id(stored)
        if how == "file-removed":
            _tamper_remove(stored)
        elif how == "pth-added":
            _tamper_pth(stored)
        else:
            _tamper_upgrade(stored, wheelhouse)
        session = client.open_session("after")
        events = list(session.metadata(str(source)))
        session.close()
        assert client.status().daemon.store_environments == 1
    assert _phases(events, pb.PHASE_KIND_CREATING_ENVIRONMENT)
    assert not _phases(events, pb.PHASE_KIND_ENVIRONMENT_ADOPTED)
    last = read_probe_log(log)[-1]
    assert last["instance"] not in (None, old_id)
    # Rebuilt as the key says, at the slot the source used: the same path.
    assert last["prefix"] == str(stored)
    site = next(stored.glob("lib/python*/site-packages"))
    assert (site / "flit_core" / "common.py").is_file()
    assert not (site / "zz-sneaky.pth").exists()
    assert [p.name for p in site.glob("flit_core-*.dist-info")] == ["flit_core-3.12.0.dist-info"]
    logged = [json.loads(x) for x in process.log().splitlines() if x.startswith("{")]
    invalid = [e for e in logged if e["event"] == "environment_invalid"]
    assert [(e["env"], e["when"]) for e in invalid] == [(old_id, "borrow")]


# ------------------------------------------------------------------- bounds --


def _stored(client: Client) -> dict[str, pb.EnvironmentInfo]:
    return {env.path: env for row in client.status().store for env in row.environments}


def test_the_size_cap_evicts_least_recently_used_idle_instances_never_a_leased_one(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    sources = [probe_project(tmp_path / f"s{i}", log, hold=0.3) for i in range(3)]
    process = make_daemon()
    with _client(process) as client:
        session = client.open_session("fill")
        for call in [session.metadata(str(s)) for s in sources]:
            call.result()  # three at once: three slots
        # Used one after the other (past the metadata cache, which would lease
        # nothing): s0's instance is the least recently used.
        for source in sources:
            session.metadata(str(source), no_cache=True).result()
        session.close()
        paths = {r["root"]: r["prefix"] for r in read_probe_log(log)}
        sizes = {path: env.size_bytes for path, env in _stored(client).items()}
        total = client.status().daemon.store_bytes
    assert len(sizes) == 3 and min(sizes.values()) > 0
    assert process.stop() == 0

    # Room for all but half an instance: one must go, the least recently used.
    cap = total - min(sizes.values()) // 2
    again = make_daemon(["--store-size", str(cap)], root=process.root)
    with _client(again) as client:
        wait_until(
            lambda: len(_stored(client)) == 2, "the size cap to evict one instance", limit=60.0
        )
        assert set(_stored(client)) == {paths[str(sources[1])], paths[str(sources[2])]}
        # Both remaining instances are leased (their hooks hold)...
        holder = client.open_session("holder")
        held = []
        for source in sources[1:]:
            probe_project(source, log, hold=5.0)
            call = holder.metadata(str(source))
            for event in call:
                if event.HasField("log") and "starting" in event.log.text:
                    break
            held.append(call)
        # ...when a new instance (in the evicted s0's slot) pushes the store over the cap.
        newcomer = client.open_session("newcomer")
        newcomer.metadata(str(sources[0])).result()
        newcomer.close()
        wait_until(lambda: len(_stored(client)) == 2, "the size cap to evict again", limit=60.0)
        kept = _stored(client)
        # The two older ones are leased: never evicted; the idle newcomer goes.
        assert set(kept) == {paths[str(sources[1])], paths[str(sources[2])]}
        assert {env.state for env in kept.values()} == {pb.ENVIRONMENT_STATE_LEASED}
        for call in held:
            call.result()
        holder.close()
    logged = [json.loads(x) for x in again.log().splitlines() if x.startswith("{")]
    evicted = [e["path"] for e in logged if e["event"] == "environment_evicted"]
    assert evicted == [paths[str(sources[0])], paths[str(sources[0])]]


def test_idle_instances_past_the_ttl_are_deleted(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    process = make_daemon(["--store-ttl", "2s"])
    source = probe_project(tmp_path / "src", tmp_path / "probe.log")
    with _client(process) as client:
        session = client.open_session("ttl")
        session.metadata(str(source)).result()
        session.close()
        [stored] = _store_dirs(process)
        wait_until(lambda: not stored.exists(), "the TTL to delete the idle instance", limit=60.0)
        assert client.status().daemon.store_environments == 0


def test_prune_removes_idle_instances_and_the_cli_reports_it(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    process = make_daemon()
    log = tmp_path / "probe.log"
    idle = probe_project(tmp_path / "idle", log, static_requires=FLIT)
    busy = probe_project(tmp_path / "busy", log, hold=30)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "buildd_client", "--address", process.address, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    with _client(process) as client:
        session = client.open_session("prune")
        session.metadata(str(idle)).result()
        call = session.metadata(str(busy))
        for event in call:
            if event.HasField("log") and "starting" in event.log.text:
                break
        shown = json.loads(cli("status", "--json").stdout)
        assert shown["daemon"]["store_enabled"] is True
        assert shown["daemon"]["store_environments"] == 2
        rows = {row["environments"][0]["state"] for row in shown["store"]}
        assert rows == {"idle", "leased"}
        assert all(row["size_bytes"] > 0 and row["slots"] == [0] for row in shown["store"])
        recent = json.loads(cli("store", "prune", "--older-than", "1h", "--json").stdout)
        assert recent == {"environments_removed": 0, "bytes_freed": 0, "environments_kept": 2}
        done = cli("store", "prune", "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["environments_removed"] == 1 and answer["environments_kept"] == 1
        assert answer["bytes_freed"] > 0
        call.cancel()
        session.close()
    text = cli("status").stdout
    assert "store:" in text
    bad = cli("store", "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "soon" in bad.stderr


def test_without_the_store_prune_is_refused_and_status_says_off(
    make_daemon: MakeDaemon,
) -> None:
    process = make_daemon(["--no-store"])
    with _client(process) as client:
        status = client.status()
        assert status.daemon.store_enabled is False and list(status.store) == []
        with pytest.raises(RequestFailed) as refused:
            client.prune_store()
        assert refused.value.status == grpc.StatusCode.FAILED_PRECONDITION
        assert "--no-store" in refused.value.message


# -------------------------------------------------------------------- crashes --


class _StallingIndex:
    """A find-links page on loopback whose one wheel never finishes downloading."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.endswith(".whl"):
                    owner.asked.set()
                    owner.release.wait(120)  # bounded: the test ends it sooner
                    self.send_error(503)
                    return
                name = b"stall_pkg-1.0-py3-none-any.whl"
                body = b'<a href="' + name + b'">' + name + b"</a>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:
                # uv asks for the wheel's headers first: stall there already.
                if self.path.endswith(".whl"):
                    owner.asked.set()
                    owner.release.wait(120)
                self.send_error(503)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stalling_index() -> Iterator[_StallingIndex]:
    index = _StallingIndex()
    yield index
    index.close()


def test_sigkill_during_creation_leaves_nothing_half_made_after_restart(
    make_daemon: MakeDaemon, tmp_path: Path, stalling_index: _StallingIndex
) -> None:
    args = ["--find-links", stalling_index.url]
    process = make_daemon(args)
    log = tmp_path / "probe.log"
    stuck = probe_project(tmp_path / "stuck", log, static_requires=["stall_pkg"])
    good = probe_project(tmp_path / "good", log)
    with _client(process) as client:
        session = client.open_session("good")
        session.metadata(str(good)).result()
        session.close()
        [complete] = _store_dirs(process)
        session = client.open_session("crash")
        call = session.metadata(str(stuck))
        creating = ""
        for event in call:
            if event.phase.kind == pb.PHASE_KIND_INSTALLING_REQUIREMENTS:
                creating = event.phase.environment_path
                break
        assert creating
        # The installer is fetching the wheel: the instance is half-made.
        assert stalling_index.asked.wait(60)
        half = Path(creating)
        assert (half / "bin").is_dir() and not (half / "buildd-env.json").exists()
        process.stop(signal.SIGKILL)
        call.cancel()
    again = make_daemon(args, root=process.root)
    assert not half.exists()
    assert _store_dirs(again) == [complete]
    with _client(again) as client:
        session = client.open_session("after")
        events = list(session.metadata(str(good)))
        assert [p.environment_path for p in _phases(events, pb.PHASE_KIND_ENVIRONMENT_ADOPTED)] == [
            str(complete)
        ]
        session.close()
    logged = [json.loads(x) for x in again.log().splitlines() if x.startswith("{")]
    adopted = [e for e in logged if e["event"] == "store_adopted"]
    # The last start (the log holds both daemons'): one kept, the half-made one removed.
    assert (adopted[-1]["kept"], adopted[-1]["removed"]) == (1, 1)


# ---------------------------------------------------------------- full disk --


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 64 MiB tmpfs: a real file system that a test can fill to the last byte."""
    mount = short_tempdir("bd-disk-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        mount.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_during_adoption_is_resource_exhausted_and_loses_nothing(
    wheelhouse: Path, tmp_path: Path, small_disk: Path
) -> None:
    process = DaemonProcess(wheelhouse)
    process.state_dir = small_disk / "state"
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "src", log)
    try:
        process.start()
        with _client(process) as client:
            session = client.open_session("before")
            session.metadata(str(source)).result()
            session.close()
            [stored] = _store_dirs(process)
            before = _instance_id(stored)
            index = (stored.parent.parent / "store.json").read_text()
            filler = _fill(small_disk)
            later = client.open_session("adopting")
            with pytest.raises(RequestFailed) as full:
                later.metadata(str(source)).result()
            assert full.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Nothing lost: the instance, its marker and the index are whole.
            assert _instance_id(stored) == before
            assert (stored.parent.parent / "store.json").read_text() == index
            [shown] = _stored(client).values()
            assert shown.path == str(stored) and shown.state == pb.ENVIRONMENT_STATE_IDLE
            filler.unlink()
            events = list(later.metadata(str(source)))
            later.close()
        assert read_probe_log(log)[-1]["instance"] == before
        assert [p.environment_path for p in _phases(events, pb.PHASE_KIND_ENVIRONMENT_LEASED)] == [
            str(stored)
        ]
    finally:
        process.cleanup()
