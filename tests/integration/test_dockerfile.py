"""The Dockerfile's own commands, run in a fresh virtualenv (no Docker engine here).

The install steps (``pip wheel`` of the repo, ``pip install`` of the wheels),
the default command and the health check are read from the Dockerfile itself,
so the test follows it when it changes. Only the listening address differs:
tests here may listen on loopback only, so ``0.0.0.0:50051`` becomes a free
loopback port.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import venv
from pathlib import Path

import grpc
import pytest

from support.daemon import short_tempdir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        match = re.match(r"^(RUN|CMD|HEALTHCHECK|ENV)\s+(.*)$", line.strip())
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def _exec_form(text: str) -> list[str]:
    value = json.loads(text[text.index("[") :])
    assert isinstance(value, list)
    return [str(v) for v in value]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_dockerfile_commands_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    instructions = _instructions()
    runs = [body for kind, body in instructions if kind == "RUN"]
    [cmd] = [_exec_form(body) for kind, body in instructions if kind == "CMD"]
    [check] = [_exec_form(body) for kind, body in instructions if kind == "HEALTHCHECK"]
    assert cmd[:2] == ["sh", "-c"] and "exec buildd-server --address 0.0.0.0:50051" in cmd[2]
    assert check[0] == "buildd-client"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL="https://pypi.org/simple",
    )
    wheels = tmp_path / "wheels"
    # The build stage: `pip wheel ... --wheel-dir /wheels .` run from the repo.
    build = next(r for r in runs if "pip wheel" in r)
    build_argv = [a if a != "/wheels" else str(wheels) for a in shlex.split(build)]
    subprocess.run(build_argv, cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    # The final stage: install the wheels (user creation and chown need root in a container).
    install = next(r for r in runs if "pip install" in r).split("&&")[0]
    install_argv = shlex.split(
        install.replace("/wheels/*.whl", " ".join(str(p) for p in sorted(wheels.glob("*.whl"))))
    )
    subprocess.run(install_argv, env=env, check=True, capture_output=True, timeout=600)

    state = short_tempdir()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # The image's default command takes tokens from a mounted file when present.
    tokens = state / "tokens"
    tokens.write_text("ci:a-secret-token-for-this-test-only\n")
    tokens.chmod(0o600)
    server_env = dict(
        env,
        BUILDD_STATE_DIR=str(state / "state"),
        BUILDD_LOG_FORMAT="json",
        BUILDD_PRINCIPALS_FILE=str(tokens),
    )
    argv = [a.replace("0.0.0.0:50051", address) for a in cmd]
    server = subprocess.Popen(
        argv,
        env=server_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        health = subprocess.run(
            [a.replace("127.0.0.1:50051", address) for a in check],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0, health.stderr
        status = [a.replace("health", "status") for a in check]
        refused = subprocess.run(
            [a.replace("127.0.0.1:50051", address) for a in status],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr
        allowed = subprocess.run(
            [a.replace("127.0.0.1:50051", address) for a in status],
            env=dict(env, BUILDD_TOKEN="a-secret-token-for-this-test-only"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert allowed.returncode == 0, allowed.stderr
        assert (
            str(bin_dir)
            in subprocess.run(
                ["sh", "-c", "command -v buildd-server"], env=env, capture_output=True, text=True
            ).stdout
        )
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
