"""Real projects, real backends (setuptools, hatchling, flit_core), real wheels."""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support.projects import (
    flit_project,
    hatchling_project,
    legacy_setuptools_project,
    probe_project,
    read_probe_log,
    setuptools_project,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from buildd_client import Client

pytestmark = pytest.mark.integration

PROJECTS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "setuptools": (setuptools_project, "demo_setuptools", "1.0"),
    "legacy": (legacy_setuptools_project, "demo_legacy", "2.0"),
    "hatchling": (hatchling_project, "demo_hatch", "3.0"),
    "flit": (flit_project, "demo_flit", "4.0"),
}


def _wheel_metadata(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name)


@pytest.mark.parametrize("kind", sorted(PROJECTS))
def test_metadata_then_wheel_agree(client: Client, tmp_path: Path, kind: str) -> None:
    make, dist_name, version = PROJECTS[kind]
    source = make(tmp_path / kind)
    session = client.open_session(f"backends-{kind}")
    prepared = session.metadata(str(source)).result()
    assert f"Version: {version}".encode() in prepared.metadata
    out = tmp_path / "out"
    result = session.build(
        str(source), distributions=("wheel",), output_directory=str(out)
    ).result()
    [artifact] = result.artifacts
    wheel = Path(artifact.path)
    assert wheel.parent == out
    assert wheel.name.startswith(f"{dist_name}-{version}-")
    assert wheel.stat().st_size == artifact.size
    # Metadata and wheel agree (rule 6), byte for byte.
    assert _wheel_metadata(wheel) == prepared.metadata
    envs = client.status(session.id).sessions[0].environments
    assert len(envs) == 1
    assert envs[0].interpreter
    assert envs[0].python_version == ".".join(map(str, sys.version_info[:3]))
    session.close()


def test_default_build_is_sdist_then_wheel_from_it(client: Client, tmp_path: Path) -> None:
    source = hatchling_project(tmp_path / "both")
    session = client.open_session("backends-default")
    result = session.build(str(source), wheel_from_sdist=True).result()
    sdist, wheel = (Path(a.path) for a in result.artifacts)
    assert sdist.parent == wheel.parent == source / "dist"
    assert sdist.name == "demo_hatch-3.0.tar.gz"
    assert wheel.name.startswith("demo_hatch-3.0-") and wheel.name.endswith("-none-any.whl")
    with tarfile.open(sdist) as tar:
        assert "demo_hatch-3.0/src/demo_hatch/__init__.py" in tar.getnames()
    with zipfile.ZipFile(wheel) as archive:
        assert "demo_hatch/__init__.py" in archive.namelist()
    session.close()


def test_editable_wheel(client: Client, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "editable")
    session = client.open_session("backends-editable")
    result = session.build(
        str(source), distributions=("editable",), output_directory=str(tmp_path / "o")
    ).result()
    [artifact] = result.artifacts
    with zipfile.ZipFile(artifact.path) as archive:
        assert any(name.endswith(".pth") for name in archive.namelist())
    session.close()


def test_sdist_file_as_source(client: Client, tmp_path: Path) -> None:
    source = flit_project(tmp_path / "flit")
    session = client.open_session("backends-sdist-source")
    [sdist] = (
        session.build(str(source), distributions=("sdist",), output_directory=str(tmp_path / "s"))
        .result()
        .artifacts
    )
    [wheel] = (
        session.build(sdist.path, distributions=("wheel",), output_directory=str(tmp_path / "w"))
        .result()
        .artifacts
    )
    assert Path(wheel.path).name.startswith("demo_flit-4.0-")
    # Without an output folder, the wheel goes next to the sdist it came from.
    [beside] = session.build(sdist.path, distributions=("wheel",)).result().artifacts
    assert Path(beside.path).parent == Path(sdist.path).parent
    session.close()
    assert Path(beside.path).is_file()


def test_config_settings_reach_the_backend(client: Client, tmp_path: Path) -> None:
    log = tmp_path / "probe.log"
    source = probe_project(tmp_path / "cs", log)
    session = client.open_session("backends-config")
    session.build(
        str(source),
        distributions=("wheel",),
        output_directory=str(tmp_path / "o"),
        config_settings={"single": "1", "repeated": ["a", "b"]},
    ).result()
    for record in read_probe_log(log):
        assert record["config_settings"] == {"single": "1", "repeated": ["a", "b"]}
    session.close()
