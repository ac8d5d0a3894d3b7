"""From blocking worker threads to the event loop, with backpressure.

A long call runs the service in a worker thread of its own; its events reach
the RPC's coroutine through a ``Bridge``. The bridge holds at most ``size``
events: when the client reads slowly the worker's ``put`` waits, so the hook
writing the output waits on its pipe and the daemon's memory stays bounded.
Handing an event over costs one ``call_soon_threadsafe``; the worker waits
only when the bridge is full.

``Calls`` counts long calls and their workers for the drain (the daemon's
main thread waits on it), ``Blocking`` runs short blocking work (a unary
call's service logic, one upload or download chunk) in a bounded executor,
and ``EventLoopThread`` is the loop the gRPC server runs on.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from concurrent.futures import Executor

T = TypeVar("T")
P = ParamSpec("P")

# Events waiting for a slow reader, per call.
BRIDGE_SIZE = 512
# How often a worker blocked on a full bridge looks at its cancel event.
_POLL = 0.1


class Bridge(Generic[T]):
    """Items from one worker thread to one coroutine, at most ``size`` waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = BRIDGE_SIZE) -> None:
        self._loop = loop
        # Unbounded by itself: ``_room`` bounds it, on the worker's side.
        self._items: asyncio.Queue[T] = asyncio.Queue()
        self._room = threading.Semaphore(size)

    def put(self, item: T, cancel: threading.Event) -> bool:
        """From the worker: hand over ``item``, waiting while the bridge is full.

        False when the call was cancelled first, or the event loop is gone:
        nobody will read the item.
        """
        while not self._room.acquire(timeout=_POLL):
            if cancel.is_set():
                return False
        if cancel.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._items.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is gone
            return False
        return True

    async def get(self) -> T:
        """On the loop: the next item."""
        item = await self._items.get()
        self._room.release()
        return item


class Calls:
    """Long calls not yet over, and worker threads still running; thread-safe.

    A worker outlives its RPC briefly while its hook is being killed; the
    drain waits for the calls first (they get the grace), then for the workers
    (so no environment is deleted under a hook still being killed).
    """

    def __init__(self) -> None:
        self.active = 0
        self.workers = 0
        self._changed = threading.Condition()

    def call_started(self) -> Callable[[], None]:
        """Count a long call; returns its end, safe to call more than once."""
        with self._changed:
            self.active += 1
        ended = False

        def end() -> None:
            nonlocal ended
            with self._changed:
                if ended:
                    return
                ended = True
                self.active -= 1
                self._changed.notify_all()

        return end

    def start_worker(self, name: str, work: Callable[[], None]) -> None:
        """Run ``work`` in a thread of its own, counted until it returns."""
        with self._changed:
            self.workers += 1

        def run() -> None:
            try:
                work()
            finally:
                with self._changed:
                    self.workers -= 1
                    self._changed.notify_all()

        # The caller's context (structlog's bound variables) goes along.
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(run,), name=name, daemon=True).start()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no long call runs; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.active == 0, timeout=timeout)

    def wait_workers(self, timeout: float) -> bool:
        """Wait until every worker thread has ended; False when ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: self.workers == 0, timeout=timeout)


class Blocking:
    """Short blocking work off the event loop, in a bounded executor."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)


class EventLoopThread:
    """An asyncio event loop running in a thread of its own (the gRPC server's)."""

    def __init__(self, name: str = "buildd-grpc") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
