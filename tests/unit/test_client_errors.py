"""Client errors: exit codes per failure kind and the mapping of bare gRPC statuses."""

from __future__ import annotations

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd_client.errors import DaemonUnavailable, RequestFailed, status_from_number

USAGE = {
    "INVALID_REQUEST",
    "INVALID_PROJECT",
    "SOURCE_NOT_FOUND",
    "SOURCE_UNREADABLE",
    "SESSION_NOT_FOUND",
    "SESSION_ENDED",
    "BLOB_NOT_FOUND",
    "ARTIFACT_NOT_FOUND",
    "INTERPRETER_NOT_FOUND",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "SESSION_EXISTS",
}


@pytest.mark.parametrize(
    "name", [n for n, _ in pb.FailureKind.items() if n != "FAILURE_KIND_UNSPECIFIED"]
)
def test_exit_code_of_every_failure_kind(name: str) -> None:
    short = name.removeprefix("FAILURE_KIND_")
    error = RequestFailed(pb.FailureKind.Value(name), grpc.StatusCode.UNKNOWN, "m")
    expected = 2 if short in USAGE else 3 if short == "UNAVAILABLE" else 1
    assert error.exit_code == expected
    assert error.kind_name == short.lower()


def test_from_failure_keeps_every_field() -> None:
    failure = pb.Failure(
        kind=pb.FAILURE_KIND_INVALID_PROJECT,
        status_code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message="/p/pyproject.toml: build-system.requires is not a list",
        hook="",
        last_lines=["a", "b"],
        path="/p/pyproject.toml",
    )
    error = RequestFailed.from_failure(failure)
    assert error.status == grpc.StatusCode.INVALID_ARGUMENT
    assert error.last_lines == ["a", "b"]
    assert error.path == "/p/pyproject.toml"
    assert str(error) == "invalid_project: /p/pyproject.toml: build-system.requires is not a list"
    assert error.exit_code == 2


class _Error(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, pb.FAILURE_KIND_INVALID_REQUEST),
        (grpc.StatusCode.NOT_FOUND, pb.FAILURE_KIND_SOURCE_NOT_FOUND),
        (grpc.StatusCode.PERMISSION_DENIED, pb.FAILURE_KIND_PERMISSION_DENIED),
        (grpc.StatusCode.UNAUTHENTICATED, pb.FAILURE_KIND_UNAUTHENTICATED),
        (grpc.StatusCode.FAILED_PRECONDITION, pb.FAILURE_KIND_BACKEND_FAILED),
        (grpc.StatusCode.DEADLINE_EXCEEDED, pb.FAILURE_KIND_TIMEOUT),
        (grpc.StatusCode.CANCELLED, pb.FAILURE_KIND_CANCELLED),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, pb.FAILURE_KIND_RESOURCE_EXHAUSTED),
        (grpc.StatusCode.UNAVAILABLE, pb.FAILURE_KIND_UNAVAILABLE),
        (grpc.StatusCode.UNIMPLEMENTED, pb.FAILURE_KIND_INTERNAL),
        (grpc.StatusCode.INTERNAL, pb.FAILURE_KIND_INTERNAL),
        (grpc.StatusCode.UNKNOWN, pb.FAILURE_KIND_INTERNAL),
    ],
)
def test_from_rpc_error(status: grpc.StatusCode, kind: int) -> None:
    error = RequestFailed.from_rpc_error(_Error(status, "details"))
    assert (error.kind, error.status, error.message) == (kind, status, "details")


def test_from_rpc_error_not_found_kind_is_the_callers() -> None:
    error = RequestFailed.from_rpc_error(
        _Error(grpc.StatusCode.NOT_FOUND, ""), not_found=pb.FAILURE_KIND_SESSION_NOT_FOUND
    )
    assert error.kind == pb.FAILURE_KIND_SESSION_NOT_FOUND
    assert "NOT_FOUND" in error.message  # no details: the status is named


def test_status_from_number() -> None:
    assert status_from_number(9) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_from_number(999) == grpc.StatusCode.UNKNOWN


def test_daemon_unavailable_exit_code() -> None:
    assert DaemonUnavailable("no daemon", log_lines=["x"]).exit_code == 3
