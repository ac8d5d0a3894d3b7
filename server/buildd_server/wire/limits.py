"""What one principal may hold at once, and how large one request message may be.

Caps (``--max-streams-per-principal`` and friends, ``config.PrincipalCaps``)
count what a principal holds now: streaming calls, sessions, uploads in
flight, watches. A call beyond a cap is refused at once with
RESOURCE_EXHAUSTED naming the cap, its value and the flag that changes it;
nothing ever waits for a slot. Health checking and reflection are never
counted, so they answer whatever a principal holds.

Message sizes: gRPC refuses any message above the largest per-RPC limit
before it is even parsed; below that, each RPC's own limit is checked on the
raw bytes, again before parsing (``_bounded``). A session call needs a few
hundred bytes, a long call's context at most its config settings (1 MiB in
all), an upload chunk at most 1 MiB.

``CallGate`` is the server interceptor that applies both to every buildd RPC;
``Limits.acquire`` is the API for a cap held inside one call::

    with limits.acquire(who.name, "watches"):
        ...  # RESOURCE_EXHAUSTED was raised instead when the principal holds too many
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Literal

import grpc
import grpc.aio

from .. import errors
from ..access.auth import OPEN_SERVICES
from . import failures
from .transfers import MAX_CHUNK

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

    from ..access.auth import Authenticator
    from ..config import PrincipalCaps
    from ..metrics import Metrics

Cap = Literal["streams", "sessions", "uploads", "watches"]
FLAGS: dict[Cap, str] = {
    "streams": "--max-streams-per-principal",
    "sessions": "--max-sessions-per-principal",
    "uploads": "--max-uploads-per-principal",
    "watches": "--max-watches-per-principal",
}
_WHAT: dict[Cap, str] = {
    "streams": "streaming calls at once",
    "sessions": "open sessions",
    "uploads": "uploads in flight",
    "watches": "metadata watches at once",
}

# Bytes of one request message, by method; every other buildd method: SMALL.
SMALL_MESSAGE = 64 << 10
_CONTEXT_MESSAGE = 2 << 20
MESSAGE_LIMITS: dict[str, int] = {
    "GetRequires": _CONTEXT_MESSAGE,
    "PrepareMetadata": _CONTEXT_MESSAGE,
    "Build": _CONTEXT_MESSAGE,
    "WatchMetadata": _CONTEXT_MESSAGE,
    # A chunk of at most 1 MiB and its framing.
    "UploadBlob": MAX_CHUNK + (16 << 10),
    # 1000 digests of 71 characters.
    "FindMissingBlobs": 256 << 10,
}
# What gRPC itself refuses before parsing anything (grpc.max_receive_message_length).
TRANSPORT_LIMIT = max(MESSAGE_LIMITS.values())


class Limits:
    """Per-principal counts against ``PrincipalCaps``; thread-safe, never blocks."""

    def __init__(self, caps: PrincipalCaps) -> None:
        self.caps = caps
        self._lock = threading.Lock()
        self._held: dict[Cap, Counter[str]] = {cap: Counter() for cap in FLAGS}
        # Serialises "count, then create" for caps counted elsewhere (sessions).
        self.creating = threading.Lock()

    def cap(self, what: Cap) -> int:
        value: int = getattr(self.caps, what)
        return value

    def held(self, principal: str, what: Cap) -> int:
        with self._lock:
            return self._held[what][principal]

    def totals(self) -> dict[str, int]:
        """What all principals hold now, by cap (the ``buildd_held`` gauge).

        Sessions are counted by the registry (the ``buildd_sessions`` gauge).
        """
        with self._lock:
            return {
                cap: sum(counts.values()) for cap, counts in self._held.items() if cap != "sessions"
            }

    @contextlib.contextmanager
    def acquire(self, principal: str, what: Cap) -> Iterator[None]:
        """Hold one ``what`` of ``principal`` for the block; ResourceExhausted when full."""
        with self._lock:
            held = self._held[what][principal]
            if held >= self.cap(what):
                raise self.refusal(principal, what)
            self._held[what][principal] = held + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._held[what][principal] - 1
                if left:
                    self._held[what][principal] = left
                else:
                    del self._held[what][principal]

    def check(self, principal: str, what: Cap, count: int) -> None:
        """Refuse one more ``what`` when ``principal`` already has ``count`` (kept elsewhere)."""
        if count >= self.cap(what):
            raise self.refusal(principal, what)

    def refusal(self, principal: str, what: Cap) -> errors.ResourceExhausted:
        cap = self.cap(what)
        return errors.ResourceExhausted(
            f"principal {principal!r} has reached the cap of {cap} {_WHAT[what]} "
            f"({FLAGS[what]}={cap}); end some first, or ask the operator to raise {FLAGS[what]}",
            # The principal's own calls free a slot when they end: retrying helps.
            retry_delay=1.0,
        )

    def interceptor(self, auth: Authenticator, metrics: Metrics | None = None) -> CallGate:
        return CallGate(self, auth, metrics)


class _Oversized:
    """What ``_bounded`` gives instead of a message too large for its RPC."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _bounded(deserialize: Callable[[bytes], Any] | None, limit: int) -> Callable[[bytes], Any]:
    def read(data: bytes) -> Any:
        if len(data) > limit:
            return _Oversized(len(data))
        return data if deserialize is None else deserialize(data)

    return read


