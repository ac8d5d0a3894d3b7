"""One principal cannot starve the others: idle streams cost no thread, and caps hold.

A daemon on 127.0.0.1 with TLS and the test tokens. "alice" holds hundreds of
idle streams (KeepAlive streams, and UploadBlob calls that sent their header
and nothing after it) while "bob" opens a session and asks for status, and a
health check (no token) answers. A daemon whose streams each held a server
thread (128 of them) left bob and the health check without an answer.

The caps are shown with small values (``--max-...-per-principal``), and the
default session cap with the default: the call past a cap is refused with
RESOURCE_EXHAUSTED naming the cap, its value and the flag, while the other
principal's calls and health checks answer.

The attacker's streams are opened by a ``grpc.aio`` client on one event loop
(hundreds of calls, no thread each). That the daemon holds them is read from
the daemon itself: a KeepAlive stream's first message, and the ``buildd_held``
gauge for uploads.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc
from support.daemon import short_tempdir
from support.remote import TOKENS, Pki, RemoteDaemon, proc_status, wait_for, write_token_file

pytestmark = pytest.mark.integration

T = TypeVar("T")
DIGEST = "sha256:" + "ab" * 32
# Far above the 128 server threads that the idle streams used to fill.
IDLE_KEEPALIVES = 150
STALLED_UPLOADS = 150
# Long enough for any call on a busy machine; the old daemon never answered at all.
DEADLINE = 30.0


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.make(short_tempdir("bd-sec-pki-"))


@pytest.fixture(scope="module")
def token_file(pki: Pki) -> Path:
    return write_token_file(pki.ca.parent / "tokens")


@pytest.fixture
def make_daemon(wheelhouse: Path, pki: Pki, token_file: Path) -> Iterator[Any]:
    started: list[RemoteDaemon] = []

    def make(*args: str) -> RemoteDaemon:
        daemon = RemoteDaemon(wheelhouse, pki, token_file, args=args)
        started.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.cleanup()


def metadata(principal: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[principal]}"),)


class Attacker:
    """Streams of one principal held open by a grpc.aio client on a loop of its own."""

    def __init__(self, daemon: RemoteDaemon, principal: str, channels: int = 3) -> None:
        self._daemon = daemon
        self._metadata = metadata(principal)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._calls: list[Any] = []
        self._channels: list[grpc.aio.Channel] = []
        self._release: asyncio.Event = self.run(self._event())
        for _ in range(channels):
            self._channels.append(self.run(self._channel()))

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _event(self) -> asyncio.Event:
        return asyncio.Event()

    async def _channel(self) -> grpc.aio.Channel:
        creds = self._daemon.credentials(None)
        return grpc.aio.secure_channel(
            self._daemon.address, grpc.ssl_channel_credentials(creds.tls_ca)
        )

    def _stub(self, index: int) -> buildd_pb2_grpc.BuilddStub:
        return buildd_pb2_grpc.BuilddStub(self._channels[index % len(self._channels)])

    def keepalives(self, session_id: str, count: int) -> None:
        """Open ``count`` KeepAlive streams and read the first message of each."""

        async def open_all() -> None:
            calls = [
                self._stub(i).KeepAlive(
                    pb.KeepAliveRequest(session_id=session_id, interval_seconds=3600),
                    metadata=self._metadata,
                )
                for i in range(count)
            ]
            self._calls.extend(calls)
            await asyncio.gather(*(call.read() for call in calls))

        self.run(open_all())

    def stalled_uploads(self, count: int) -> list[Any]:
        """Start ``count`` uploads that send their header and then nothing."""

        async def stalled() -> AsyncIterator[pb.UploadBlobRequest]:
            header = pb.UploadBlobHeader(digest=DIGEST, size_bytes=1000, kind=pb.BLOB_KIND_SDIST)
            yield pb.UploadBlobRequest(header=header)
            await self._release.wait()

        async def open_all() -> list[Any]:
            calls = [
                self._stub(i).UploadBlob(stalled(), metadata=self._metadata) for i in range(count)
            ]
            self._calls.extend(calls)
            return calls

        return self.run(open_all())

    def outcome(self, call: Any, timeout: float = DEADLINE) -> grpc.StatusCode:
        async def wait() -> grpc.StatusCode:
            code: grpc.StatusCode = await asyncio.wait_for(call.code(), timeout)
            return code

        return self.run(wait())

    def close(self) -> None:
        async def stop() -> None:
            self._release.set()
            for call in self._calls:
                call.cancel()
            await asyncio.sleep(0)
            for channel in self._channels:
                await channel.close()

        self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def held(daemon: RemoteDaemon, cap: str) -> float:
    return daemon.metric("buildd_held", f'cap="{cap}"')


def refusal(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: grpc.RpcError = caught.value
    print(f"{error.code().name}: {error.details()}")
    return error


def bystander_answers(daemon: RemoteDaemon) -> float:
    """Bob opens a session, asks for status, closes it; health answers. Returns status seconds."""
    with daemon.channel() as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        info = stub.OpenSession(
            pb.OpenSessionRequest(client_name="bob"), metadata=metadata("bob"), timeout=DEADLINE
        )
        assert info.principal == "bob"
        started = time.perf_counter()
        status = stub.GetStatus(pb.GetStatusRequest(), metadata=metadata("bob"), timeout=DEADLINE)
        seconds = time.perf_counter() - started
        assert info.session_id in [s.session_id for s in status.sessions]
        assert {s.principal for s in status.sessions} == {"bob"}
        stub.CloseSession(
            pb.CloseSessionRequest(session_id=info.session_id),
            metadata=metadata("bob"),
            timeout=DEADLINE,
        )
        assert health(channel) == "SERVING"
    return seconds


def health(channel: grpc.Channel) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    answer = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="buildd.v1.Buildd"), timeout=DEADLINE
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)


def open_session(daemon: RemoteDaemon, principal: str) -> str:
    with daemon.channel() as channel:
        info = buildd_pb2_grpc.BuilddStub(channel).OpenSession(
            pb.OpenSessionRequest(client_name=principal),
            metadata=metadata(principal),
            timeout=DEADLINE,
        )
    return info.session_id


def test_hundreds_of_idle_streams_of_one_principal_starve_nobody(make_daemon: Any) -> None:
    daemon = make_daemon(
        "--max-streams-per-principal", "1000", "--max-uploads-per-principal", "1000"
    )
    rss_before = proc_status(daemon.pid, "VmRSS")
    session_id = open_session(daemon, "alice")
    attacker = Attacker(daemon, "alice")
    try:
        uploads = attacker.stalled_uploads(STALLED_UPLOADS)
        attacker.keepalives(session_id, IDLE_KEEPALIVES)
        wait_for(lambda: held(daemon, "uploads") == STALLED_UPLOADS, "the stalled uploads")
        assert held(daemon, "streams") == STALLED_UPLOADS + IDLE_KEEPALIVES
        rss_held = proc_status(daemon.pid, "VmRSS")

        latencies = [bystander_answers(daemon) for _ in range(5)]
        print(
            f"busy machine: {STALLED_UPLOADS + IDLE_KEEPALIVES} idle streams held; daemon RSS "
            f"{rss_before / 2**20:.1f} MiB before, {rss_held / 2**20:.1f} MiB while held "
            f"({(rss_held - rss_before) / 1024 / (STALLED_UPLOADS + IDLE_KEEPALIVES):.1f} KiB "
            f"per stream); bob's GetStatus median {statistics.median(latencies) * 1000:.1f} ms"
        )
        # The stalled uploads are still held, not refused: they wait on the loop.
        assert held(daemon, "uploads") == STALLED_UPLOADS
        assert not any(call.done() for call in uploads)
    finally:
        attacker.close()
    wait_for(lambda: held(daemon, "streams") == 0, "the streams to be released")
    # Nothing of the broken uploads stays behind.
    assert list((daemon.state_dir / "blobs" / "tmp").iterdir()) == []


def test_stream_and_upload_caps_refuse_only_the_principal_beyond_them(make_daemon: Any) -> None:
    daemon = make_daemon("--max-streams-per-principal", "6", "--max-uploads-per-principal", "2")
    session_id = open_session(daemon, "alice")
    attacker = Attacker(daemon, "alice", channels=1)
    try:
        attacker.stalled_uploads(2)
        wait_for(lambda: held(daemon, "uploads") == 2, "the two stalled uploads")
        [third] = attacker.stalled_uploads(1)
        assert attacker.outcome(third) == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = attacker.run(third.details())
        print(details)
        assert "--max-uploads-per-principal=2" in details
        assert "'alice'" in details

        attacker.keepalives(session_id, 4)  # 2 uploads + 4 KeepAlives: the 6 streams
        with daemon.channel() as channel:
            stub = buildd_pb2_grpc.BuilddStub(channel)
            request = pb.KeepAliveRequest(session_id=session_id)
            error = refusal(lambda: next(stub.KeepAlive(request, metadata=metadata("alice"))))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "cap of 6 streaming calls" in (error.details() or "")
            assert "--max-streams-per-principal=6" in (error.details() or "")
            context = pb.BuildContext(session_id=session_id, source=pb.Source(path="/nowhere"))
            metadata_call = pb.PrepareMetadataRequest(context=context)
            error = refusal(
                lambda: list(stub.PrepareMetadata(metadata_call, metadata=metadata("alice")))
            )
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Unary calls of alice still answer; so do bob's calls and health.
            status = stub.GetStatus(pb.GetStatusRequest(), metadata=metadata("alice"))
            assert status.principal == "alice"
            bob = open_session(daemon, "bob")
            first = next(
                stub.KeepAlive(pb.KeepAliveRequest(session_id=bob), metadata=metadata("bob"))
            )
            assert first.now > 0
        bystander_answers(daemon)
    finally:
        attacker.close()
    # Released with the streams: alice may stream again.
    wait_for(lambda: held(daemon, "streams") == 0, "the streams to be released")
    with daemon.channel() as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        request = pb.KeepAliveRequest(session_id=session_id)
        call = stub.KeepAlive(request, metadata=metadata("alice"), timeout=DEADLINE)
        assert next(call).now > 0
        call.cancel()


def test_session_cap(make_daemon: Any) -> None:
    daemon = make_daemon("--max-sessions-per-principal", "3")
    with daemon.channel() as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        opened = [open_session(daemon, "alice") for _ in range(3)]
        error = refusal(
            lambda: stub.OpenSession(pb.OpenSessionRequest(), metadata=metadata("alice"))
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "cap of 3 open sessions" in (error.details() or "")
        assert "--max-sessions-per-principal=3" in (error.details() or "")
        # Another principal is not counted against alice's cap.
        bystander_answers(daemon)
        stub.CloseSession(pb.CloseSessionRequest(session_id=opened[0]), metadata=metadata("alice"))
        assert open_session(daemon, "alice")


def test_sessions_are_capped_by_default(make_daemon: Any) -> None:
    """The default cap (1024) holds: the issue opened 2,000 sessions in 1.7 s."""
    daemon = make_daemon()
    with daemon.channel() as channel:
        stub = buildd_pb2_grpc.BuilddStub(channel)
        request = pb.OpenSessionRequest(client_name="flood")
        refused: grpc.RpcError | None = None
        opened = 0
        for _ in range(1100):  # bounded: past the default by 76
            try:
                stub.OpenSession(request, metadata=metadata("alice"), timeout=DEADLINE)
            except grpc.RpcError as exc:
                refused = exc
                break
            opened += 1
        assert refused is not None, "1100 sessions opened: no cap"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-sessions-per-principal=1024" in (refused.details() or "")
        assert opened == 1024
    bystander_answers(daemon)
