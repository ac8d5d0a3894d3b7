"""Installers: their commands, and real installs that ignore the machine's pip/uv settings."""

from __future__ import annotations

import os
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest

from buildd_server.config import InstallerOptions
from buildd_server.environments import installers
from buildd_server.environments.environments import EnvironmentFactory, Placement
from buildd_server.environments.installers import PipInstaller, UvInstaller, select_installer
from buildd_server.environments.interpreters import resolve_interpreter
from buildd_server.environments.keys import make_key
from buildd_server.errors import DaemonStartupError
from buildd_server.events import Event, Log

OPTIONS = InstallerOptions(
    index_url="https://index.example/simple",
    extra_index_urls=("https://extra.example/simple",),
    find_links=("/wheels/a", "/wheels/b"),
    no_index=True,
)


# ---------------------------------------------------------------- selection --


def test_select_named_installers() -> None:
    assert isinstance(select_installer("pip"), PipInstaller)
    uv = select_installer("uv")
    assert isinstance(uv, UvInstaller)
    assert os.access(uv.uv, os.X_OK)
    assert select_installer("pip").seeds_pip and not uv.seeds_pip


def test_auto_prefers_uv_and_falls_back_to_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    assert select_installer("auto").name == "uv"
    monkeypatch.setattr(installers, "find_uv", lambda: None)
    assert select_installer("auto").name == "pip"
    with pytest.raises(DaemonStartupError, match="'uv' was requested"):
        select_installer("uv")


def test_unknown_installer_is_refused() -> None:
    with pytest.raises(DaemonStartupError, match="'conda'"):
        select_installer("conda")


# ----------------------------------------------------------------- commands --