class CallGate(grpc.aio.ServerInterceptor):
    """Per-RPC message limits and the ``streams`` cap, for every buildd RPC."""

    def __init__(self, limits: Limits, auth: Authenticator, metrics: Metrics | None) -> None:
        self._limits = limits
        self._auth = auth
        self._metrics = metrics
        # The wrapped handler of each method, made once: they hold no per-call state.
        self._wrapped: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        name = method.rpartition("/")[2]
        wrapped = self._wrap(handler, name, MESSAGE_LIMITS.get(name, SMALL_MESSAGE))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], name: str, limit: int
    ) -> grpc.RpcMethodHandler[Any, Any]:
        deserialize = _bounded(handler.request_deserializer, limit)
        serialize = handler.response_serializer

        async def refuse_oversized(context: grpc.aio.ServicerContext[Any, Any], size: int) -> None:
            await failures.abort(
                context,
                errors.ResourceExhausted(
                    f"{name}: a request message of {size} bytes; this call accepts at most "
                    f"{limit} bytes per message"
                ),
                self._metrics,
            )

        async def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for message in requests:
                if isinstance(message, _Oversized):
                    await refuse_oversized(context, message.size)
                yield message

        @contextlib.asynccontextmanager
        async def stream_slot(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            try:
                who = self._auth.principal(context)
                slot = self._limits.acquire(who.name, "streams")
                slot.__enter__()
            except errors.BuilddError as exc:
                await failures.abort(context, exc, self._metrics, call=name)
            try:
                yield
            finally:
                slot.__exit__(None, None, None)

        if handler.unary_unary is not None:
            unary_unary: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Oversized):
                    await refuse_oversized(context, request.size)
                return await unary_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, deserialize, serialize)
        if handler.unary_stream is not None:
            unary_stream: Any = handler.unary_stream

            async def server_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                if isinstance(request, _Oversized):
                    await refuse_oversized(context, request.size)
                async with stream_slot(context):
                    async for response in unary_stream(request, context):
                        yield response

            return grpc.unary_stream_rpc_method_handler(server_stream, deserialize, serialize)
        if handler.stream_unary is not None:
            stream_unary: Any = handler.stream_unary

            async def client_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                async with stream_slot(context):
                    return await stream_unary(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(client_stream, deserialize, serialize)
        assert handler.stream_stream is not None
        stream_stream: Any = handler.stream_stream

        async def both_streams(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with stream_slot(context):
                async for response in stream_stream(checked(requests, context), context):
                    yield response

        return grpc.stream_stream_rpc_method_handler(both_streams, deserialize, serialize)
