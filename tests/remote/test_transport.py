"""TLS and tokens against a real daemon on 127.0.0.1: right, wrong, missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from buildd_client import Client, DaemonUnavailable, RequestFailed
from buildd_client.credentials import Credentials
from support.daemon import DaemonProcess
from support.remote import TOKENS, UNNAMED, MakeRemote, Pki, RemoteDaemon, free_port

DIGEST = "sha256:" + "0" * 64


def _calls(stub: buildd_pb2_grpc.BuilddStub) -> dict[str, object]:
    """One call of every shape: unary, server-, client- and bidi-less streaming."""
    context = pb.BuildContext(session_id="x" * 32, source=pb.Source(digest=DIGEST))
    return {
        "OpenSession": lambda md: stub.OpenSession(pb.OpenSessionRequest(), metadata=md),
        "GetStatus": lambda md: stub.GetStatus(pb.GetStatusRequest(), metadata=md),
        "Build": lambda md: list(stub.Build(pb.BuildRequest(context=context), metadata=md)),
        "KeepAlive": lambda md: next(
            stub.KeepAlive(pb.KeepAliveRequest(session_id="x" * 32), metadata=md)
        ),
        "FindMissingBlobs": lambda md: stub.FindMissingBlobs(
            pb.FindMissingBlobsRequest(digests=[DIGEST]), metadata=md
        ),
        "UploadBlob": lambda md: stub.UploadBlob(
            iter([pb.UploadBlobRequest(header=pb.UploadBlobHeader(digest=DIGEST))]), metadata=md
        ),
        "DownloadArtifact": lambda md: list(
            stub.DownloadArtifact(pb.DownloadArtifactRequest(path="/x"), metadata=md)
        ),
        "Shutdown": lambda md: stub.Shutdown(pb.ShutdownRequest(), metadata=md),
    }


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param((), id="no-token"),
        pytest.param((("authorization", "Bearer not-a-known-token-at-all"),), id="wrong-token"),
        pytest.param((("authorization", f"Basic {TOKENS['alice']}"),), id="wrong-scheme"),
        pytest.param((("authorization", f"Bearer {TOKENS['alice']}x"),), id="token-plus-one"),
    ],
)
def test_every_call_without_a_known_token_is_unauthenticated(
    remote: RemoteDaemon, metadata: tuple[tuple[str, str], ...]
) -> None:
    with remote.channel() as channel:
        for name, call in _calls(buildd_pb2_grpc.BuilddStub(channel)).items():
            with pytest.raises(grpc.RpcError) as caught:
                call(metadata)  # type: ignore[operator]
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            bearer = bool(metadata) and metadata[0][1].startswith("Bearer")
            expected = "not accepted" if bearer else "requires a token"
            assert expected in (caught.value.details() or ""), name
    assert "call_unauthenticated" in remote.log()
    # The refusals never show a token.
    assert not any(token in remote.log() for token in TOKENS.values())


def test_right_tokens_name_their_principals(remote: RemoteDaemon) -> None:
    for principal in ("alice", "ops"):
        with remote.client(principal) as client:
            status = client.status()
            assert (status.principal, status.admin) == (principal, principal == "ops")
            with client.open_session("t") as session:
                assert session.info.principal == principal
    creds = Credentials(tls_ca=remote.pki.ca.read_bytes(), token=UNNAMED)
    with Client(remote.address, autostart=False, credentials=creds) as client:
        # The unnamed token is on line 6 of the token file.
        assert client.status().principal == "token-6"


def test_health_and_reflection_answer_without_a_token(remote: RemoteDaemon) -> None:
    with remote.client(None) as client:
        assert client.health()
    with remote.channel() as channel:
        reflect = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        # ServerReflectionRequest{list_services: ""} is field 7, empty string.
        answer = next(reflect(iter([b"\x3a\x00"]), timeout=10))
        assert b"buildd.v1.Buildd" in answer


def test_tls_is_required_and_checked(remote: RemoteDaemon, pki: Pki) -> None:
    # Plain text to the TLS port: no answer.
    with grpc.insecure_channel(remote.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            buildd_pb2_grpc.BuilddStub(channel).GetStatus(pb.GetStatusRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # A CA that did not sign the daemon's certificate: the client refuses it.
    creds = Credentials(tls_ca=pki.other_ca.read_bytes(), token=TOKENS["alice"])
    with Client(remote.address, autostart=False, credentials=creds) as client:
        with pytest.raises(RequestFailed) as failed:
            client.status()
        assert failed.value.status == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_wants_a_client_certificate(make_remote: MakeRemote) -> None:
    daemon = make_remote(client_ca=True, metrics=False)
    with daemon.client("bob") as client:
        assert client.status().principal == "bob"
    bare = Credentials(tls_ca=daemon.pki.ca.read_bytes(), token=TOKENS["bob"])
    with Client(daemon.address, autostart=False, credentials=bare) as client:
        with pytest.raises(RequestFailed) as failed:
            client.status()
        assert failed.value.status == grpc.StatusCode.UNAVAILABLE


def test_shutdown_is_for_admins(make_remote: MakeRemote) -> None:
    daemon = make_remote(["--admin", "ops"], metrics=False)
    with daemon.client("alice") as client:
        with pytest.raises(RequestFailed) as failed:
            client.shutdown()
        assert failed.value.status == grpc.StatusCode.PERMISSION_DENIED
        assert "'alice' is not an admin" in failed.value.message
    with daemon.client("ops") as client:
        client.shutdown()
    assert daemon.stop(timeout=60) == 0
    assert '"principal": "ops"' in daemon.log() and "shutdown_requested" in daemon.log()


def test_client_cli_flags_and_variables(remote: RemoteDaemon, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"# ci\n{TOKENS['bob']}\n")

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {"PATH": "/usr/bin:/bin", "XDG_STATE_HOME": str(tmp_path / "state")}
        return subprocess.run(
            [sys.executable, "-m", "buildd_client", "--address", remote.address, *args],
            capture_output=True,
            text=True,
            env={**base, **(env or {})},
            timeout=60,
        )

    ok = cli("--tls-ca", str(remote.pki.ca), "--token-file", str(token), "status", "--json")
    assert ok.returncode == 0, ok.stderr
    assert '"principal": "bob"' in ok.stdout
    env = {"BUILDD_TLS_CA": str(remote.pki.ca), "BUILDD_TOKEN": TOKENS["alice"]}
    assert '"principal": "alice"' in cli("status", "--json", env=env).stdout
    refused = cli("--tls-ca", str(remote.pki.ca), "status")
    assert refused.returncode == 2
    assert "requires a token" in refused.stderr
    missing = cli("--tls-ca", str(tmp_path / "nope.pem"), "status")
    assert missing.returncode == 2 and "nope.pem" in missing.stderr


def test_daemon_refuses_to_serve_an_open_network_address() -> None:
    plain = DaemonProcess(None)
    plain.address = f"0.0.0.0:{free_port()}"
    try:
        refused = subprocess.run(plain.command(), capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        assert "0.0.0.0" in refused.stderr
        assert "without TLS and tokens is refused" in refused.stderr
        # --insecure accepts the risk, and the log says so before the start.
        insecure = subprocess.Popen(
            [*plain.command(), "--insecure"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert insecure.stderr is not None
            lines: list[str] = []
            for line in insecure.stderr:
                lines.append(line)
                if "daemon_started" in line:
                    break
            assert any("insecure_listen" in line for line in lines), lines
        finally:
            insecure.terminate()  # right after start: it may not handle SIGTERM yet
            insecure.wait(timeout=60)
    finally:
        plain.cleanup()


def test_unknown_daemon_address_is_unavailable(pki: Pki) -> None:
    creds = Credentials(tls_ca=pki.ca.read_bytes(), token=TOKENS["alice"])
    with (
        Client(f"127.0.0.1:{free_port()}", autostart=False, credentials=creds) as client,
        pytest.raises((RequestFailed, DaemonUnavailable)),
    ):
        client.status()
