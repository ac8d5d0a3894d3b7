"""The TypeScript example, compiled with tsc --strict, run with Node against a real daemon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from support.daemon import DaemonProcess
from support.node import build_example, require_node
from support.projects import hatchling_project


@pytest.fixture(scope="module")
def dist() -> Path:
    return build_example()


def _run(node: str, script: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [node, str(script), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_example_client_does_a_plugin_authors_job(
    dist: Path, daemon: DaemonProcess, tmp_path: Path
) -> None:
    node = require_node()
    project = hatchling_project(tmp_path / "project")
    steps = _run(
        node,
        dist / "main.js",
        "--address",
        daemon.address,
        "--project",
        str(project),
        "--out",
        str(tmp_path / "out"),
    )
    by_step: dict[str, list[dict[str, Any]]] = {}
    for step in steps:
        by_step.setdefault(step["step"], []).append(step)
    print(*steps, sep="\n")

    [interpreters] = by_step["interpreters"]
    assert interpreters["count"] >= 1
    assert interpreters["first"]["source"] == "INTERPRETER_SOURCE_DAEMON"
    assert by_step["keepalive"] == [{"step": "keepalive", "heartbeat": True}]
    [opened] = by_step["session_opened"]
    assert opened["proposed_id_kept"] is True and opened["daemon_id"]

    [metadata] = by_step["metadata"]
    assert (metadata["name"], metadata["version"]) == ("demo-hatch", "3.0")
    phases = metadata["phases"]
    # Steps open and close by `step`, never by a duration.
    assert phases[0] == "KEY_RESOLVED:INSTANT"
    assert "CREATING_ENVIRONMENT:START" in phases and "CREATING_ENVIRONMENT:END" in phases
    assert phases.count("RUNNING_HOOK:START") == phases.count("HOOK_FINISHED:END") >= 1
    assert "hook_not_ok" not in by_step

    [wheel] = by_step["wheel"]
    built = tmp_path / "out" / wheel["filename"]
    assert built.is_file() and wheel["verified"] is True
    assert (
        wheel["digest"].startswith("sha256:") and int(wheel["size_bytes"]) == built.stat().st_size
    )
    assert by_step["downloaded"] == [
        {"step": "downloaded", "bytes": built.stat().st_size, "verified": True}
    ]

    errors = {(e["call"], e["reason"]): e for e in by_step["error"]}
    assert all(e["has_details"] for e in errors.values()), errors
    unspecified = errors["PrepareMetadata", "INVALID_REQUEST"]
    assert unspecified["code"] == "INVALID_ARGUMENT"
    assert unspecified["fields"] == ["distribution"] and unspecified["action"] == "fix-input"
    assert unspecified["agree"] is True
    missing = errors["GetRequires", "SOURCE_NOT_FOUND"]
    assert missing["code"] == "NOT_FOUND" and missing["action"] == "fix-input"
    never = errors["JoinSession", "SESSION_NOT_FOUND"]
    assert never["code"] == "NOT_FOUND" and never["action"] == "reopen-session"
    # The example sends the routing header: one naming another session is refused.
    routed = errors["JoinSession", "INVALID_REQUEST"]
    assert routed["code"] == "INVALID_ARGUMENT" and routed["fields"] == ["session_id"]
    ended = errors["JoinSession", "SESSION_ENDED"]
    assert ended["code"] == "NOT_FOUND" and ended["metadata"]["end_reason"] == "closed"
    # The environment stays in the principal's store (the daemon keeps one).
    closed = by_step["session_closed"][0]
    assert (closed["environments_stored"], closed["environments_deleted"]) == (1, 0)
    assert by_step["reopened"] == [{"step": "reopened", "closed_again": True}]
    assert steps[-1] == {"step": "done"}


@pytest.mark.parametrize("api", ["v1", "v1alpha"])
def test_reflection_from_node(dist: Path, daemon: DaemonProcess, api: str) -> None:
    """The official reflection.proto of either version gets the whole contract."""
    [answer] = _run(require_node(), dist / "reflect.js", "--address", daemon.address, "--api", api)
    assert answer["api"] == api
    assert {
        "buildd.v1.Buildd",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(answer["services"])
    assert {"OpenSession", "KeepAlive", "Build", "ListInterpreters"} <= set(
        answer["buildd_methods"]
    )
