"""The compatibility corpus as pytest tests: buildd must build each project as pypa/build does.

- The fast subset (corpus entries with ``fast = true``: small pure-Python
  projects) runs in ``.ci/run`` without the network once the sdists are in
  ``.cache/compat`` and the test wheelhouse is filled: both frontends install
  only from the wheelhouse (``--no-index --find-links``).
- ``-m corpus`` runs the whole corpus with build requirements from PyPI, exactly
  like ``python compat/run.py``.

A failure message lists every difference and failed step, with reasons.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pytest

from buildd_client import Client
from compat import run as compat

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

PROJECTS = compat.load_corpus()
FAST = [p for p in PROJECTS if p.fast]


def _require_build() -> None:
    if importlib.util.find_spec("build") is None:
        pytest.fail("pypa/build is not installed: pip install -e '.[dev]'")


def _check(project: compat.Project, address: str, index: compat.IndexOptions, tmp: Path) -> None:
    sdist = compat.fetch_sdist(project)
    with Client(address, autostart=False) as client:
        result = compat.check_project(project, client, sdist, tmp, index)
    report = "\n".join(f"- {failure}" for failure in result.failures)
    assert result.passed, f"{project.name} {project.version}:\n{report}"
    assert result.metadata_equal and result.wheel_equal
    assert result.editable is (True if project.editable else None)


@pytest.fixture(scope="module")
def offline_index(wheelhouse: Path) -> compat.IndexOptions:
    return compat.IndexOptions(index_url=None, find_links=(str(wheelhouse),), no_index=True)


@pytest.fixture(scope="module")
def offline_daemon(offline_index: compat.IndexOptions) -> Iterator[compat.Daemon]:
    _require_build()
    daemon = compat.Daemon(offline_index).start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="module")
def pypi_daemon() -> Iterator[compat.Daemon]:
    _require_build()
    daemon = compat.Daemon(compat.IndexOptions()).start()
    yield daemon
    daemon.cleanup()


@pytest.mark.parametrize("project", FAST, ids=[p.key for p in FAST])
def test_fast_subset_from_the_wheelhouse(
    project: compat.Project,
    offline_daemon: compat.Daemon,
    offline_index: compat.IndexOptions,
    tmp_path: Path,
) -> None:
    _check(project, offline_daemon.address, offline_index, tmp_path)


@pytest.mark.corpus
@pytest.mark.parametrize("project", PROJECTS, ids=[p.key for p in PROJECTS])
def test_corpus_from_pypi(
    project: compat.Project, pypi_daemon: compat.Daemon, tmp_path: Path
) -> None:
    _check(project, pypi_daemon.address, compat.IndexOptions(), tmp_path)