@pytest.fixture
def hostile_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installer settings a machine may carry; none may reach an installer."""
    for name, value in {
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_CONSTRAINT": "/etc/constraints.txt",
        "PIP_FIND_LINKS": "/opt/wheels",
        "PIP_CERT": "/certs/ca.pem",
        "UV_INDEX_URL": "http://127.0.0.1:9/simple",
        "UV_CONSTRAINT": "/etc/constraints.txt",
        "PYTHONPATH": "/daemon/lib",
        "VIRTUAL_ENV": "/daemon/venv",
        "HTTPS_PROXY": "http://proxy.example:3128",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


@pytest.mark.usefixtures("hostile_environ")
def test_pip_command_is_isolated_and_carries_options() -> None:
    argv, env = PipInstaller().command(Path("/env/bin/python"), ["a>=1", "b"], OPTIONS)
    assert argv[:4] == ["/env/bin/python", "-m", "pip", "install"]
    for flag in ("--isolated", "--no-input", "--disable-pip-version-check", "--no-compile"):
        assert flag in argv
    assert argv[argv.index("--cert") + 1] == "/certs/ca.pem"
    assert argv[argv.index("--index-url") + 1] == "https://index.example/simple"
    assert argv[argv.index("--extra-index-url") + 1] == "https://extra.example/simple"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--find-links"] == list(
        OPTIONS.find_links
    )
    assert "--no-index" in argv
    assert argv[-3:] == ["--", "a>=1", "b"]
    assert env["PIP_CONFIG_FILE"] == os.devnull
    assert {k for k in env if k.startswith(("PIP_", "UV_"))} == {"PIP_CONFIG_FILE"}
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["HTTPS_PROXY"] == "http://proxy.example:3128"
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.usefixtures("hostile_environ")
def test_uv_command_is_isolated_and_carries_options() -> None:
    argv, env = UvInstaller("/bin/uv").command(Path("/env/bin/python"), ["a"], OPTIONS)
    assert argv[:3] == ["/bin/uv", "pip", "install"]
    assert argv[argv.index("--python") + 1] == "/env/bin/python"
    # Without a private cache: copies (hard links into the user's cache could change it).
    assert argv[argv.index("--link-mode") + 1] == "copy"
    assert "--cache-dir" not in argv
    for flag in ("--no-config", "--no-index"):
        assert flag in argv
    # Bytecode is compiled in the background, not by the installer.
    assert "--compile-bytecode" not in argv
    assert argv[-2:] == ["--", "a"]
    assert not [k for k in env if k.startswith(("PIP_", "UV_"))]
    # uv has no --cert: the certificate travels as SSL_CERT_FILE.
    assert env["SSL_CERT_FILE"] == "/certs/ca.pem"


def test_uv_hard_links_from_a_private_cache() -> None:
    cache = Path("/state/envs/local-0123/installer-cache")
    argv, _ = UvInstaller("/bin/uv").command(Path("/p"), ["a"], OPTIONS, cache_dir=cache)
    assert argv[argv.index("--link-mode") + 1] == "hardlink"
    assert argv[argv.index("--cache-dir") + 1] == str(cache)
    venv, _ = UvInstaller("/bin/uv").venv_command("/usr/bin/python3", Path("/e/0"), cache_dir=cache)
    assert venv[:2] == ["/bin/uv", "venv"] and venv[-2:] == ["--", "/e/0"]
    assert venv[venv.index("--python") + 1] == "/usr/bin/python3"
    assert {"--no-config", "--no-project", "--no-python-downloads"} <= set(venv)


def test_uv_keeps_an_explicit_ssl_cert_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CERT", "/certs/pip.pem")
    monkeypatch.setenv("SSL_CERT_FILE", "/certs/ssl.pem")
    _, env = UvInstaller("/bin/uv").command(Path("/p"), ["a"], InstallerOptions())
    assert env["SSL_CERT_FILE"] == "/certs/ssl.pem"


def test_no_options_means_no_index_flags() -> None:
    argv, _ = UvInstaller("/bin/uv").command(Path("/p"), ["a"], InstallerOptions())
    assert not {"--index-url", "--extra-index-url", "--find-links", "--no-index"} & set(argv)


# ------------------------------------------------------------ real installs --


def _decoy_wheel(folder: Path) -> Path:
    """A setuptools 999 that must never be picked: it lives where only leaked settings point."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "setuptools-999.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("setuptools/__init__.py", "__version__ = '999.0'\n")
        archive.writestr(
            "setuptools-999.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: setuptools\nVersion: 999.0\n",
        )
        archive.writestr(
            "setuptools-999.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr("setuptools-999.0.dist-info/RECORD", "")
    return wheel


@pytest.fixture
def hostile_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip.conf, uv.toml, PIP_*/UV_*/VIRTUALENV_* settings that would change the result."""
    decoys = tmp_path / "decoys"
    _decoy_wheel(decoys)
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("setuptools<1\n")
    config = tmp_path / "xdg"
    (config / "pip").mkdir(parents=True)
    (config / "pip" / "pip.conf").write_text(
        f"[global]\nconstraint = {constraints}\nfind-links = {decoys}\n"
    )
    (config / "uv").mkdir()
    (config / "uv" / "uv.toml").write_text(
        f'constraint-dependencies = ["setuptools<1"]\nfind-links = ["{decoys}"]\n'
    )
    for name, value in {
        "XDG_CONFIG_HOME": str(config),
        "XDG_CONFIG_DIRS": str(config),
        "PIP_CONFIG_FILE": str(config / "pip" / "pip.conf"),
        "PIP_FIND_LINKS": str(decoys),
        "PIP_CONSTRAINT": str(constraints),
        "PIP_NO_COMPILE": "1",
        "UV_FIND_LINKS": str(decoys),
        "UV_CONSTRAINT": str(constraints),
        "UV_COMPILE_BYTECODE": "0",
        "VIRTUALENV_SYSTEM_SITE_PACKAGES": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }.items():
        monkeypatch.setenv(name, value)


def _wheelhouse_version(wheelhouse: Path, name: str) -> str:
    versions = [p.name.split("-")[1] for p in wheelhouse.glob(f"{name}-*.whl")]
    return max(versions, key=lambda v: tuple(int(x) for x in v.split(".")))


@pytest.mark.usefixtures("hostile_machine")
@pytest.mark.parametrize("installer_name", ["uv", "pip"])
def test_installer_fills_a_working_environment_from_the_wheelhouse_only(
    installer_name: str, wheelhouse: Path, tmp_path: Path
) -> None:
    installer = select_installer(installer_name)
    options = InstallerOptions(no_index=True, find_links=(str(wheelhouse),))
    interpreter = resolve_interpreter("")
    key = make_key(interpreter, ["setuptools"], installer.name, options, origin="test")
    events: list[Event] = []
    factory = EnvironmentFactory(tmp_path / "root", installer, options)
    placement = Placement(path=tmp_path / "envs" / "0", owner="test")
    env = factory.create(key, interpreter, placement, emit=events.append, cancel=threading.Event())
    assert factory.compiler.wait(env.id, 120.0)

    probe = subprocess.run(
        [str(env.python), "-c", "import setuptools; print(setuptools.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert probe.stdout.strip() == _wheelhouse_version(wheelhouse, "setuptools")
    cfg = (env.path / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    # Compiled despite PYTHONDONTWRITEBYTECODE=1 and PIP_NO_COMPILE / UV_COMPILE_BYTECODE=0.
    cache = env.site_packages / "setuptools" / "__pycache__"
    assert list(cache.glob("__init__.*.pyc"))
    assert (env.site_packages / "pip").is_dir() == installer.seeds_pip
    assert any(isinstance(e, Log) and e.hook == "install" for e in events)
