"""Exact request semantics and the typed response fields, as any client sees them on the wire."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client
from support.daemon import DaemonProcess
from support.projects import hatchling_project, setuptools_project


@pytest.fixture
def stub(daemon: DaemonProcess) -> Iterator[buildd_pb2_grpc.BuilddStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        yield buildd_pb2_grpc.BuilddStub(channel)


@pytest.fixture
def session_id(stub: buildd_pb2_grpc.BuilddStub) -> Iterator[str]:
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="fields"), timeout=30)
    yield info.session_id
    with contextlib.suppress(grpc.RpcError):
        stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id), timeout=60)


def _events(stream: Any) -> tuple[list[pb.Event], grpc.RpcError | None]:
    events: list[pb.Event] = []
    try:
        for event in stream:
            events.append(event)
    except grpc.RpcError as exc:
        return events, exc
    return events, None


def _context(session_id: str, source: Path) -> pb.BuildContext:
    return pb.BuildContext(session_id=session_id, source=pb.Source(path=str(source)))


@pytest.mark.parametrize("number", [0, 7])
@pytest.mark.parametrize("call", ["GetRequires", "PrepareMetadata", "Build"])
def test_unspecified_or_unknown_enum_is_refused_naming_the_field(
    stub: buildd_pb2_grpc.BuilddStub, session_id: str, tmp_path: Path, call: str, number: int
) -> None:
    """Zero is what a forgotten field or a misspelt enum name decodes to: never a default."""
    project = hatchling_project(tmp_path / "p")
    context = _context(session_id, project)
    requests: dict[str, tuple[Any, str]] = {
        "GetRequires": (
            pb.GetRequiresRequest(context=context, distribution=number),
            "distribution",
        ),
        "PrepareMetadata": (
            pb.PrepareMetadataRequest(context=context, distribution=number),
            "distribution",
        ),
        "Build": (
            pb.BuildRequest(context=context, distributions=[pb.DISTRIBUTION_WHEEL, number]),
            "distributions[1]",
        ),
    }
    request, field = requests[call]
    events, error = _events(getattr(stub, call)(request, timeout=120))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    [final] = events
    assert final.failure.kind == pb.FAILURE_KIND_INVALID_REQUEST
    assert final.failure.field == field
    assert final.failure.message.startswith(f"{field}: ")
    assert ("DISTRIBUTION_UNSPECIFIED" if number == 0 else str(number)) in final.failure.message


def test_an_empty_distribution_list_still_means_sdist_then_wheel(
    client: Client, tmp_path: Path
) -> None:
    project = hatchling_project(tmp_path / "p")
    with client.open_session("t") as session:
        request = pb.BuildRequest(
            context=_context(session.id, project), output_directory=str(tmp_path / "out")
        )
        events, error = _events(client.stub.Build(request, timeout=600))
    assert error is None
    artifacts = events[-1].result.build.artifacts
    assert [a.distribution for a in artifacts] == [pb.DISTRIBUTION_SDIST, pb.DISTRIBUTION_WHEEL]


def test_phases_say_start_end_and_outcome_logs_say_their_source(
    client: Client, tmp_path: Path
) -> None:
    project = setuptools_project(tmp_path / "p")  # setuptools prints what it builds
    with client.open_session("t") as session:
        events = list(session.build(project, distributions=["wheel"], output_directory=tmp_path))
    phases = [e.phase for e in events if e.HasField("phase")]
    steps = {(p.kind, p.step) for p in phases}
    for kind in (pb.PHASE_KIND_CREATING_ENVIRONMENT, pb.PHASE_KIND_INSTALLING_REQUIREMENTS):
        assert {(kind, pb.PHASE_STEP_START), (kind, pb.PHASE_STEP_END)} <= steps
    assert (pb.PHASE_KIND_RUNNING_HOOK, pb.PHASE_STEP_START) in steps
    for phase in phases:
        if phase.step == pb.PHASE_STEP_END:
            assert phase.step_seconds > 0
        else:
            assert phase.step_seconds == 0
        if phase.kind == pb.PHASE_KIND_HOOK_FINISHED:
            assert (phase.step, phase.outcome) == (pb.PHASE_STEP_END, pb.HOOK_OUTCOME_OK)
        else:
            assert phase.outcome == pb.HOOK_OUTCOME_UNSPECIFIED
        if phase.kind in (pb.PHASE_KIND_KEY_RESOLVED, pb.PHASE_KIND_ENVIRONMENT_LEASED):
            assert phase.step == pb.PHASE_STEP_INSTANT
    sources = {(e.log.source, e.log.hook) for e in events if e.HasField("log")}
    assert (pb.LOG_SOURCE_INSTALLER, "install") in sources
    assert any(s == pb.LOG_SOURCE_HOOK and h.startswith("build_") for s, h in sources)
    assert all(s != pb.LOG_SOURCE_UNSPECIFIED for s, _ in sources)
    [artifact] = events[-1].result.build.artifacts
    data = Path(artifact.path).read_bytes()
    assert artifact.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert artifact.size_bytes == len(data)
    # The deprecated fields are still filled, for older clients.
    assert (artifact.sha256, artifact.size) == (artifact.digest[7:], artifact.size_bytes)


def test_a_failed_hook_says_so_in_its_outcome(client: Client, tmp_path: Path) -> None:
    project = hatchling_project(tmp_path / "p")
    (project / "pyproject.toml").write_text(
        (project / "pyproject.toml").read_text().replace('version = "3.0"', 'version = "no"')
    )
    with client.open_session("t") as session:
        events = list(session.metadata(project))
    finished = [e.phase for e in events if e.phase.kind == pb.PHASE_KIND_HOOK_FINISHED]
    assert finished[-1].outcome == pb.HOOK_OUTCOME_FAILED and finished[-1].detail == "failed"
    assert events[-1].HasField("failure")


def test_download_header_carries_digest_and_size_bytes(client: Client, tmp_path: Path) -> None:
    project = hatchling_project(tmp_path / "p")
    with client.open_session("t") as session:
        [wheel] = (
            session.build(project, distributions=["wheel"], output_directory=tmp_path)
            .result()
            .artifacts
        )
        stream = client.stub.DownloadArtifact(
            pb.DownloadArtifactRequest(session_id=session.id, path=wheel.path), timeout=60
        )
        header = next(iter(stream)).header
        stream.cancel()
    assert (header.digest, header.size_bytes) == (wheel.digest, wheel.size_bytes)
    assert (header.sha256, header.size) == (wheel.sha256, wheel.size)


@pytest.mark.parametrize(
    ("name", "accepted"),
    [("x" * 256, True), ("é" * 128, True), ("x" * 257, False), ("é" * 129, False)],
    ids=["256-ascii", "256-bytes-utf8", "257-ascii", "258-bytes-utf8"],
)
def test_client_name_limit_is_exact_and_never_cuts(
    stub: buildd_pb2_grpc.BuilddStub, name: str, accepted: bool
) -> None:
    request = pb.OpenSessionRequest(client_name=name)
    if accepted:
        info = stub.OpenSession(request, timeout=30)
        status = stub.GetStatus(pb.GetStatusRequest(session_id=info.session_id), timeout=30)
        assert status.sessions[0].client_name == name
        stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id), timeout=30)
        return
    with pytest.raises(grpc.RpcError) as caught:
        stub.OpenSession(request, timeout=30)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("client_name: ") and "256 bytes" in error.details()


@pytest.mark.parametrize(
    ("interval", "accepted"),
    [
        (0.0, True),
        (0.05, True),
        (3600.0, True),
        (0.01, False),
        (-1.0, False),
        (3601.0, False),
        (float("nan"), False),
        (float("inf"), False),
    ],
)
def test_keepalive_interval_bounds(
    stub: buildd_pb2_grpc.BuilddStub, session_id: str, interval: float, accepted: bool
) -> None:
    stream = stub.KeepAlive(
        pb.KeepAliveRequest(session_id=session_id, interval_seconds=interval), timeout=30
    )
    if accepted:
        assert next(stream).now > 0
        stream.cancel()
        return
    with pytest.raises(grpc.RpcError) as caught:
        next(stream)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("interval_seconds: ")
