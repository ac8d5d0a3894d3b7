"""The compatibility corpus as pytest tests: buildd must build each project as pypa/build does,
on every interpreter of the corpus, side by side in one daemon and one session.

- The fast subset (corpus entries with ``fast = true``: small pure-Python
  projects) runs in ``.ci/run`` on each interpreter without the network once the
  sdists are in ``.cache/compat`` and the test wheelhouse is filled: both
  frontends install only from the wheelhouse (``--no-index --find-links``).
- ``-m corpus`` runs the whole corpus with build requirements from PyPI, exactly
  like ``python compat/run.py``.

A project whose Requires-Python excludes an interpreter is skipped on it, with
the reason; an interpreter the machine lacks skips its tests, with the reason.
A failure message lists every difference and failed step, with reasons.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pytest

from buildd_client import Client
from compat import corpus, frontends
from compat.check import check_project
from compat.daemon import Daemon
from compat.interpreters import Interpreter, prepare_interpreter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from buildd_client import Session

pytestmark = pytest.mark.integration

PROJECTS, INTERPRETERS = corpus.load_corpus_file()
FAST = [p for p in PROJECTS if p.fast]


def _require_build() -> None:
    if importlib.util.find_spec("build") is None:
        pytest.fail("pypa/build is not installed: pip install -e '.[dev]'")


class _Pythons:
    """The run's interpreters, each made ready once (a pypa/build virtualenv)."""

    def __init__(self, index: frontends.IndexOptions, root: Path) -> None:
        self.index = index
        self.root = root
        self.ready: dict[str, Interpreter | str] = {}

    def get(self, label: str) -> Interpreter:
        if label not in self.ready:
            try:
                self.ready[label] = prepare_interpreter(label, self.index, self.root)
            except frontends.StepError as exc:
                self.ready[label] = str(exc)
        found = self.ready[label]
        if isinstance(found, str):
            pytest.skip(f"Python {label} cannot be used here: {found}")
        return found


def _check(
    project: corpus.Project,
    label: str,
    pythons: _Pythons,
    daemon: Daemon,
    session: Session,
    tmp: Path,
) -> None:
    interpreter = pythons.get(label)
    sdist = corpus.fetch_sdist(project)
    result = check_project(project, session, daemon.address, interpreter, sdist, tmp, pythons.index)
    if result.skipped:
        pytest.skip(f"{project.name} {project.version} on Python {label}: {result.skipped}")
    report = "\n".join(f"- {failure}" for failure in result.failures)
    assert result.passed, f"{project.name} {project.version} on Python {label}:\n{report}"
    assert result.metadata_equal and result.wheel_equal and result.metadata_json_equal
    assert result.editable is (True if project.editable else None)


@pytest.fixture(scope="module")
def offline_index(wheelhouse: Path) -> frontends.IndexOptions:
    return frontends.IndexOptions(index_url=None, find_links=(str(wheelhouse),), no_index=True)


@pytest.fixture(scope="module")
def offline_pythons(
    offline_index: frontends.IndexOptions, tmp_path_factory: pytest.TempPathFactory
) -> _Pythons:
    return _Pythons(offline_index, tmp_path_factory.mktemp("pythons-offline"))


@pytest.fixture(scope="module")
def offline_daemon(offline_index: frontends.IndexOptions) -> Iterator[Daemon]:
    _require_build()
    daemon = Daemon(offline_index).start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
def offline_session(offline_daemon: Daemon) -> Iterator[Session]:
    """One session for the whole fast subset, every interpreter side by side."""
    with Client(offline_daemon.address, autostart=False) as client:
        session = client.open_session("compat/fast")
        yield session
        session.close()


@pytest.fixture(scope="module")
def pypi_pythons(tmp_path_factory: pytest.TempPathFactory) -> _Pythons:
    return _Pythons(frontends.IndexOptions(), tmp_path_factory.mktemp("pythons-pypi"))


@pytest.fixture(scope="module")
def pypi_daemon() -> Iterator[Daemon]:
    _require_build()
    daemon = Daemon(frontends.IndexOptions()).start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
def pypi_session(pypi_daemon: Daemon) -> Iterator[Session]:
    with Client(pypi_daemon.address, autostart=False) as client:
        session = client.open_session("compat/corpus")
        yield session
        session.close()


@pytest.mark.parametrize("label", INTERPRETERS)
@pytest.mark.parametrize("project", FAST, ids=[p.key for p in FAST])
def test_fast_subset_from_the_wheelhouse(
    project: corpus.Project,
    label: str,
    offline_pythons: _Pythons,
    offline_daemon: Daemon,
    offline_session: Session,
    tmp_path: Path,
) -> None:
    _check(project, label, offline_pythons, offline_daemon, offline_session, tmp_path)


@pytest.mark.corpus
@pytest.mark.parametrize("label", INTERPRETERS)
@pytest.mark.parametrize("project", PROJECTS, ids=[p.key for p in PROJECTS])
def test_corpus_from_pypi(
    project: corpus.Project,
    label: str,
    pypi_pythons: _Pythons,
    pypi_daemon: Daemon,
    pypi_session: Session,
    tmp_path: Path,
) -> None:
    _check(project, label, pypi_pythons, pypi_daemon, pypi_session, tmp_path)
