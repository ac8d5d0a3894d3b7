"""A long call (``GetRequires``, ``PrepareMetadata``, ``Build``) from request to last event.

The request is decoded and its paths checked on the event loop; the service
runs in a worker thread of its own whose events come back through a bounded
``Bridge``. When the RPC ends for any reason (client cancel, disconnect,
deadline, shutdown) the request's cancel event is set, which kills the
running hook's process group.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import structlog

from buildd.v1 import buildd_pb2 as pb

from .. import errors
from ..access.routing import check_session_header
from . import decode, encode, failures
from .streams import Bridge

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    import grpc.aio

    from ..access.auth import Authenticator
    from ..events import Event
    from ..metrics import Metrics
    from ..service.requests import Request
    from .streams import Calls

    Context = grpc.aio.ServicerContext[Any, Any]
    Emit = Callable[[Event], None]
    Work = Callable[[Request, Emit, threading.Event], pb.Result]


class _End:
    """The worker's last item: its outcome."""

    def __init__(self, value: pb.Result | None = None, error: errors.BuilddError | None = None):
        self.value = value
        self.error = error


class LongCalls:
    """Runs long calls: one worker thread each, counted by ``calls`` for the drain."""

    def __init__(self, auth: Authenticator, calls: Calls, metrics: Metrics) -> None:
        self._auth = auth
        self._calls = calls
        self._metrics = metrics

    async def stream(
        self,
        wire: pb.BuildContext,
        context: Context,
        name: str,
        run: Work,
        paths: tuple[tuple[str, str], ...] = (),
    ) -> AsyncIterator[pb.Event]:
        started = time.monotonic()
        cancel = threading.Event()
        end_call = self._calls.call_started()

        def over(_context: Any = None) -> None:
            # Once the RPC is over (status sent, cancelled, or its coroutine
            # ended): the hook is killed, and that is what a drain waits for.
            cancel.set()
            end_call()

        # (The stubs type the callback as a class of their own.)
        context.add_done_callback(over)  # type: ignore[arg-type]
        try:
            remaining = context.time_remaining()
            deadline = None if remaining is None else started + remaining
            try:
                who = self._auth.principal(context)
                check_session_header(
                    context.invocation_metadata(), wire.session_id, "context.session_id"
                )
                request = decode.context(wire, deadline, who.name)
                # What the request starts is contained as its principal's kind requires.
                request = dataclasses.replace(request, remote=who.remote)
                for field, path in paths:
                    if path:
                        decode.check_absolute_path(path, field)
                # A remote principal names daemon paths only under --allow-path.
                for field, path in (("context.source.path", wire.source.path), *paths):
                    self._auth.check_path(who, path, field)
                self._auth.check_interpreter(who, wire.python)
            except errors.BuilddError as exc:
                yield pb.Event(failure=failures.failure(exc))
                await failures.abort(context, exc, self._metrics, call=name)

            bridge: Bridge[pb.Event | _End] = Bridge(asyncio.get_running_loop())
            request_id = uuid.uuid4().hex[:12]

            def emit(event: Event) -> None:
                bridge.put(encode.event(event, started), cancel)

            def work() -> None:
                # Every log event of this request, from any module, carries these.
                structlog.contextvars.bind_contextvars(
                    request=request_id, call=name, session=request.session_id[:8]
                )
                try:
                    end = _End(value=run(request, emit, cancel))
                except errors.BuilddError as exc:
                    end = _End(error=exc)
                except Exception as exc:
                    end = _End(error=failures.internal(exc, name))
                bridge.put(end, cancel)

            self._calls.start_worker(f"buildd-{name}", work)
            while True:
                item = await bridge.get()
                if isinstance(item, pb.Event):
                    yield item
                elif item.error is None:
                    assert item.value is not None
                    yield pb.Event(result=item.value)
                    return
                else:
                    yield pb.Event(failure=failures.failure(item.error))
                    await failures.abort(
                        context,
                        item.error,
                        self._metrics,
                        call=name,
                        session=request.session_id[:8],
                    )
        finally:
            over()
