"""``buildd-client``: argument parsing, -C, exit codes and output, against a fake daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import grpc
import pytest

# The fake daemon and the environment isolation live with the library tests.
from test_client_library import (  # type: ignore[import-not-found,unused-ignore]
    METADATA_RESULT,
    FakeBuildd,
    failure_events,
    isolated_env,  # noqa: F401 (an autouse fixture, active here too)
    serve_fake,
)

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb
from buildd_client.cli import main, parse_config_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def fake() -> Iterator[FakeBuildd]:
    with serve_fake() as daemon:
        yield daemon


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ parsing --


def test_version_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"buildd-client {__version__}\n", "")


def test_version_does_not_import_grpc() -> None:
    code = (
        "import sys; from buildd_client.cli import main; rc = main(['--version']); "
        "heavy = sorted(m for m in sys.modules if m.startswith(('grpc', 'google'))); "
        "print(rc, heavy)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout
    assert out.splitlines()[-1] == "0 []"


def test_config_settings_repeat_into_lists() -> None:
    pairs = [("a", "1"), ("b", "x=y"), ("a", "2"), ("a", ""), ("c", "")]
    assert parse_config_settings(pairs) == {"a": ["1", "2", ""], "b": "x=y", "c": ""}


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "COMMAND"),
        (["build", "-C", "novalue"], "'novalue' is not KEY=VALUE"),
        (["metadata", "-C", "=v"], "'=v' is not KEY=VALUE"),
        (["-q", "-v", "status"], "not allowed with"),
        (["session"], "ACTION"),
        (["session", "reopen"], "invalid choice"),
        (["build", "--bogus"], "unrecognized arguments"),
        (["--address", "nohost", "status"], "'nohost'"),
    ],
)
def test_usage_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert needle in err


def test_no_daemon_exits_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _out, err = run(capsys, "--address", f"unix://{tmp_path}/none.sock", "status")
    assert code == 3
    assert "no buildd daemon answers" in err


def test_default_address_without_autostart_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", ".")
    assert code == 3
    assert "BUILDD_NO_AUTOSTART" in err


# ----------------------------------------------------------------- commands --


def test_session_open_prints_only_the_id(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    assert run(capsys, "--address", fake.address, "session", "open") == (0, "session-1\n", "")
    assert fake.requests[0].client_name == f"buildd-client/{__version__}"


def test_session_close(capsys: pytest.CaptureFixture[str], fake: FakeBuildd) -> None:
    fake.sessions["abc"] = pb.SessionInfo(session_id="abc")
    code, out, err = run(capsys, "--address", fake.address, "session", "close", "abc")
    assert (code, out) == (0, "")
    assert "closed session abc" in err
    code, _, err = run(capsys, "--address", fake.address, "session", "close", "abc")
    assert code == 2
    assert "session_not_found" in err


def test_session_close_defaults_to_the_default_session(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    fake.events = [METADATA_RESULT]
    assert run(capsys, "--address", fake.address, "metadata", "/src")[0] == 0
    assert run(capsys, "-q", "--address", fake.address, "session", "close") == (0, "", "")
    assert fake.sessions == {}
    code, _, err = run(capsys, "--address", fake.address, "session", "close")
    assert code == 2
    assert "no session to close" in err


def test_closing_an_expired_default_session_forgets_it(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    fake.events = [METADATA_RESULT]
    assert run(capsys, "--address", fake.address, "metadata", "/src")[0] == 0
    fake.sessions.clear()  # expired on the daemon
    code, _, err = run(capsys, "--address", fake.address, "session", "close")
    assert code == 2
    assert "session_not_found" in err
    code, _, err = run(capsys, "--address", fake.address, "session", "close")
    assert "no session to close" in err


def _build_result(*paths: str) -> pb.Event:
    artifacts = [pb.Artifact(path=p, filename=os.path.basename(p)) for p in paths]
    return pb.Event(result=pb.Result(build=pb.BuildResult(artifacts=artifacts)))


@pytest.mark.parametrize(
    ("flags", "distributions", "from_sdist"),
    [
        ([], [pb.DISTRIBUTION_SDIST, pb.DISTRIBUTION_WHEEL], True),
        (["--wheel"], [pb.DISTRIBUTION_WHEEL], False),
        (["--wheel", "--sdist"], [pb.DISTRIBUTION_SDIST, pb.DISTRIBUTION_WHEEL], False),
        (["--editable"], [pb.DISTRIBUTION_EDITABLE], False),
    ],
)
def test_build_like_python_m_build(
    capsys: pytest.CaptureFixture[str],
    fake: FakeBuildd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    flags: list[str],
    distributions: list[int],
    from_sdist: bool,
) -> None:
    monkeypatch.chdir(tmp_path)
    fake.events = [_build_result("/o/a-1.tar.gz", "/o/a-1-py3-none-any.whl")]
    code, out, _ = run(capsys, "--address", fake.address, "build", *flags)
    assert code == 0
    assert out == "/o/a-1.tar.gz\n/o/a-1-py3-none-any.whl\n"
    request = fake.requests[-1]
    assert list(request.distributions) == distributions
    assert request.wheel_from_sdist is from_sdist
    assert request.context.source.path == str(tmp_path)
    assert request.output_directory == str(tmp_path / "dist")
    assert request.context.python == sys.executable


def test_build_options_reach_the_request(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd, tmp_path: Path
) -> None:
    fake.events = [_build_result("/o/a.whl")]
    argv = ["--address", fake.address, "--python", "3.12", "build", str(tmp_path), "--wheel"]
    argv += ["-o", str(tmp_path / "out"), "-C", "k=1", "-C", "k=2", "-C", "j=x"]
    assert run(capsys, *argv)[0] == 0
    request = fake.requests[-1]
    assert request.output_directory == str(tmp_path / "out")
    assert request.context.python == "3.12"
    settings = [(s.key, list(s.values)) for s in request.context.config_settings]
    assert settings == [("k", ["1", "2"]), ("j", ["x"])]
    # --python after the command wins over the global one.
    assert run(capsys, *argv, "--python", "/usr/bin/python3")[0] == 0
    assert fake.requests[-1].context.python == "/usr/bin/python3"


def test_session_option_and_variable(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.events = [METADATA_RESULT]
    fake.sessions["from-env"] = pb.SessionInfo(session_id="from-env")
    fake.sessions["from-flag"] = pb.SessionInfo(session_id="from-flag")
    monkeypatch.setenv("BUILDD_SESSION", "from-env")
    assert run(capsys, "--address", fake.address, "metadata", "/src")[0] == 0
    assert fake.requests[-1].context.session_id == "from-env"
    assert run(capsys, "--address", fake.address, "--session", "from-flag", "metadata")[0] == 0
    assert fake.requests[-1].context.session_id == "from-flag"
    assert fake.opened == 0
    code, _, err = run(capsys, "--address", fake.address, "--session", "gone", "metadata")
    assert code == 2
    assert "'gone'" in err


def test_default_session_is_reused_across_invocations(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    fake.events = [METADATA_RESULT]
    for _ in range(3):
        assert run(capsys, "--address", fake.address, "metadata", "/src")[0] == 0
    assert fake.opened == 1


def test_metadata_prints_the_file_or_json(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    fake.events = [METADATA_RESULT]
    code, out, _ = run(capsys, "--address", fake.address, "metadata", "/src")
    assert (code, out) == (0, "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    code, out, _ = run(capsys, "--address", fake.address, "metadata", "/src", "--json")
    assert code == 0
    assert json.loads(out) == {"metadata_version": "2.1", "name": "demo", "version": "1.0"}


def test_output_streams_progress_and_quiet(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    phase = pb.Phase(kind=pb.PHASE_KIND_HOOK_FINISHED, hook="build_wheel", step_seconds=1.25)
    phase.elapsed_seconds = 2.5
    fake.events = [pb.Event(phase=phase), pb.Event(log=pb.LogLine(text="hello")), METADATA_RESULT]
    _, _, err = run(capsys, "--address", fake.address, "metadata", "/src")
    assert err == "hello\n"  # stderr is no TTY: no progress, backend lines yes
    _, _, err = run(capsys, "-v", "--address", fake.address, "metadata", "/src")
    assert err == "[   2.5s] build_wheel finished in 1.2s\nhello\n"
    code, out, err = run(capsys, "-q", "--address", fake.address, "metadata", "/src")
    assert (code, err) == (0, "")
    assert out.startswith("Metadata-Version")
    assert fake.requests[-1].context.quiet


@pytest.mark.parametrize(
    ("kind", "status", "exit_code"),
    [
        (pb.FAILURE_KIND_BACKEND_FAILED, grpc.StatusCode.FAILED_PRECONDITION, 1),
        (pb.FAILURE_KIND_INSTALL_FAILED, grpc.StatusCode.FAILED_PRECONDITION, 1),
        (pb.FAILURE_KIND_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED, 1),
        (pb.FAILURE_KIND_INVALID_PROJECT, grpc.StatusCode.INVALID_ARGUMENT, 2),
        (pb.FAILURE_KIND_SOURCE_NOT_FOUND, grpc.StatusCode.NOT_FOUND, 2),
        (pb.FAILURE_KIND_INTERPRETER_NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION, 2),
        (pb.FAILURE_KIND_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, 3),
    ],
)
def test_failures_exit_codes_and_last_lines_even_when_quiet(
    capsys: pytest.CaptureFixture[str],
    fake: FakeBuildd,
    *,
    kind: int,
    status: grpc.StatusCode,
    exit_code: int,
) -> None:
    fake.events = failure_events(kind, status, "it broke", ["line 1", "line 2"])
    fake.abort = (status, "it broke")
    code, out, err = run(capsys, "-q", "--address", fake.address, "build", "/src")
    assert (code, out) == (exit_code, "")
    assert "it broke" in err
    assert "/src/pyproject.toml" in err
    assert err.endswith("line 1\nline 2\n")
    assert "compiling..." not in err  # the streamed line is hidden by -q


def test_bare_rpc_error_exit_code(capsys: pytest.CaptureFixture[str], fake: FakeBuildd) -> None:
    fake.abort = (grpc.StatusCode.INTERNAL, "daemon bug")
    code, _, err = run(capsys, "--address", fake.address, "metadata", "/src")
    assert code == 1
    assert "internal" in err
    assert "daemon bug" in err


STATUS = pb.StatusResponse(
    daemon=pb.DaemonInfo(
        pid=7, version="0.1.0", address="unix:///s", state_dir="/st", installer="uv"
    ),
    sessions=[
        pb.SessionStatus(
            session_id="s1",
            client_name="ide",
            environments=[
                pb.EnvironmentInfo(
                    id="e1",
                    path="/st/envs/e1",
                    interpreter="/usr/bin/python3.12",
                    python_version="3.12.1",
                    requirements=["setuptools>=40.8.0", "wheel"],
                    state=pb.ENVIRONMENT_STATE_LEASED,
                    hook_calls=3,
                )
            ],
        )
    ],
)


def test_status_json_shape(capsys: pytest.CaptureFixture[str], fake: FakeBuildd) -> None:
    fake.status = STATUS
    code, out, _ = run(capsys, "--address", fake.address, "status", "--json")
    assert code == 0
    data = json.loads(out)
    daemon = data["daemon"]
    assert (daemon["pid"], daemon["version"], daemon["address"]) == (7, "0.1.0", "unix:///s")
    assert (daemon["state_dir"], daemon["installer"], daemon["draining"]) == ("/st", "uv", False)
    [session] = data["sessions"]
    assert (session["id"], session["client_name"]) == ("s1", "ide")
    [env] = session["environments"]
    assert env["path"] == "/st/envs/e1"
    assert env["interpreter"] == "/usr/bin/python3.12"
    assert env["requirements"] == ["setuptools>=40.8.0", "wheel"]
    assert (env["state"], env["hook_calls"], env["python_version"]) == ("leased", 3, "3.12.1")
    # All sessions unless --session is given.
    assert fake.requests[-1].session_id == ""


def test_status_text(capsys: pytest.CaptureFixture[str], fake: FakeBuildd) -> None:
    fake.status = STATUS
    code, out, _ = run(capsys, "--address", fake.address, "--session", "s1", "status")
    assert code == 0
    assert "session s1 (ide): 1 environment" in out
    assert "leased" in out and "/st/envs/e1" in out and "setuptools>=40.8.0, wheel" in out
    assert fake.requests[-1].session_id == "s1"


STORE_STATUS = pb.StatusResponse(
    daemon=pb.DaemonInfo(
        pid=7,
        store_enabled=True,
        store_size_limit_bytes=5 << 30,
        store_ttl_seconds=7 * 86400,
        store_bytes=12 << 20,
        store_environments=2,
    ),
    principal="local",
    store=[
        pb.StoreKeyStatus(
            principal="local",
            key_id="0123456789abcdef",
            size_bytes=12 << 20,
            last_used_at=1_700_000_000.0,
            hook_calls=9,
            environments=[
                pb.EnvironmentInfo(
                    path=f"/st/envs/local-x/0123456789abcdef/{slot}",
                    slot=slot,
                    state=state,
                    size_bytes=6 << 20,
                    requirements=["setuptools>=61"],
                    principal="local",
                    store_key_id="0123456789abcdef",
                )
                for slot, state in (
                    (0, pb.ENVIRONMENT_STATE_IDLE),
                    (1, pb.ENVIRONMENT_STATE_LEASED),
                )
            ],
        )
    ],
)


def test_status_shows_the_store(capsys: pytest.CaptureFixture[str], fake: FakeBuildd) -> None:
    fake.status = STORE_STATUS
    code, out, _ = run(capsys, "--address", fake.address, "status")
    assert code == 0
    assert "store: 2 environments, 12.0 MiB of 5.0 GiB, kept 7 days unused" in out
    assert "key 0123456789abcdef: slots 0 idle, 1 leased; 12.0 MiB" in out
    assert "9 hook calls" in out and "requires: setuptools>=61" in out
    code, out, _ = run(capsys, "--address", fake.address, "status", "--json")
    data = json.loads(out)
    assert data["daemon"]["store_bytes"] == 12 << 20
    [row] = data["store"]
    assert (row["key_id"], row["slots"], row["hook_calls"]) == ("0123456789abcdef", [0, 1], 9)
    assert [e["state"] for e in row["environments"]] == ["idle", "leased"]
    assert row["environments"][1]["store_key_id"] == "0123456789abcdef"


def test_status_says_when_the_store_is_off(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd
) -> None:
    fake.status = pb.StatusResponse(daemon=pb.DaemonInfo(pid=7))
    _, out, _ = run(capsys, "--address", fake.address, "status")
    assert "store: off (--no-store)" in out


@pytest.mark.parametrize(
    ("given", "seconds"),
    [(None, 0.0), ("90", 90.0), ("30m", 1800.0), ("12h", 43200.0), ("7d", 604800.0)],
)
def test_store_prune(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd, given: str | None, seconds: float
) -> None:
    extra = ["--older-than", given] if given else []
    code, out, _ = run(capsys, "--address", fake.address, "store", "prune", *extra)
    assert (code, out) == (0, "removed 3 environments (3.0 MiB), 1 kept\n")
    assert fake.requests[-1].older_than_seconds == seconds
    assert fake.requests[-1].all_principals is False
    code, out, _ = run(capsys, "--address", fake.address, "store", "prune", "--json", *extra)
    assert json.loads(out) == {
        "environments_removed": 3,
        "bytes_freed": 3 << 20,
        "environments_kept": 1,
    }


@pytest.mark.parametrize("bad", ["soon", "-1h", "7x"])
def test_store_prune_refuses_a_bad_duration(
    capsys: pytest.CaptureFixture[str], fake: FakeBuildd, bad: str
) -> None:
    code, _, err = run(capsys, "--address", fake.address, "store", "prune", f"--older-than={bad}")
    assert code == 2 and bad in err
