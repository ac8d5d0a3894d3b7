"""design.md's eight rules, each shown with evidence from a probe backend.

The probe records, for every hook call, its pid, ``sys.prefix``, the
instance's id (paths are stable: a new instance may take the slot, and so the
path, of a discarded one), start and end times and what it saw of its
environment; the assertions are about those records, never about wall time.

The shared daemon keeps a store: every test here runs as the principal
``local``, so a test may lease an instance an earlier test left in the store.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed
from support.projects import probe_project, read_probe_log, setuptools_project

if TYPE_CHECKING:
    from support.daemon import DaemonProcess

pytestmark = pytest.mark.integration


def _overlaps(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of hook calls that ran in the same environment at the same time."""
    found = []
    by_prefix: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_prefix.setdefault(record["prefix"], []).append(record)
    for calls in by_prefix.values():
        calls.sort(key=lambda r: r["start"])
        for before, after in itertools.pairwise(calls):
            if after["start"] < before["end"]:
                found.append((before, after))
    return found


def test_rule1_lease_is_exclusive(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    # Eight sources, one key, a pool capped at 2 (the shared daemon's
    # --max-envs-per-key): six requests must wait, none may share an instance.
    sources = [probe_project(tmp_path / f"p{i}", log, hold=0.2) for i in range(8)]
    session = client.open_session("rule1")
    failures: list[BaseException] = []

    def run(source: Path) -> None:
        try:
            session.metadata(str(source)).result()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    records = read_probe_log(log)
    assert len(records) == 16  # get_requires + prepare_metadata per source
    assert _overlaps(records) == []
    prefixes = {r["prefix"] for r in records}
    assert 1 <= len(prefixes) <= 2
    status = client.status(session.id)
    assert len(status.sessions[0].environments) == len(prefixes)
    session.close()


def test_rule2_source_keeps_its_instance(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    first = probe_project(tmp_path / "first", log)
    other = probe_project(tmp_path / "other", log)
    session = client.open_session("rule2")
    session.metadata(str(first)).result()
    # Another source takes the (only idle) instance meanwhile...
    session.metadata(str(other)).result()
    # ...and concurrent requests for the first source all go to its instance.
    threads = [
        threading.Thread(
            target=lambda: session.build(
                str(first), distributions=("wheel",), output_directory=str(tmp_path / "out")
            ).result()
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = [r for r in read_probe_log(log) if r["root"] == str(first)]
    assert len({r["prefix"] for r in records}) == 1
    # Metadata's two hooks, then build_wheel per build: the unchanged tree's
    # get_requires_for_build_wheel is answered from the cache.
    assert len(records) == 2 + 3
    assert _overlaps(records) == []
    session.close()


def test_rule3_dynamic_requirements_go_into_the_same_instance(
    client: Client, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(
        tmp_path / "dyn", log, requires=["Flit-Core >= 3.4 ; python_version >= '3'"]
    )
    session = client.open_session("rule3")
    requires = session.get_requires(str(source)).result()
    assert list(requires.dynamic_requirements) == ["Flit-Core >= 3.4 ; python_version >= '3'"]
    session.build(
        str(source), distributions=("wheel",), output_directory=str(tmp_path / "o")
    ).result()
    records = read_probe_log(log)
    assert len({r["prefix"] for r in records}) == 1
    prefix = Path(records[0]["prefix"])
    assert list(prefix.glob("lib/python*/site-packages/flit_core"))
    envs = client.status(session.id).sessions[0].environments
    assert len(envs) == 1
    assert envs[0].path == str(prefix)
    assert "flit-core>=3.4" in envs[0].requirements
    assert envs[0].key_id == requires.key_id
    session.close()


def test_rule4_each_hook_is_a_fresh_clean_subprocess(
    client: Client, daemon: DaemonProcess, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "fresh", log)
    session = client.open_session("rule4")
    session.metadata(str(source)).result()
    session.build(
        str(source),
        distributions=("wheel",),
        output_directory=str(tmp_path / "o"),
        no_cache=True,  # every hook runs, each in its own process
    ).result()
    records = read_probe_log(log)
    assert len(records) == 4
    assert len({r["pid"] for r in records}) == 4
    assert daemon.pid not in {r["pid"] for r in records}
    for record in records:
        assert record["cwd"] == str(source)
        assert record["inherited_marker"] is None
        # The test harness starts the daemon with PYTHONPATH set: it must not leak.
        assert record["pythonpath"] is None
        assert record["virtual_env"] == record["prefix"]
        assert record["path0"] == os.path.join(record["prefix"], "bin")
        assert record["no_user_site"] is True
        assert record["stdin_eof"] is True
    session.close()


def test_rule5_failed_hook_discards_the_instance(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "crash", log, fail="prepare_metadata_for_build_wheel")
    session = client.open_session("rule5")
    with pytest.raises(RequestFailed) as failure:
        session.metadata(str(source)).result()
    assert failure.value.kind == pb.FAILURE_KIND_BACKEND_FAILED
    assert any("probe asked to fail" in line for line in failure.value.last_lines)
    first = read_probe_log(log)[0]
    assert first["instance"]
    assert not Path(first["prefix"]).exists()
    assert client.status(session.id).sessions[0].environments == []
    # The next request works, in a new instance.
    (source / "probe.json").write_text(
        (source / "probe.json")
        .read_text()
        .replace('"fail": "prepare_metadata_for_build_wheel"', '"fail": null')
    )
    session.metadata(str(source)).result()
    assert read_probe_log(log)[-1]["instance"] not in (None, first["instance"])
    session.close()


def test_rule5_tampered_environment_is_rebuilt(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "tamper")
    session = client.open_session("rule5b")
    session.metadata(str(source)).result()
    env = client.status(session.id).sessions[0].environments[0]
    init = next(Path(env.path).glob("lib/python*/site-packages/setuptools/__init__.py"))
    init.write_text("raise ImportError('tampered')\n")
    # A cached answer runs nothing in the instance; the hooks must run here.
    result = session.metadata(str(source), no_cache=True).result()
    assert b"Name: demo-setuptools" in result.metadata
    envs = client.status(session.id).sessions[0].environments
    assert env.id not in [e.id for e in envs]
    # The tampered instance is gone; a new one may have taken its slot (and path).
    assert all(
        "tampered" not in p.read_text()
        for p in Path(env.path).glob("lib/python*/site-packages/setuptools/__init__.py")
    )
    session.close()


def test_rule6_build_wheel_gets_the_prepared_metadata(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "meta", log, check_prefix=True)
    session = client.open_session("rule6")
    prepared = session.metadata(str(source)).result()
    session.build(
        str(source), distributions=("wheel",), output_directory=str(tmp_path / "o")
    ).result()
    wheel_call = next(r for r in read_probe_log(log) if r["hook"] == "build_wheel")
    assert wheel_call["metadata_directory"] == prepared.dist_info_path
    session.close()


def test_rule7_environments_outlive_their_session_in_the_principals_store(
    client: Client, daemon: DaemonProcess, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "own", log)
    one = client.open_session("rule7-one")
    one.metadata(str(source)).result()
    first = read_probe_log(log)[0]
    # The path comes from principal, key and slot, never from the session.
    assert one.id not in first["prefix"]
    assert Path(first["prefix"]).relative_to(daemon.state_dir / "envs")
    closed = one.close()
    assert closed.environments_stored == 1 and closed.environments_deleted == 0
    assert Path(first["prefix"]).exists()
    assert not (daemon.state_dir / "sessions" / one.id).exists()
    with pytest.raises(RequestFailed) as gone:
        one.metadata(str(source)).result()
    assert gone.value.status == grpc.StatusCode.NOT_FOUND
    # A later session of the same principal adopts the very instance.
    two = client.open_session("rule7-two")
    events = list(two.metadata(str(source)))
    later = read_probe_log(log)[2:]
    assert {r["instance"] for r in later} == {first["instance"]}
    assert {r["prefix"] for r in later} == {first["prefix"]}
    adopted = [e.phase for e in events if e.phase.kind == pb.PHASE_KIND_ENVIRONMENT_ADOPTED]
    assert [a.environment_path for a in adopted] == [first["prefix"]]
    assert not [e for e in events if e.phase.kind == pb.PHASE_KIND_CREATING_ENVIRONMENT]
    two.close()
    assert not (daemon.state_dir / "sessions" / two.id).exists()


def test_rule7_without_the_store_environments_end_with_their_session(
    make_daemon: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    process = make_daemon(["--no-store"])
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "own", log)
    with Client(process.address, autostart=False) as client:
        one = client.open_session("rule7-one")
        two = client.open_session("rule7-two")
        one.metadata(str(source)).result()
        two.metadata(str(source)).result()
        prefixes = [r["prefix"] for r in read_probe_log(log)]
        assert prefixes[0] == prefixes[1] and prefixes[2] == prefixes[3]
        assert prefixes[0] != prefixes[2]
        assert Path(prefixes[0]).exists()
        closed = one.close()
        assert (closed.environments_deleted, closed.environments_stored) == (1, 0)
        assert not Path(prefixes[0]).exists()
        assert Path(prefixes[2]).exists()
        with pytest.raises(RequestFailed) as gone:
            one.metadata(str(source)).result()
        assert gone.value.status == grpc.StatusCode.NOT_FOUND
        two.close()
        assert not Path(prefixes[2]).exists()
        for session in (one, two):
            assert not (process.state_dir / "sessions" / session.id).exists()
        assert not list((process.state_dir / "envs").glob("*/*/*"))


def test_rule8_bad_input_is_a_clear_error_and_hurts_nobody(client: Client, tmp_path: Path) -> None:
    good = setuptools_project(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pyproject.toml").write_text("[build-system\nrequires = 1\n")
    bystander = client.open_session("rule8-bystander")
    bystander.metadata(str(good)).result()
    before = client.status(bystander.id).sessions[0].environments[0]

    session = client.open_session("rule8")
    with pytest.raises(RequestFailed) as malformed:
        session.metadata(str(bad)).result()
    assert malformed.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert str(bad / "pyproject.toml") in malformed.value.message
    with pytest.raises(RequestFailed) as missing:
        session.metadata(str(tmp_path / "nowhere")).result()
    assert missing.value.status == grpc.StatusCode.NOT_FOUND
    assert str(tmp_path / "nowhere") in missing.value.message

    bystander.metadata(str(good), no_cache=True).result()  # the hooks run again, there
    after = client.status(bystander.id).sessions[0].environments[0]
    assert after.path == before.path
    assert after.hook_calls == before.hook_calls + 2
    session.close()
    bystander.close()
