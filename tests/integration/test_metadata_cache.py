"""The metadata cache: an unchanged source is answered without a hook, a changed one never is.

Every case runs real backends in a real daemon: first the answer for the
tree as it is (then a repeat must be a cache hit, byte-identical to a fresh
hook run), then one change of the kind a backend reads, after which the
answer must be new, not cached, and again equal to a fresh run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed, Session
from support.daemon import DaemonProcess
from support.metadata_cases import CASES, Case, git, scm_project
from support.projects import probe_project, read_probe_log, setuptools_project, write_probe_config


def _metadata(session: Session, source: Path, **kwargs: object) -> pb.MetadataResult:
    return session.metadata(str(source), **kwargs).result()  # type: ignore[arg-type]


def _cached_then_fresh(session: Session, source: Path) -> pb.MetadataResult:
    """A repeat of an unchanged tree is a hit, byte-identical to the hook's own answer."""
    call = session.metadata(str(source))
    events = list(call)
    cached = call.result()
    assert cached.cached
    hits = [e.phase for e in events if e.phase.kind == pb.PHASE_KIND_CACHE_HIT]
    assert [p.hook for p in hits] == [
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
    ]
    assert all(p.source_fingerprint == cached.source_fingerprint for p in hits)
    assert not [e for e in events if e.phase.kind == pb.PHASE_KIND_RUNNING_HOOK]
    fresh = _metadata(session, source, no_cache=True)
    assert not fresh.cached
    assert fresh.metadata == cached.metadata
    assert fresh.dist_info_name == cached.dist_info_name
    assert fresh.source_fingerprint == cached.source_fingerprint
    return cached


def _changed(session: Session, source: Path, before: pb.MetadataResult) -> pb.MetadataResult:
    """After a change: not from the cache, a new fingerprint, and a fresh run agrees."""
    after = _metadata(session, source)
    assert not after.cached
    assert after.source_fingerprint != before.source_fingerprint
    assert after.metadata != before.metadata
    assert _metadata(session, source, no_cache=True).metadata == after.metadata
    return after


@pytest.fixture
def session(client: Client) -> Session:
    return client.open_session("metadata-cache")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_change_gives_new_metadata_and_nothing_else_does(
    session: Session, tmp_path: Path, case: Case
) -> None:
    if not case.available():
        pytest.skip("needs git")
    source = case.make(tmp_path / case.name)
    first = _metadata(session, source)
    assert case.before.encode() in first.metadata
    _cached_then_fresh(session, source)
    case.change(source)
    after = _changed(session, source, first)
    assert case.after.encode() in after.metadata
    _cached_then_fresh(session, source)
    session.close()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_new_commit_is_seen_too(session: Session, tmp_path: Path) -> None:
    source = scm_project(tmp_path / "commit")
    first = _metadata(session, source)
    (source / "demo_scm.py").write_text("X = 3\n")
    git(source, "commit", "-q", "-am", "three")
    after = _changed(session, source, first)
    assert b"Version: 1.1.dev2+g" in after.metadata
    session.close()


def test_a_fresh_copy_of_an_unchanged_tree_still_hits(session: Session, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "copy")
    first = _metadata(session, source)
    # What benchmarks do before every run: the tree afresh, same path.
    shutil.rmtree(source)
    setuptools_project(tmp_path / "copy")
    again = _metadata(session, source)
    assert again.cached
    assert again.metadata == first.metadata
    session.close()


def test_build_outputs_do_not_count(session: Session, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "outputs")
    first = _metadata(session, source)
    # setuptools wrote build/ and *.egg-info while preparing; builds write dist/.
    assert any(source.glob("*.egg-info"))
    session.build(str(source), distributions=("wheel",)).result()
    assert any((source / "dist").glob("*.whl"))
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "x.pyc").write_bytes(b"\0")
    again = _metadata(session, source)
    assert again.cached
    assert again.source_fingerprint == first.source_fingerprint
    session.close()


