"""A running long call: a stream of events that ends in one result or failure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import grpc

from buildd.v1 import buildd_pb2 as pb
from buildd_client.errors import RequestFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from typing_extensions import Self

__all__ = ["Call"]

T = TypeVar("T")


class _EventStream(Protocol):
    """What a server-streaming gRPC call object offers (``grpc._CallIterator``)."""

    def __next__(self) -> pb.Event: ...

    def cancel(self) -> bool: ...


class Call(Generic[T]):
    """One PrepareMetadata, GetRequires or Build call in flight.

    Either iterate it to see each ``pb.Event`` as it arrives (phases, log
    lines, then the final ``result`` or ``failure`` event), or just call
    ``result()``; both can be combined, e.g. iterate, then ``result()``.
    Iteration stops quietly when the stream ends, whatever the outcome:
    ``result()`` is what raises. Used as a context manager, the call is
    cancelled when the block exits before the stream ended (an exception,
    a ``break``). A KeyboardInterrupt while waiting for the next event
    cancels the call on the daemon too (its hook process is killed).
    """

    def __init__(self, rpc: _EventStream, field: str, extract: Callable[[pb.Result], T]) -> None:
        self._rpc = rpc
        self._field = field
        self._extract = extract
        self._final: pb.Event | None = None
        self._error: grpc.RpcError | None = None
        self._finished = False
        self._cancelled = False

    @property
    def final(self) -> pb.Event | None:
        """The final event (``result`` or ``failure``) once it arrived."""
        return self._final

    @property
    def done(self) -> bool:
        """True once the stream has ended."""
        return self._finished

    @property
    def cancelled(self) -> bool:
        """True when ``cancel()`` was called before the stream ended."""
        return self._cancelled

    def __iter__(self) -> Iterator[pb.Event]:
        while not self._finished:
            try:
                event = next(self._rpc)
            except StopIteration:
                self._finished = True
                return
            except grpc.RpcError as exc:
                # After a Failure event the RPC also ends with its status:
                # expected, and the event says more than the status does.
                self._error = exc
                self._finished = True
                return
            except KeyboardInterrupt:
                self.cancel()
                raise
            if event.WhichOneof("kind") in ("result", "failure"):
                self._final = event
            yield event

    def result(self) -> T:
        """Wait for the end of the stream; the result, or RequestFailed."""
        for _ in self:
            pass
        return self._outcome()

    def cancel(self) -> None:
        """Cancel the call; the daemon stops its hook. No-op once the stream ended."""
        if self._finished:
            return
        self._cancelled = True
        self._rpc.cancel()

    def _outcome(self) -> T:
        final = self._final
        if final is not None and final.HasField("failure"):
            raise RequestFailed.from_failure(final.failure)
        if final is not None and final.HasField("result"):
            which = final.result.WhichOneof("kind")
            if which != self._field:
                raise RequestFailed(
                    pb.FAILURE_KIND_INTERNAL,
                    grpc.StatusCode.INTERNAL,
                    f"the daemon sent a {which!r} result where a {self._field!r} result "
                    "was expected",
                )
            return self._extract(final.result)
        if self._error is not None:
            failed = RequestFailed.from_rpc_error(self._error)
            if "RST_STREAM" in failed.message:
                # The daemon always ends a call with a status; a reset stream
                # means the connection broke: the daemon, or the proxy in front
                # of it, went away mid-call.
                raise RequestFailed(
                    pb.FAILURE_KIND_UNAVAILABLE,
                    failed.status,
                    f"the call broke off before its end ({failed.message}): the daemon, or "
                    "the proxy in front of it, went away; run it again (a session that was "
                    "lost with its daemon answers SESSION_NOT_FOUND)",
                )
            raise failed
        raise RequestFailed(
            pb.FAILURE_KIND_INTERNAL,
            grpc.StatusCode.INTERNAL,
            "the daemon ended the stream without a result or a failure event",
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
