"""Regression test for uv issue 14269: metadata and wheel must see the same build tool.

A backend like PyTorch's (CMake finding ``bin/ninja`` of the build environment)
records the absolute path of a build tool while preparing metadata, in its
build folder inside the source tree, and uses that path again when it builds
the wheel. uv prepared the metadata in one environment and built the wheel in
another, after deleting the first: the recorded tool was gone. buildd keeps a
source on the environment instance it first used (rules 2 and 6), so the path
must still exist and still be the same file in the same environment.

The build tool here is ``compat-tool``, the console script of a tiny wheel
made by the test and served from a private find-links folder; the backend is
in-tree (``backend-path``) and fails loudly when the environments differ. A
control test runs the same backend the way uv did, through pyproject_hooks in
two environments, to show that it does fail then.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from typing import TYPE_CHECKING

import pytest
from pyproject_hooks import BuildBackendHookCaller

from buildd_client import Client
from compat import compare, frontends
from compat.daemon import Daemon

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

pytestmark = pytest.mark.integration

TOOL = "compat-tool"

BACKEND = '''\
"""In-tree backend: finds its build tool in prepare_metadata, needs the same one later."""

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

NAME = "tool_path_probe"
VERSION = "1.0"
# In the source tree, like CMakeCache.txt in a CMake build folder.
CACHE = os.path.join("build", "tool-cache.json")
METADATA = "Metadata-Version: 2.1\\nName: tool-path-probe\\nVersion: 1.0\\n"


def _find_tool():
    path = shutil.which("compat-tool")
    if path is None:
        raise RuntimeError("compat-tool is not on PATH: the build requirement is missing")
    # The tool prints the prefix of the environment it runs in.
    prefix = subprocess.run([path], check=True, capture_output=True, text=True).stdout.strip()
    stat = os.stat(path)
    return {
        "path": path,
        "tool_prefix": prefix,
        "sys_prefix": sys.prefix,
        "file_id": [stat.st_dev, stat.st_ino],
    }


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    found = _find_tool()
    if os.path.realpath(found["tool_prefix"]) != os.path.realpath(sys.prefix):
        raise RuntimeError(f"compat-tool runs in {found['tool_prefix']}, not in {sys.prefix}")
    os.makedirs("build", exist_ok=True)
    with open(CACHE, "w", encoding="utf-8") as handle:
        json.dump(found, handle)
    dist_info = f"{NAME}-{VERSION}.dist-info"
    os.makedirs(os.path.join(metadata_directory, dist_info), exist_ok=True)
    with open(os.path.join(metadata_directory, dist_info, "METADATA"), "w") as handle:
        handle.write(METADATA)
    return dist_info


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if not os.path.exists(CACHE):
        raise RuntimeError("build_wheel without prepare_metadata_for_build_wheel first")
    with open(CACHE, encoding="utf-8") as handle:
        cached = json.load(handle)
    if not os.path.exists(cached["path"]):
        raise RuntimeError(
            f"the build tool {cached['path']} recorded by prepare_metadata_for_build_wheel "
            "is gone: metadata and wheel ran in different environments (uv issue 14269)"
        )
    found = _find_tool()
    if found != cached:
        raise RuntimeError(f"build tool changed between hooks: {cached} then {found}")
    if metadata_directory is None:
        raise RuntimeError("build_wheel got no metadata_directory")
    files = {
        f"{NAME}/__init__.py": b"",
        f"{NAME}/tool.json": json.dumps(found).encode(),
        f"{NAME}-{VERSION}.dist-info/METADATA": METADATA.encode(),
        f"{NAME}-{VERSION}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\\nGenerator: tool-backend\\nRoot-Is-Purelib: true\\n"
            b"Tag: py3-none-any\\n"
        ),
    }
    rows = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        rows.append(f"{name},sha256={digest.decode()},{len(data)}")
    rows.append(f"{NAME}-{VERSION}.dist-info/RECORD,,")
    files[f"{NAME}-{VERSION}.dist-info/RECORD"] = ("\\n".join(rows) + "\\n").encode()
    filename = f"{NAME}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return filename
'''


def _wheel(folder: Path, name: str, version: str, files: Mapping[str, bytes]) -> Path:
    """A minimal valid wheel of ``files``, with METADATA, WHEEL and RECORD added."""
    dist_info = f"{name}-{version}.dist-info"
    members = dict(files)
    members[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode()
    )
    members[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    rows = []
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{member},sha256={digest},{len(data)}")
    rows.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(rows) + "\n").encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path


@pytest.fixture(scope="module")
def tool_links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A find-links folder holding only compat-tool's wheel."""
    folder = tmp_path_factory.mktemp("tool-links")
    wheel = _wheel(
        folder,
        "compat_tool",
        "1.0",
        {
            "compat_tool.py": b"import sys\n\n\ndef main():\n    print(sys.prefix)\n",
            "compat_tool-1.0.dist-info/entry_points.txt": (
                b"[console_scripts]\ncompat-tool = compat_tool:main\n"
            ),
        },
    )
    assert compare.record_problems(wheel) == []
    return folder


