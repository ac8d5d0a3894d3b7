"""Request fields are bounded and checked before anything uses them.

A real daemon on a Unix socket. Each bad value goes in through the raw stub
(the client library would refuse some of them itself) and must come back as
INVALID_ARGUMENT naming the field by its proto path from the request root,
in a message of at most a few hundred bytes, with a ``Failure`` event of kind
INVALID_REQUEST first on a long call; the probe backend records that no hook
ran, and the daemon keeps answering. Messages too large for their call are
refused by size before they are parsed, with RESOURCE_EXHAUSTED the client
can read, and without the memory the parsing used to cost.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from support.daemon import DaemonProcess
from support.projects import probe_project, read_probe_log
from support.remote import proc_status, reset_peak_rss

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
# "A few hundred bytes": what a refusal may carry back at most.
MAX_DETAILS = 500


@pytest.fixture(scope="module")
def daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse).start()
    yield process
    process.cleanup()


@pytest.fixture
def channel(daemon: DaemonProcess) -> Iterator[grpc.Channel]:
    # Large enough to send what the daemon must refuse.
    options = [("grpc.max_send_message_length", 128 << 20)]
    with grpc.insecure_channel(daemon.address, options=options) as value:
        yield value


@pytest.fixture
def stub(channel: grpc.Channel) -> buildd_pb2_grpc.BuilddStub:
    return buildd_pb2_grpc.BuilddStub(channel)


@pytest.fixture
def session_id(stub: buildd_pb2_grpc.BuilddStub) -> Iterator[str]:
    info = stub.OpenSession(pb.OpenSessionRequest(client_name="fields"), timeout=60)
    yield info.session_id
    stub.CloseSession(pb.CloseSessionRequest(session_id=info.session_id), timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return probe_project(tmp_path / "p", tmp_path / "probe.log")


def still_serving(channel: grpc.Channel) -> None:
    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="buildd.v1.Buildd"), timeout=60
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def long_call_refusal(events: Callable[[], Iterator[pb.Event]]) -> tuple[grpc.RpcError, pb.Event]:
    """The status of a long call that must fail, and the last event it sent."""
    seen: list[pb.Event] = []
    with pytest.raises(grpc.RpcError) as caught:
        for event in events():
            seen.append(event)
    error: grpc.RpcError = caught.value
    print(f"{error.code().name}: {error.details()}")
    assert seen, "no Failure event before the status"
    return error, seen[-1]


# Each: (field named, how the request is made from the session id and a good project path).
Make = Callable[[str, str], Any]


def _context(session_id: str, path: str, **kwargs: Any) -> pb.BuildContext:
    return pb.BuildContext(session_id=session_id, source=pb.Source(path=path), **kwargs)


def _metadata(**kwargs: Any) -> Make:
    return lambda sid, src: pb.PrepareMetadataRequest(context=_context(sid, src, **kwargs))


def _metadata_at(path: Callable[[str], str]) -> Make:
    return lambda sid, src: pb.PrepareMetadataRequest(context=_context(sid, path(src)))


def _build_into(outdir: Callable[[str], str]) -> Make:
    return lambda sid, src: pb.BuildRequest(
        context=_context(sid, src),
        distributions=[pb.DISTRIBUTION_WHEEL],
        output_directory=outdir(src),
    )


CASES: dict[str, tuple[str, Make]] = {
    "nul-in-source-path": ("context.source.path", _metadata_at(lambda src: src + "\0/x")),
    "newline-in-source-path": ("context.source.path", _metadata_at(lambda src: src + "\nx")),
    "escape-in-source-path": ("context.source.path", _metadata_at(lambda src: src + "\x1b[2J")),
    "source-path-over-4-kib": (
        "context.source.path",
        _metadata_at(lambda src: src + "/" + "d/" * 2100),
    ),
    "300-character-file-name": (
        "context.source.path",
        _metadata_at(lambda src: src + "/" + "n" * 300),
    ),
    "3000-folders-deep": ("context.source.path", _metadata_at(lambda src: src + "/a" * 3000)),
    "nul-in-output-directory": ("output_directory", _build_into(lambda src: src + "/out\0")),
    "tab-in-output-directory": ("output_directory", _build_into(lambda src: src + "/o\tut")),
    "300-character-output-name": (
        "output_directory",
        _build_into(lambda src: src + "/" + "o" * 300),
    ),
    "nul-in-python": ("context.python", _metadata(python="python3\0-c")),
    "control-in-python": ("context.python", _metadata(python="python3\x07")),
    "python-over-4-kib": ("context.python", _metadata(python="/usr/bin/" + "p" * 5000)),
    "config-settings-over-1-mib": (
        "context.config_settings",
        _metadata(
            config_settings=[
                pb.ConfigSetting(key=f"k{i}", values=["v" * 60_000]) for i in range(20)
            ]
        ),
    ),
    "nul-in-config-value": (
        "context.config_settings[1].values[0]",
        _metadata(
            config_settings=[
                pb.ConfigSetting(key="ok", values=["fine"]),
                pb.ConfigSetting(key="bad", values=["a\0b"]),
            ]
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_field_is_invalid_argument_naming_it(
    case: str,
    stub: buildd_pb2_grpc.BuilddStub,
    channel: grpc.Channel,
    session_id: str,
    project: Path,
    tmp_path: Path,
) -> None:
    field, make = CASES[case]
    request = make(session_id, str(project))
    method = stub.Build if isinstance(request, pb.BuildRequest) else stub.PrepareMetadata
    error, last = long_call_refusal(lambda: method(request, timeout=60))
    details = error.details() or ""
    assert error.code() == INVALID, details
    assert details.startswith(field + ":") or details.startswith(field + " "), details
    assert len(details.encode()) < MAX_DETAILS
    assert "\0" not in details
    assert last.WhichOneof("kind") == "failure"
    assert last.failure.kind == pb.FAILURE_KIND_INVALID_REQUEST
    assert last.failure.message == details
    # Refused before any hook ran.
    assert read_probe_log(tmp_path / "probe.log") == []
    still_serving(channel)


def test_download_path_is_checked(
    stub: buildd_pb2_grpc.BuilddStub, channel: grpc.Channel, session_id: str
) -> None:
    request = pb.DownloadArtifactRequest(session_id=session_id, path="/tmp/x\0.whl")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.DownloadArtifact(request, timeout=60))
    details = caught.value.details() or ""
    print(f"{caught.value.code().name}: {details}")
    assert caught.value.code() == INVALID
    assert details.startswith("path:")
    still_serving(channel)


def test_a_60_mb_source_path_is_refused_cheaply(
    daemon: DaemonProcess,
    stub: buildd_pb2_grpc.BuilddStub,
    channel: grpc.Channel,
    session_id: str,
) -> None:
    """It cost 630 MiB and the reply was lost: now gRPC refuses it by its size."""
    request = pb.PrepareMetadataRequest(context=_context(session_id, "/" + "p" * (60 << 20)))
    reset_peak_rss(daemon.pid)
    before = proc_status(daemon.pid, "VmHWM")
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.PrepareMetadata(request, timeout=120))
    grown = proc_status(daemon.pid, "VmHWM") - before
    details = caught.value.details() or ""
    print(f"{caught.value.code().name}: {details}; daemon peak grew {grown >> 20} MiB")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details
    assert str(2 << 20) in details
    # Not even one copy of the 60 MB held.
    assert grown < 32 << 20
    still_serving(channel)


def test_a_message_past_its_rpc_limit_is_refused_by_name(
    stub: buildd_pb2_grpc.BuilddStub, channel: grpc.Channel
) -> None:
    """Below gRPC's own limit, each RPC has its own: a session call needs a few hundred bytes."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.JoinSession(pb.JoinSessionRequest(session_id="s" * 200_000), timeout=60)
    details = caught.value.details() or ""
    print(f"{caught.value.code().name}: {details}")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details.startswith("JoinSession: a request message of 200")
    assert "at most 65536 bytes" in details
    still_serving(channel)
