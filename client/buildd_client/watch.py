"""An open metadata watch: the events of one WatchMetadata stream, until cancelled."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

import grpc

from buildd_client.errors import RequestFailed

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from typing_extensions import Self

    from buildd.v1 import buildd_pb2 as pb

__all__ = ["Watch"]


class _End:
    def __init__(self, error: RequestFailed | None) -> None:
        self.error = error


class Watch:
    """A WatchMetadata stream: ``pb.WatchMetadataEvent`` messages as the daemon sends them.

    The first event is the current metadata (or why it cannot be prepared);
    each later one is new metadata or a failure. Iterate the watch, or call
    ``get(timeout)`` for one event at a time. Iteration ends after
    ``cancel()``; when the daemon ends the watch (its session ended, the daemon
    drains) iteration and ``get`` raise RequestFailed. Used as a context
    manager, the watch is cancelled when the block exits.

    A background thread reads the stream, so events wait in memory until
    taken; the daemon sends one only when the metadata changed.
    """

    def __init__(self, rpc: grpc.Call) -> None:
        self._rpc = rpc
        self._events: queue.Queue[pb.WatchMetadataEvent | _End] = queue.Queue()
        self._cancelled = False
        self._ended: _End | None = None
        self._reader = threading.Thread(target=self._read, name="buildd-watch", daemon=True)
        self._reader.start()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def get(self, timeout: float | None = None) -> pb.WatchMetadataEvent:
        """The next event; TimeoutError when none came within ``timeout`` seconds.

        StopIteration once the watch was cancelled; RequestFailed once the
        daemon ended it.
        """
        if self._ended is not None:
            return self._finish(self._ended)
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no metadata event within {timeout} s") from None
        if isinstance(item, _End):
            self._ended = item
            return self._finish(item)
        return item

    def __iter__(self) -> Iterator[pb.WatchMetadataEvent]:
        while True:
            try:
                yield self.get()
            except StopIteration:
                return

    def cancel(self) -> None:
        """Stop watching; the daemon stops its watch (and any hook it runs for it)."""
        self._cancelled = True
        self._rpc.cancel()

    def _finish(self, end: _End) -> pb.WatchMetadataEvent:
        if end.error is not None and not self._cancelled:
            raise end.error
        raise StopIteration

    def _read(self) -> None:
        error: RequestFailed | None = None
        try:
            for event in self._rpc:  # type: ignore[attr-defined]
                self._events.put(event)
        except grpc.RpcError as exc:
            if not self._cancelled:
                error = RequestFailed.from_rpc_error(exc)
        self._events.put(_End(error))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
