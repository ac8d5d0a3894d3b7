"""Unit tests of buildd_server.environments.interpreters, against the machine's real Pythons."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

import packaging
import pytest
from packaging.markers import default_environment

from buildd_server.environments import interpreters
from buildd_server.environments.interpreters import resolve_interpreter
from buildd_server.errors import InterpreterNotFound, InvalidRequest

if TYPE_CHECKING:
    from collections.abc import Iterator

PYENV_ROOT = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
MINORS = ("3.10", "3.11", "3.12", "3.13")


def installed(minor: str) -> Path | None:
    """The newest pyenv-installed interpreter of ``minor`` (e.g. "3.12"), if any."""
    found = []
    for exe in PYENV_ROOT.glob(f"versions/{minor}.*/bin/python{minor}"):
        release = exe.parent.parent.name.split(".")
        if all(part.isdigit() for part in release):
            found.append((tuple(int(p) for p in release), exe))
    return max(found)[1] if found else None


def need(minor: str) -> Path:
    exe = installed(minor)
    if exe is None:
        pytest.skip(f"Python {minor} is not installed under {PYENV_ROOT}/versions")
    return exe


def reported_version(exe: Path | str) -> str:
    out = subprocess.run(
        [str(exe), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    interpreters.clear_cache()
    yield
    interpreters.clear_cache()


@pytest.fixture
def probe_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Records every subprocess the module starts."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting(args: list[str], **kwargs: Any) -> Any:
        calls.append(list(args))
        return real_run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", counting)
    return calls


def test_own_interpreter_facts() -> None:
    found = resolve_interpreter("")
    assert found.version == platform.python_version()
    assert found.implementation == sys.implementation.name
    assert found.platform == sysconfig.get_platform()
    assert found.marker_environment() == dict(default_environment())
    assert found.markers == tuple(sorted(found.marker_environment().items()))
    assert found.identity() == (
        found.executable,
        found.implementation,
        found.version,
        found.platform,
    )
    # The base interpreter, never the dev venv's python.
    assert os.path.isabs(found.executable)
    assert os.path.realpath(found.executable) == found.executable
    assert Path(found.executable).is_relative_to(os.path.realpath(sys.base_prefix))
    assert reported_version(found.executable) == platform.python_version()


@pytest.mark.parametrize("minor", MINORS)
def test_markers_equal_packaging_inside_that_interpreter(minor: str) -> None:
    exe = need(minor)
    # Run the same packaging inside the other interpreter, from this venv.
    packaging_parent = str(Path(packaging.__file__).parent.parent)
    code = (
        f"import json, sys; sys.path.insert(0, {packaging_parent!r}); "
        "from packaging.markers import default_environment; "
        "print(json.dumps(default_environment()))"
    )
    out = subprocess.run([str(exe), "-I", "-c", code], capture_output=True, text=True, check=True)
    expected = json.loads(out.stdout)
    found = resolve_interpreter(minor)
    assert found.marker_environment() == expected
    assert found.marker_environment()["python_version"] == minor


@pytest.mark.parametrize("minor", MINORS)
@pytest.mark.parametrize("template", ["{minor}", "python{minor}", "{full}"])
def test_version_specs(minor: str, template: str) -> None:
    exe = need(minor)
    full = exe.parent.parent.name
    found = resolve_interpreter(template.format(minor=minor, full=full))
    assert found.version.startswith(minor + ".")
    if template == "{full}":
        assert found.version == full
    assert reported_version(found.executable) == found.version


@pytest.mark.parametrize("minor", ["3.10", "3.12"])
@pytest.mark.parametrize("copies", [False, True])
def test_venv_python_resolves_to_its_base(tmp_path: Path, minor: str, copies: bool) -> None:
    exe = need(minor)
    venv = tmp_path / "a venv ü"
    cmd = [str(exe), "-m", "venv", "--without-pip", str(venv)]
    subprocess.run([*cmd, "--copies"] if copies else cmd, check=True)
    via_venv = resolve_interpreter(str(venv / "bin" / "python"))
    direct = resolve_interpreter(str(exe))
    assert via_venv.executable == os.path.realpath(exe)
    assert via_venv == direct


def test_failing_shim_on_path_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = need("3.12")
    shims = tmp_path / "shims"
    shims.mkdir()
    script(shims / "python3.12", "echo 'pyenv: python3.12: command not found' >&2; exit 127")
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.defpath}")
    monkeypatch.setenv("PYENV_ROOT", str(PYENV_ROOT))
    found = resolve_interpreter("3.12")
    assert found.version.startswith("3.12.")
    assert found.executable == os.path.realpath(exe)


def test_candidate_of_other_version_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A "python3.12" on PATH that is really this interpreter, 3.1x != 3.12.
    if sys.version_info[:2] == (3, 12):
        pytest.skip("needs a current interpreter other than 3.12")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3.12").symlink_to(sys.executable)
    (fake / "python3.1").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(fake))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "no-pyenv"))
    for spec in ("3.12", "3.1"):
        with pytest.raises(InterpreterNotFound) as caught:
            resolve_interpreter(spec)
        assert repr(spec) in caught.value.message
        assert f"is {platform.python_version()}" in caught.value.message


def test_pyenv_versions_folder_is_searched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    bindir = tmp_path / "pyenv" / "versions" / platform.python_version() / "bin"
    bindir.mkdir(parents=True)
    (bindir / f"python{current}").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    assert resolve_interpreter(current).version == platform.python_version()


def test_pyenv_newest_version_is_tried_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe_calls: list[list[str]]
) -> None:
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    versions = tmp_path / "pyenv" / "versions"
    # "9.9.9" holds a python{current} too, but its folder name rules it out.
    for name in ("miniconda3", "9.9.9", f"{current}.0", f"{current}.99", f"{current}.100rc1"):
        (versions / name / "bin").mkdir(parents=True)
        script(versions / name / "bin" / f"python{current}", f'exec "{sys.executable}" "$@"')
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    resolve_interpreter(current)
    assert probe_calls[0][0] == str(versions / f"{current}.100rc1" / "bin" / f"python{current}")
    assert not [call for call in probe_calls if "9.9.9" in call[0]]


@pytest.mark.parametrize(
    "spec",
    ["foo", "3", "python", "python3", "./python", "bin/python3.12", " 3.12", "3.12.x", "3.12-dev"],
)
def test_malformed_spec(spec: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_interpreter(spec)
    assert caught.value.message.startswith("python: ")
    assert repr(spec) in caught.value.message


def test_unknown_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    with pytest.raises(InterpreterNotFound, match=r"'3\.99'"):
        resolve_interpreter("3.99")


def test_not_an_interpreter(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    noise = script(tmp_path / "noise", "echo hello")
    failing = script(tmp_path / "failing", "echo boom >&2; exit 3")
    cases: list[tuple[Path, str]] = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path, "not an executable file"),
        (plain, "not an executable file"),
        (noise, "unexpected answer"),
        (failing, "exited with status 3: boom"),
    ]
    for path, words in cases:
        with pytest.raises(InterpreterNotFound) as caught:
            resolve_interpreter(str(path))
        assert str(path) in caught.value.message
        assert words in caught.value.message


@pytest.mark.parametrize(("minor", "words"), [("3.7", "at least 3.8"), ("2.7", "Unknown option")])
def test_too_old(minor: str, words: str) -> None:
    exe = need(minor)
    with pytest.raises(InterpreterNotFound, match=words):
        resolve_interpreter(str(exe))


def test_probe_env_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDD_TEST_SECRET", "leaked")
    tell = script(tmp_path / "tell", 'echo "secret=[$BUILDD_TEST_SECRET]" >&2; exit 1')
    with pytest.raises(InterpreterNotFound) as caught:
        resolve_interpreter(str(tell))
    assert "secret=[]" in caught.value.message


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_probe_is_cached_by_path_and_mtime(tmp_path: Path, probe_calls: list[list[str]]) -> None:
    wrapper = script(tmp_path / "py", f'exec "{sys.executable}" "$@"')
    first = resolve_interpreter(str(wrapper))
    assert resolve_interpreter(str(wrapper)) is first
    assert len(probe_calls) == 1
    assert probe_calls[0][:3] == [str(wrapper), "-I", "-c"]
    bump_mtime(wrapper)
    assert resolve_interpreter(str(wrapper)) == first
    assert len(probe_calls) == 2


def test_definite_failure_is_cached(tmp_path: Path, probe_calls: list[list[str]]) -> None:
    failing = script(tmp_path / "failing", "exit 1")
    for _ in range(2):
        with pytest.raises(InterpreterNotFound, match="status 1"):
            resolve_interpreter(str(failing))
    assert len(probe_calls) == 1
    bump_mtime(failing)
    with pytest.raises(InterpreterNotFound):
        resolve_interpreter(str(failing))
    assert len(probe_calls) == 2
