"""EnvironmentFactory with real virtualenvs, real installers and real failures."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from buildd_server import errors
from buildd_server.config import InstallerOptions
from buildd_server.environments.environments import (
    METADATA_FILE,
    Environment,
    EnvironmentFactory,
    Placement,
)
from buildd_server.environments.installers import Installer, select_installer
from buildd_server.environments.interpreters import Interpreter, resolve_interpreter
from buildd_server.environments.keys import EnvKey, make_key
from buildd_server.events import Event, Log, Phase

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return resolve_interpreter("")


@pytest.fixture(scope="module")
def options(wheelhouse: Path) -> InstallerOptions:
    return InstallerOptions(no_index=True, find_links=(str(wheelhouse),))


@pytest.fixture(scope="module")
def factory(
    tmp_path_factory: pytest.TempPathFactory, options: InstallerOptions
) -> EnvironmentFactory:
    return EnvironmentFactory(tmp_path_factory.mktemp("root"), select_installer("uv"), options)


def _key(interpreter: Interpreter, reqs: Sequence[str], installer: str = "uv") -> EnvKey:
    options = InstallerOptions()  # the key's options do not steer the factory
    return make_key(interpreter, reqs, installer, options, origin="test")


def _create(
    factory: EnvironmentFactory,
    interpreter: Interpreter,
    owner: Path,
    reqs: Sequence[str],
    *,
    emit: Callable[[Event], None] = lambda event: None,
    cancel: threading.Event | None = None,
) -> Environment:
    placement = Placement(path=owner / secrets.token_hex(6), owner="session")
    return factory.create(
        _key(interpreter, reqs, factory.installer.name),
        interpreter,
        placement,
        emit=emit,
        cancel=cancel or threading.Event(),
    )


def compiled(factory: EnvironmentFactory, env: Environment) -> Environment:
    """``env`` once its background compile has ended (bounded: a hang fails)."""
    assert factory.compiler.wait(env.id, 120.0)
    return env


def wait_until_gone(pid: int) -> bool:
    """Whether ``pid`` is dead (gone, or a zombie nobody has reaped yet)."""
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        # No event tells when SIGKILL has landed: poll, bounded (5 s in all).
        time.sleep(0.01)
    return False


@pytest.fixture(scope="module")
def shared(
    factory: EnvironmentFactory, interpreter: Interpreter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Environment, list[Event]]]:
    """One setuptools environment for the tests that only look at it."""
    events: list[Event] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        env = _create(
            factory,
            interpreter,
            tmp_path_factory.mktemp("owner"),
            ["setuptools"],
            emit=events.append,
        )
    yield env, events
    factory.destroy(env)


@pytest.fixture
def small(factory: EnvironmentFactory, interpreter: Interpreter, tmp_path: Path) -> Environment:
    """A cheap environment of its own, for tests that damage it."""
    return _create(factory, interpreter, tmp_path / "owner", ["flit_core<4"])


# ------------------------------------------------------------------ create --


def test_created_environment_is_described_and_valid(
    shared: tuple[Environment, list[Event]], factory: EnvironmentFactory, interpreter: Interpreter
) -> None:
    env, _ = shared
    assert env.path.parent.name.startswith("owner")
    assert env.key.requirements == ("setuptools",)
    assert env.interpreter == interpreter
    assert env.hook_calls == 0 and env.created_at == env.last_used_at
    assert env.size_bytes > 0 and env.owner == "session"
    meta = json.loads((env.path / METADATA_FILE).read_text())
    assert meta["id"] == env.id and meta["key_id"] == env.key.id
    assert meta["key"]["requirements"] == ["setuptools"] and meta["key"]["installer"] == "uv"
    assert meta["digest"] == env.fingerprint
    assert factory.validate(env)


def test_loading_the_marker_gives_back_the_same_instance(
    shared: tuple[Environment, list[Event]], factory: EnvironmentFactory
) -> None:
    env, _ = shared
    loaded = factory.load(env.path, owner="someone")
    assert loaded is not None
    for name in ("id", "path", "key", "interpreter", "python", "site_packages", "fingerprint"):
        assert getattr(loaded, name) == getattr(env, name), name
    assert loaded.interpreter_stamp == env.interpreter_stamp and loaded.owner == "someone"
    assert factory.validate(loaded)


def test_every_module_is_compiled_in_the_background_even_with_dontwritebytecode(
    shared: tuple[Environment, list[Event]], factory: EnvironmentFactory
) -> None:
    env = compiled(factory, shared[0])
    assert _uncompiled(env.site_packages) == []
    # Bytecode is not part of what validation compares.
    assert factory.validate(env)


def test_creation_reports_its_phases_and_installer_output(
    shared: tuple[Environment, list[Event]],
) -> None:
    env, events = shared
    phases = [e for e in events if isinstance(e, Phase)]
    assert [(p.name, p.step_seconds > 0) for p in phases] == [
        ("creating_environment", False),
        ("installing_requirements", False),
        ("installing_requirements", True),
        ("creating_environment", True),
    ]
    assert phases[1].count == 1 and phases[1].detail == "setuptools"
    assert all(p.environment_path == str(env.path) and p.key_id == env.key.id for p in phases)
    logs = [e for e in events if isinstance(e, Log)]
    assert logs and all(e.hook == "install" for e in logs)
    assert any("setuptools" in e.text for e in logs)


def test_pip_environment_seeds_pip_and_compiles_it(
    interpreter: Interpreter, options: InstallerOptions, tmp_path: Path
) -> None:
    factory = EnvironmentFactory(tmp_path / "root", select_installer("pip"), options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONDONTWRITEBYTECODE", "1")
        env = compiled(factory, _create(factory, interpreter, tmp_path / "owner", ["flit_core<4"]))
    assert (env.site_packages / "pip").is_dir()
    assert (env.site_packages / "flit_core").is_dir()
    # Nothing is compiled during the install; the background pass does all.
    assert _uncompiled(env.site_packages) == []
    assert factory.validate(env)


def _uncompiled(site_packages: Path) -> list[Path]:
    tag = sys.implementation.cache_tag
    sources = list(site_packages.rglob("*.py"))
    assert len(sources) > 50
    return [p for p in sources if not (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").is_file()]


# ---------------------------------------------------------------- validate --


def test_validate_starts_no_process(
    shared: tuple[Environment, list[Event]],
    factory: EnvironmentFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("validate() started a process")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    monkeypatch.setattr(os, "posix_spawn", forbidden, raising=False)
    assert factory.validate(shared[0])


def test_validate_notices_a_deleted_file(small: Environment, factory: EnvironmentFactory) -> None:
    assert factory.validate(small)
    (small.site_packages / "flit_core" / "common.py").unlink()
    assert not factory.validate(small)


def test_validate_notices_a_modified_file(small: Environment, factory: EnvironmentFactory) -> None:
    target = small.site_packages / "flit_core" / "__init__.py"
    before = target.stat()
    # Same size, new contents: only the mtime tells.
    target.write_bytes(target.read_bytes()[::-1])
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert target.stat().st_size == before.st_size
    assert not factory.validate(small)


def test_validate_notices_an_added_file(small: Environment, factory: EnvironmentFactory) -> None:
    (small.site_packages / "sitecustomize.py").write_text("import os\n")
    assert not factory.validate(small)


def test_validate_ignores_bytecode_caches(small: Environment, factory: EnvironmentFactory) -> None:
    cache = compiled(factory, small).site_packages / "flit_core" / "__pycache__"
    for pyc in cache.iterdir():
        pyc.unlink()
    assert factory.validate(small)


def test_validate_notices_a_missing_python(small: Environment, factory: EnvironmentFactory) -> None:
    small.python.unlink()
    assert not factory.validate(small)


def test_validate_notices_a_foreign_description(
    small: Environment, factory: EnvironmentFactory
) -> None:
    meta_file = small.path / METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta["key_id"] = "0" * 16
    meta_file.write_text(json.dumps(meta))
    assert not factory.validate(small)
    meta_file.unlink()
    assert not factory.validate(small)


def test_destroy_removes_and_tolerates_missing(
    small: Environment, factory: EnvironmentFactory
) -> None:
    factory.destroy(small)
    assert not small.path.exists()
    factory.destroy(small)
    assert not factory.validate(small)


# ----------------------------------------------------------------- install --


def test_install_adds_requirements_and_rekeys(
    small: Environment, factory: EnvironmentFactory
) -> None:
    old_key, old_print = small.key, small.fingerprint
    events: list[Event] = []
    factory.install(small, ["wheel"], emit=events.append, cancel=threading.Event())
    assert small.key.requirements == ("flit-core<4", "wheel")
    assert small.key.id != old_key.id and small.fingerprint != old_print
    assert json.loads((small.path / METADATA_FILE).read_text())["key_id"] == small.key.id
    assert factory.validate(small)
    assert (small.site_packages / "wheel").is_dir()
    assert [e.count for e in events if isinstance(e, Phase)] == [1, 1]


def test_install_failure_raises_and_keeps_the_key(
    small: Environment, factory: EnvironmentFactory
) -> None:
    old_key = small.key
    with pytest.raises(errors.InstallFailed) as caught:
        factory.install(
            small, ["buildd-no-such-dist"], emit=lambda e: None, cancel=threading.Event()
        )
    assert "buildd-no-such-dist" in caught.value.message
    assert small.key == old_key


# ---------------------------------------------------------------- failures --


@pytest.mark.parametrize("installer_name", ["uv", "pip"])
def test_uninstallable_requirement_fails_and_leaves_nothing(
    installer_name: str, interpreter: Interpreter, options: InstallerOptions, tmp_path: Path
) -> None:
    factory = EnvironmentFactory(tmp_path / "root", select_installer(installer_name), options)
    owner = tmp_path / "owner"
    with pytest.raises(errors.InstallFailed) as caught:
        _create(factory, interpreter, owner, ["setuptools", "buildd-no-such-dist>=1"])
    failure = caught.value
    assert "buildd-no-such-dist>=1, setuptools" in failure.message
    assert failure.last_lines and len(failure.last_lines) <= 50
    assert any("buildd-no-such-dist" in line for line in failure.last_lines)
    assert list(owner.iterdir()) == []


def test_unusable_interpreter_fails_and_leaves_nothing(
    factory: EnvironmentFactory, interpreter: Interpreter, tmp_path: Path
) -> None:
    broken = Interpreter(
        executable=str(tmp_path / "no-python"),
        implementation=interpreter.implementation,
        version=interpreter.version,
        platform=interpreter.platform,
        markers=interpreter.markers,
    )
    owner = tmp_path / "owner"
    with pytest.raises(errors.InstallFailed, match="no-python"):
        _create(factory, broken, owner, [])
    assert list(owner.iterdir()) == []


@dataclass(frozen=True)
class ScriptInstaller:
    """An installer whose 'install' is a Python script: real process, scripted behaviour."""

    script: str
    name: str = "uv"
    seeds_pip: bool = False

    def command(
        self,
        env_python: Path,
        requirements: Sequence[str],
        options: InstallerOptions,
        *,
        cache_dir: Path | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", self.script], {"PATH": os.environ["PATH"]}


def _factory_with(script: str, root: Path) -> EnvironmentFactory:
    installer: Installer = ScriptInstaller(script)
    return EnvironmentFactory(root, installer, InstallerOptions())


def test_cancel_during_install_kills_it_and_leaves_nothing(
    interpreter: Interpreter, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import os, time, pathlib\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\n"
        "print('installing', flush=True)\n"
        "time.sleep(1000)\n"
    )
    factory = _factory_with(script, tmp_path / "root")
    cancel = threading.Event()

    def emit(event: Event) -> None:
        if isinstance(event, Log) and event.text == "installing":
            cancel.set()

    owner = tmp_path / "owner"
    with pytest.raises(errors.Cancelled):
        _create(factory, interpreter, owner, ["anything"], emit=emit, cancel=cancel)
    assert list(owner.iterdir()) == []
    assert wait_until_gone(int(pid_file.read_text()))


def test_cancel_before_creation_creates_nothing(
    factory: EnvironmentFactory, interpreter: Interpreter, tmp_path: Path
) -> None:
    cancel = threading.Event()
    cancel.set()
    owner = tmp_path / "owner"
    with pytest.raises(errors.Cancelled):
        _create(factory, interpreter, owner, ["setuptools"], cancel=cancel)
    assert not owner.exists() or list(owner.iterdir()) == []


def test_installer_reporting_enospc_is_resource_exhausted(
    interpreter: Interpreter, tmp_path: Path
) -> None:
    script = "import sys\nsys.exit('OSError: [Errno 28] No space left on device')\n"
    owner = tmp_path / "owner"
    with pytest.raises(errors.ResourceExhausted) as caught:
        _create(_factory_with(script, tmp_path / "root"), interpreter, owner, ["x"])
    assert "No space left on device" in caught.value.last_lines[-1]
    assert list(owner.iterdir()) == []


def test_enospc_from_virtualenv_is_resource_exhausted(
    options: InstallerOptions,
    interpreter: Interpreter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import virtualenv

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(virtualenv, "cli_run", full)
    # pip's environments are made by virtualenv (uv's by uv venv).
    factory = EnvironmentFactory(tmp_path / "root", select_installer("pip"), options)
    owner = tmp_path / "owner"
    with pytest.raises(errors.ResourceExhausted, match="no space left"):
        _create(factory, interpreter, owner, ["setuptools"])
    assert list(owner.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: room for a bare virtualenv, not for setuptools."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_is_resource_exhausted(
    factory: EnvironmentFactory, interpreter: Interpreter, tiny_disk: Path
) -> None:
    owner = tiny_disk / "owner"
    with pytest.raises(errors.ResourceExhausted):
        _create(factory, interpreter, owner, ["setuptools"])
    assert list(owner.iterdir()) == []
