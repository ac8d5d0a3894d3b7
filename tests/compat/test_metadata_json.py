"""``buildd-client metadata --json`` prints what ``python -m build --metadata`` prints.

A small setuptools project with every multiple-use field an IDE reads
(classifiers, platforms, project URLs, keywords, dependencies), through the
real daemon and the real command line, against pypa/build run on the same
tree with the same packaging: the same object, printed the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from buildd_client import Client
from compat import compare, frontends
from compat.corpus import REPO
from compat.daemon import Daemon

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.integration

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "demo-json"
version = "1.2"
description = "Café au lait"
keywords = ["one", "two"]
classifiers = ["Programming Language :: Python :: 3", "Typing :: Typed"]
dependencies = ["packaging>=20", "tomli; python_version < '3.11'"]
urls = {Homepage = "https://example.org", Source = "https://example.org/src"}

[tool.setuptools]
platforms = ["linux", "macos"]
"""


@pytest.fixture(scope="module")
def index(wheelhouse: Path) -> frontends.IndexOptions:
    return frontends.IndexOptions(index_url=None, find_links=(str(wheelhouse),), no_index=True)


@pytest.fixture(scope="module")
def daemon(index: frontends.IndexOptions) -> Iterator[Daemon]:
    process = Daemon(index).start()
    yield process
    process.cleanup()


def test_metadata_json_is_what_pypa_build_prints(
    daemon: Daemon, index: frontends.IndexOptions, tmp_path: Path
) -> None:
    source = tmp_path / "demo-json"
    (source / "demo_json").mkdir(parents=True)
    (source / "demo_json" / "__init__.py").write_text("")
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "README").write_text("The long description.\n")

    env = {**os.environ, "PYTHONPATH": f"{REPO / 'proto'}{os.pathsep}{REPO / 'client'}"}
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("compat/metadata-json")
    command = [sys.executable, "-m", "buildd_client", "--address", daemon.address]
    ours = subprocess.run(
        [*command, "--session", session.id, "-q", "metadata", "--json", str(source)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert ours.returncode == 0, ours.stderr
    data = json.loads(ours.stdout)
    # The keys of packaging's RawMetadata, as pypa/build prints them.
    assert data["classifiers"] == ["Programming Language :: Python :: 3", "Typing :: Typed"]
    assert data["platforms"] == ["linux", "macos"]
    assert data["project_urls"] == {
        "Homepage": "https://example.org",
        "Source": "https://example.org/src",
    }
    assert data["keywords"] == ["one", "two"]
    assert data["summary"] == "Café au lait"
    assert not {"classifier", "platform", "project_url"} & set(data)

    theirs = subprocess.run(
        [sys.executable, "-m", "build", "--metadata", "--installer", "uv", str(source)],
        capture_output=True,
        text=True,
        env=frontends.tool_environment(index, tmp_path / "tool"),
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert theirs.returncode == 0, theirs.stderr
    assert compare.metadata_json_differences(ours.stdout, theirs.stdout) == []
