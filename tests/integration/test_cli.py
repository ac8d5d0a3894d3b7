"""``buildd-client`` exactly as scripts and CI jobs use it, against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.daemon import DaemonProcess, short_tempdir
from support.projects import flit_project, setuptools_project

pytestmark = pytest.mark.integration


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "buildd_client", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


@pytest.fixture
def session_id(daemon: DaemonProcess) -> str:
    opened = cli("--address", daemon.address, "session", "open")
    assert opened.returncode == 0, opened.stderr
    return opened.stdout.strip()


def test_session_open_prints_only_the_id(daemon: DaemonProcess, session_id: str) -> None:
    assert session_id and session_id.isascii() and " " not in session_id
    closed = cli("--address", daemon.address, "session", "close", session_id)
    assert closed.returncode == 0, closed.stderr
    again = cli("--address", daemon.address, "session", "close", session_id)
    assert again.returncode == 2
    assert "not found" in again.stderr.lower() or session_id[:8] in again.stderr


def test_build_prints_artifact_paths_and_stays_warm(
    daemon: DaemonProcess, session_id: str, tmp_path: Path
) -> None:
    source = setuptools_project(tmp_path / "proj")
    base = ["--address", daemon.address, "--session", session_id]
    first = cli(*base, "build", str(source))
    assert first.returncode == 0, first.stderr
    paths = [Path(line) for line in first.stdout.splitlines()]
    assert [p.name for p in paths] == [
        "demo_setuptools-1.0.tar.gz",
        "demo_setuptools-1.0-py3-none-any.whl",
    ]
    assert all(p.is_absolute() and p.is_file() and p.parent == source / "dist" for p in paths)

    status = json.loads(cli(*base, "status", "--json").stdout)
    [session] = [s for s in status["sessions"] if s["id"] == session_id]
    calls_before = sum(env["hook_calls"] for env in session["environments"])

    out = tmp_path / "wheelhouse-out"
    second = cli(*base, "build", "--wheel", "-o", str(out), str(source))
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [str(out / "demo_setuptools-1.0-py3-none-any.whl")]

    status = json.loads(cli(*base, "status", "--json").stdout)
    assert status["daemon"]["pid"] == daemon.pid
    assert status["daemon"]["address"]
    assert status["daemon"]["version"]
    [session] = [s for s in status["sessions"] if s["id"] == session_id]
    envs = session["environments"]
    # The sdist's own build and the tree's share one key, so one environment.
    assert len(envs) == 1
    env = envs[0]
    assert env["state"] == "idle"
    assert env["hook_calls"] > calls_before
    assert any(r.startswith("setuptools") for r in env["requirements"])
    assert Path(env["path"]).is_dir()
    assert env["interpreter"]
    cli(*base, "session", "close")


def test_metadata_text_and_json(daemon: DaemonProcess, session_id: str, tmp_path: Path) -> None:
    source = setuptools_project(tmp_path / "meta")
    base = ["--address", daemon.address, "--session", session_id]
    text = cli(*base, "metadata", str(source))
    assert text.returncode == 0, text.stderr
    assert "Name: demo-setuptools" in text.stdout
    assert "Requires-Dist: packaging>=20" in text.stdout
    as_json = cli(*base, "metadata", "--json", str(source))
    data = json.loads(as_json.stdout)
    assert data["name"] == "demo-setuptools"
    assert data["version"] == "1.0"
    assert data["requires_dist"] == ["packaging>=20"]
    cli(*base, "session", "close")


def test_metadata_defaults_to_the_current_folder(
    daemon: DaemonProcess, session_id: str, tmp_path: Path
) -> None:
    source = flit_project(tmp_path / "cwd")
    result = cli("--address", daemon.address, "--session", session_id, "metadata", cwd=source)
    assert result.returncode == 0, result.stderr
    assert "Name: demo_flit" in result.stdout


def test_exit_codes(daemon: DaemonProcess, session_id: str, tmp_path: Path) -> None:
    base = ["--address", daemon.address, "--session", session_id]
    missing = cli(*base, "build", str(tmp_path / "does-not-exist"))
    assert missing.returncode == 2
    assert str(tmp_path / "does-not-exist") in missing.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "setup.py").write_text("raise SystemExit('setup.py is broken on purpose')\n")
    failed = cli(*base, "build", "--wheel", str(broken))
    assert failed.returncode == 1
    assert "setup.py is broken on purpose" in failed.stderr

    bad_setting = cli(*base, "build", "-C", "novalue", str(broken))
    assert bad_setting.returncode == 2
    assert "novalue" in bad_setting.stderr

    nobody = short_tempdir()
    unreachable = cli("--address", f"unix://{nobody}/none.sock", "status")
    assert unreachable.returncode == 3
    assert f"{nobody}/none.sock" in unreachable.stderr


def test_client_starts_a_daemon_when_none_answers(wheelhouse: Path, tmp_path: Path) -> None:
    """The two-command promise: no address, no session, no setup."""
    runtime = short_tempdir("bd-rt-")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ)
    env.pop("BUILDD_ADDRESS", None)
    env.pop("BUILDD_SESSION", None)
    env.update(XDG_RUNTIME_DIR=str(runtime), HOME=str(home), XDG_STATE_HOME=str(home / "state"))
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(str(repo / d) for d in ("proto", "client", "server"))
    # Offline: the auto-started daemon takes its installer options from the environment.
    env["BUILDD_NO_INDEX"] = "1"
    env["BUILDD_FIND_LINKS"] = str(wheelhouse)
    source = setuptools_project(tmp_path / "auto")
    try:
        first = cli("build", "--wheel", str(source), env=env)
        assert first.returncode == 0, first.stderr
        assert (runtime / "buildd" / "buildd.sock").exists()
        second = cli("build", "--wheel", str(source), env=env)
        assert second.returncode == 0, second.stderr
        status = json.loads(cli("status", "--json", env=env).stdout)
        assert len(status["sessions"]) == 1
        assert len(status["sessions"][0]["environments"]) == 1
        # get_requires, build_wheel; then only build_wheel: the unchanged
        # tree's get_requires_for_build_wheel is answered from the cache.
        assert status["sessions"][0]["environments"][0]["hook_calls"] == 3
    finally:
        status_run = cli("status", "--json", env=env)
        if status_run.returncode == 0:
            os.kill(json.loads(status_run.stdout)["daemon"]["pid"], 15)