def test_get_requires_is_cached_and_the_warm_build_skips_it(
    session: Session, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "req", log, requires=["Flit-Core >= 3.4"])
    first = session.get_requires(str(source)).result()
    # Installing the dynamic requirement made a new generation of the
    # instance: the first answer is not stored, the second call's is.
    second = session.get_requires(str(source)).result()
    third = session.get_requires(str(source)).result()
    assert [first.cached, second.cached, third.cached] == [False, False, True]
    assert list(third.dynamic_requirements) == list(first.dynamic_requirements)
    assert third.key_id == second.key_id
    hooks = [r["hook"] for r in read_probe_log(log)]
    assert hooks == ["get_requires_for_build_wheel"] * 2
    out = tmp_path / "out"
    for _ in range(2):
        session.build(str(source), distributions=("wheel",), output_directory=str(out)).result()
    hooks = [r["hook"] for r in read_probe_log(log)]
    assert hooks[2:] == ["build_wheel", "build_wheel"]
    session.close()


def test_cached_metadata_is_passed_to_the_build_of_the_same_instance(
    session: Session, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "rule6", log, check_prefix=True)
    first = _metadata(session, source)
    cached = _metadata(session, source)
    assert cached.cached
    assert cached.dist_info_path == first.dist_info_path
    session.build(
        str(source), distributions=("wheel",), output_directory=str(tmp_path / "o")
    ).result()
    records = read_probe_log(log)
    wheel_call = next(r for r in records if r["hook"] == "build_wheel")
    assert wheel_call["metadata_directory"] == cached.dist_info_path
    assert {r["prefix"] for r in records} == {wheel_call["prefix"]}
    session.close()


def test_other_settings_or_interpreter_or_session_miss(
    client: Client, session: Session, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "keys", log)
    _metadata(session, source)
    assert _metadata(session, source).cached
    assert not _metadata(session, source, config_settings={"x": "1"}).cached
    if shutil.which("python3.10"):  # another interpreter: another key, another instance
        assert not _metadata(session, source, python="3.10").cached
        assert _metadata(session, source, python="3.10").cached
    other = client.open_session("metadata-cache-other")
    assert not _metadata(other, source).cached
    other.close()
    session.close()


def test_a_discarded_instance_takes_its_answers_along(session: Session, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "discard", log)
    _metadata(session, source)
    # A build that kills its hook process discards the instance (rule 5)...
    write_probe_config(source, log, fail="build_wheel")
    with pytest.raises(RequestFailed):
        session.build(
            str(source), distributions=("wheel",), output_directory=str(tmp_path / "o")
        ).result()
    write_probe_config(source, log)  # the very bytes of the first request
    # ...so the same tree as before is prepared afresh, in a new instance.
    again = _metadata(session, source)
    assert not again.cached
    # (Paths are stable: the new instance may take the discarded one's slot.)
    instances = [r["instance"] for r in read_probe_log(log)]
    assert instances[-1] not in (None, instances[0])
    session.close()


def test_the_cache_survives_nothing_of_a_closed_session(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    source = setuptools_project(tmp_path / "closed")
    with Client(daemon.address, autostart=False) as client:
        first = client.open_session("cache-a")
        _metadata(first, source)
        assert _metadata(first, source).cached
        first.close()
        second = client.open_session("cache-b")
        assert not _metadata(second, source).cached
        second.close()


def test_a_later_session_reuses_its_store_instances_get_requires_answer(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "later", log)
    out = tmp_path / "out"

    def build(client: Client, name: str) -> list[pb.Event]:
        session = client.open_session(name)
        call = session.build(str(source), distributions=("wheel",), output_directory=str(out))
        events = list(call)
        call.result()
        session.close()  # its instance goes back to the store
        return events

    def hits(events: list[pb.Event]) -> list[str]:
        return [e.phase.hook for e in events if e.phase.kind == pb.PHASE_KIND_CACHE_HIT]

    with Client(daemon.address, autostart=False) as client:
        assert hits(build(client, "first")) == []
        later = build(client, "later")
        assert hits(later) == ["get_requires_for_build_wheel"]
        records = read_probe_log(log)
        assert [r["hook"] for r in records] == [
            "get_requires_for_build_wheel",
            "build_wheel",
            "build_wheel",  # the later session ran only this,
        ]
        assert records[2]["instance"] == records[0]["instance"]  # in the very instance
        # A changed tree is asked again, in whichever session.
        with (source / "pyproject.toml").open("a") as file:
            file.write("\n# edited\n")
        assert hits(build(client, "edited")) == []
        assert [r["hook"] for r in read_probe_log(log)][3:] == [
            "get_requires_for_build_wheel",
            "build_wheel",
        ]
        # Another principal never leases the instance, so never gets its answers:
        # tests/integration/test_store.py proves the instance stays the principal's.