@pytest.fixture(scope="module")
def daemon(tool_links: Path) -> Iterator[Daemon]:
    index = frontends.IndexOptions(index_url=None, find_links=(str(tool_links),), no_index=True)
    process = Daemon(index).start()
    yield process
    process.cleanup()


def tool_project(root: Path) -> Path:
    (root / "_backend").mkdir(parents=True)
    (root / "_backend" / "tool_backend.py").write_text(BACKEND)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["{TOOL}"]
            build-backend = "tool_backend"
            backend-path = ["_backend"]
            """
        )
    )
    return root


def _tool_in_wheel(wheel: Path) -> dict[str, object]:
    with zipfile.ZipFile(wheel) as archive:
        found: dict[str, object] = json.loads(archive.read("tool_path_probe/tool.json"))
    return found


def test_metadata_then_wheel_use_the_same_tool(daemon: Daemon, tmp_path: Path) -> None:
    source = tool_project(tmp_path / "project")
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("compat/tool-path")
        try:
            prepared = session.metadata(source).result()
            assert b"Name: tool-path-probe" in prepared.metadata
            cached = json.loads((source / "build" / "tool-cache.json").read_text())
            call = session.build(source, distributions=("wheel",), output_directory=tmp_path / "o")
            [artifact] = call.result().artifacts
            assert os.path.exists(str(cached["path"]))
        finally:
            closed = session.close()
    used = _tool_in_wheel(tmp_path / "o" / artifact.filename)
    assert used == cached
    # The tool came from a build environment of this daemon, not from the machine.
    assert str(used["path"]).startswith(str(daemon.root / "state"))
    # ... and that environment, idle, stays in the store when the session
    # closes: the tool keeps its path for the principal's next session.
    assert (closed.environments_stored, closed.environments_deleted) == (1, 0)
    assert os.path.exists(str(used["path"]))


def test_interleaved_sources_each_keep_their_tool(daemon: Daemon, tmp_path: Path) -> None:
    """Two sources with one key: metadata A, metadata B, then wheel A, wheel B."""
    sources = [tool_project(tmp_path / name) for name in ("a", "b")]
    with Client(daemon.address, autostart=False) as client:
        session = client.open_session("compat/tool-path-interleaved")
        try:
            for source in sources:
                session.metadata(source).result()
            wheels = []
            for source in sources:
                call = session.build(
                    source, distributions=("wheel",), output_directory=source / "o"
                )
                [artifact] = call.result().artifacts
                wheels.append(source / "o" / artifact.filename)
        finally:
            session.close()
    for source, wheel in zip(sources, wheels, strict=True):
        assert _tool_in_wheel(wheel) == json.loads(
            (source / "build" / "tool-cache.json").read_text()
        )


def _environment(path: Path, links: Path) -> Path:
    """A virtualenv holding compat-tool, made with uv like buildd's own environments."""
    uv = frontends.find_uv()
    index = frontends.IndexOptions(index_url=None, find_links=(str(links),), no_index=True)
    env = frontends.tool_environment(index, path.parent / f"{path.name}-config")
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(path)], env=env, check=True)
    python = path / "bin" / "python"
    subprocess.run([uv, "pip", "install", "-q", "--python", str(python), TOOL], env=env, check=True)
    return python


def _caller(source: Path, python: Path) -> BuildBackendHookCaller:
    def runner(
        cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(extra_environ or {})
        env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)

    return BuildBackendHookCaller(
        str(source),
        "tool_backend",
        backend_path=["_backend"],
        python_executable=str(python),
        runner=runner,
    )


@pytest.mark.parametrize("first_environment", ["deleted", "kept"])
def test_control_two_environments_break_the_backend(
    tool_links: Path, tmp_path: Path, first_environment: str
) -> None:
    """What uv did: metadata in one environment, the wheel in another. The backend must fail."""
    source = tool_project(tmp_path / "project")
    first = _environment(tmp_path / "env-1", tool_links)
    metadata_directory = tmp_path / "metadata"
    metadata_directory.mkdir()
    _caller(source, first).prepare_metadata_for_build_wheel(str(metadata_directory))
    if first_environment == "deleted":
        shutil.rmtree(tmp_path / "env-1")
    second = _environment(tmp_path / "env-2", tool_links)
    (tmp_path / "out").mkdir()
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _caller(source, second).build_wheel(
            str(tmp_path / "out"), metadata_directory=str(metadata_directory)
        )
    expected = "is gone" if first_environment == "deleted" else "build tool changed"
    assert expected in failure.value.stderr
