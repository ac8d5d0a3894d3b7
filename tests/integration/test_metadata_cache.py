"""The metadata cache: an unchanged source is answered without a hook, a changed one never is.

Every case runs real backends in a real daemon: first the answer for the
tree as it is (then a repeat must be a cache hit, byte-identical to a fresh
hook run), then one change of the kind a backend reads, after which the
answer must be new, not cached, and again equal to a fresh run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client import Client, RequestFailed, Session
from support.daemon import DaemonProcess
from support.projects import (
    flit_project,
    hatchling_project,
    legacy_setuptools_project,
    probe_project,
    read_probe_log,
    setuptools_project,
    write_probe_config,
)


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


def _field(metadata: bytes, name: str) -> list[str]:
    prefix = f"{name}: "
    return [
        line[len(prefix) :] for line in metadata.decode().splitlines() if line.startswith(prefix)
    ]


@pytest.fixture
def session(client: Client) -> Session:
    return client.open_session("metadata-cache")


def test_flit_version_bump_in_the_module(session: Session, tmp_path: Path) -> None:
    source = flit_project(tmp_path / "flitver")
    text = (source / "pyproject.toml").read_text().replace('version = "4.0"\n', "")
    (source / "pyproject.toml").write_text(
        text.replace('description = "a flit test project"', 'dynamic = ["version", "description"]')
    )
    (source / "demo_flit.py").write_text('"""A flit module."""\n__version__ = "4.0"\n')
    first = _metadata(session, source)
    assert _field(first.metadata, "Version") == ["4.0"]
    _cached_then_fresh(session, source)
    (source / "demo_flit.py").write_text('"""A flit module."""\n__version__ = "4.1"\n')
    after = _changed(session, source, first)
    assert _field(after.metadata, "Version") == ["4.1"]
    _cached_then_fresh(session, source)
    session.close()


def _git(cwd: Path, *args: str) -> None:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
        GIT_CONFIG_NOSYSTEM="1",
    )
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_setuptools_scm_new_tag(session: Session, tmp_path: Path) -> None:
    source = tmp_path / "scm"
    source.mkdir()
    (source / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["setuptools>=64", "setuptools-scm>=8"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "demo-scm"
            dynamic = ["version"]

            [tool.setuptools]
            py-modules = ["demo_scm"]

            [tool.setuptools_scm]
            """
        )
    )
    (source / "demo_scm.py").write_text("X = 1\n")
    (source / ".gitignore").write_text("build/\n*.egg-info/\n")
    _git(source, "init", "-q", "-b", "main")
    _git(source, "add", ".")
    _git(source, "commit", "-q", "-m", "one")
    _git(source, "tag", "v1.0")
    first = _metadata(session, source)
    assert _field(first.metadata, "Version") == ["1.0"]
    _cached_then_fresh(session, source)
    # A new commit on top: a development version of the next release.
    (source / "demo_scm.py").write_text("X = 2\n")
    _git(source, "commit", "-q", "-am", "two")
    second = _changed(session, source, first)
    assert _field(second.metadata, "Version")[0].startswith("1.1.dev1+g")
    _cached_then_fresh(session, source)
    # Only a tag changes now: no file of the worktree does.
    _git(source, "tag", "v1.1")
    third = _changed(session, source, second)
    assert _field(third.metadata, "Version") == ["1.1"]
    _cached_then_fresh(session, source)
    session.close()


def test_dependency_added_in_pyproject(session: Session, tmp_path: Path) -> None:
    source = hatchling_project(tmp_path / "deps")
    first = _metadata(session, source)
    assert _field(first.metadata, "Requires-Dist") == []
    _cached_then_fresh(session, source)
    pyproject = source / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + 'dependencies = ["packaging>=24"]\n')
    after = _changed(session, source, first)
    assert _field(after.metadata, "Requires-Dist") == ["packaging>=24"]
    _cached_then_fresh(session, source)
    session.close()


def test_setup_py_edit(session: Session, tmp_path: Path) -> None:
    source = legacy_setuptools_project(tmp_path / "legacy")
    first = _metadata(session, source)
    assert _field(first.metadata, "Version") == ["2.0"]
    _cached_then_fresh(session, source)
    setup = source / "setup.py"
    setup.write_text(setup.read_text().replace("version='2.0'", "version='2.1'"))
    after = _changed(session, source, first)
    assert _field(after.metadata, "Version") == ["2.1"]
    _cached_then_fresh(session, source)
    session.close()


def test_readme_edit_changes_the_long_description(session: Session, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "readme")
    pyproject = source / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            'description = "a setuptools test project"',
            'description = "a setuptools test project"\nreadme = "README.md"',
        )
    )
    (source / "README.md").write_text("# Demo\n\nFirst words.\n")
    first = _metadata(session, source)
    assert b"First words." in first.metadata
    _cached_then_fresh(session, source)
    (source / "README.md").write_text("# Demo\n\nOther words.\n")
    after = _changed(session, source, first)
    assert b"Other words." in after.metadata
    _cached_then_fresh(session, source)
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
    prefixes = [r["prefix"] for r in read_probe_log(log)]
    assert prefixes[-1] != prefixes[0]
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
