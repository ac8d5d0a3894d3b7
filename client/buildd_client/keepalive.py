"""Holding a session open from a background thread (the KeepAlive stream)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client.errors import RequestFailed

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from buildd.v1 import buildd_pb2_grpc

__all__ = ["KeepAlive"]


class KeepAlive:
    """Holds a session open while the ``with`` block runs (a KeepAlive stream).

    If the stream breaks (the daemon went away), ``error`` tells why and
    ``active`` turns false; the session's idle clock is then running.
    """

    def __init__(self, stub: buildd_pb2_grpc.BuilddStub, session_id: str, interval: float) -> None:
        self._stub = stub
        self._request = pb.KeepAliveRequest(session_id=session_id, interval_seconds=interval)
        self._rpc: grpc._CallIterator[pb.KeepAliveResponse] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._beat = threading.Event()
        self.last_heartbeat: float | None = None
        self.error: RequestFailed | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_heartbeat(self, timeout: float | None = None) -> bool:
        """Wait until the daemon sent a heartbeat; False on timeout or a broken stream."""
        return self._beat.wait(timeout)

    def _run(self) -> None:
        assert self._rpc is not None
        try:
            for beat in self._rpc:
                self.last_heartbeat = beat.now
                self._beat.set()
        except grpc.RpcError as exc:
            if not self._stopping:
                self.error = RequestFailed.from_rpc_error(
                    exc, not_found=pb.FAILURE_KIND_SESSION_NOT_FOUND
                )

    def __enter__(self) -> Self:
        self._rpc = self._stub.KeepAlive(self._request)
        self._thread = threading.Thread(target=self._run, name="buildd-keepalive", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        if self._rpc is not None:
            self._rpc.cancel()
        if self._thread is not None:
            self._thread.join()
