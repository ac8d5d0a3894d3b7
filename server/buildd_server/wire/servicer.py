"""The gRPC servicer: translates between buildd.v1 messages and the service.

Nothing here decides anything. Every method is a coroutine on the event
loop. Unary calls run their service logic in the bounded executor when it
touches the disk, on the loop when it only reads in-memory state; long calls
run the service in a worker thread of their own (``longcalls.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc

from .. import errors
from ..access.auth import Authenticator, Principal
from ..access.routing import check_session_header, header_session
from ..environments.interpreter_discovery import discover_interpreters
from . import decode, encode, failures
from .limits import Limits
from .longcalls import LongCalls
from .status import StatusSource
from .store_status import prune_store
from .streams import Calls

if TYPE_CHECKING:
    import threading
    from collections.abc import AsyncIterator, Awaitable, Callable

    import grpc.aio

    from ..config import Config
    from ..environments.environments import Environment
    from ..environments.keys import EnvKey
    from ..events import Event
    from ..pool.pool import Pool
    from ..service.requests import Request
    from ..service.service import BuildService
    from ..service.sessions import SessionRegistry
    from ..service.watches import MetadataWatch, WatchUpdate
    from .streams import Blocking
    from .transfers import Transfers

    Context = grpc.aio.ServicerContext[Any, Any]
    Emit = Callable[[Event], None]

log = structlog.get_logger("buildd.servicer")
T = TypeVar("T")


async def _ended_if_abandoned(opening: Awaitable[MetadataWatch]) -> MetadataWatch:
    """The watch ``opening`` opens, ended if the call is cancelled meanwhile.

    Opening runs in a thread that a cancel cannot stop: without this, a
    client gone while its watch was being set up (a walk of every folder)
    would leave the watch, its tree watcher and its session hold behind.
    """
    task = asyncio.ensure_future(opening)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def end(done: asyncio.Future[MetadataWatch]) -> None:
            if not done.cancelled() and done.exception() is None:
                done.result().end()

        task.add_done_callback(end)
        raise


class Servicer(buildd_pb2_grpc.BuilddServicer):
    def __init__(
        self,
        config: Config,
        address: str,
        service: BuildService,
        registry: SessionRegistry,
        pool: Pool[EnvKey, Environment],
        installer_name: str,
        *,
        blocking: Blocking,
        auth: Authenticator | None = None,
        transfers: Transfers | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._config = config
        # Who calls (auth.py), what they may hold (limits.py), bytes (transfers.py).
        self._auth = auth or Authenticator()
        self._limits = limits or Limits(config.caps)
        self._transfers = transfers
        self._service = service
        self._registry = registry
        self._blocking = blocking
        self._metrics = service.metrics
        self.status_source = StatusSource(
            config, address, installer_name, time.time(), service, registry, pool
        )
        self.calls = Calls()
        self._long = LongCalls(self._auth, self.calls, self._metrics)
        # Set by the daemon: begins a drain (the Shutdown RPC).
        self.on_shutdown: Callable[[float], None] | None = None

    # ------------------------------------------------------------ sessions --

    async def OpenSession(self, request: pb.OpenSessionRequest, context: Context) -> pb.SessionInfo:
        def run(who: Principal) -> pb.SessionInfo:
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            if self._service.draining:
                raise errors.Unavailable("the daemon is shutting down and opens no sessions")
            client_name = decode.client_name(request.client_name)
            # Counting and opening under one lock: concurrent opens cannot pass the cap.
            with self._limits.creating:
                self._limits.check(who.name, "sessions", len(self._registry.all(who.name)))
                session = self._registry.open(
                    client_name, principal=who.name, session_id=request.session_id
                )
            log.info(
                "session_opened",
                session=session.id[:8],
                client=client_name,
                principal=who.name,
                proposed=bool(request.session_id),
            )
            return self._session_info(session.wire_id, session.created_at, who.name)

        return await self._unary(context, run)

    async def JoinSession(self, request: pb.JoinSessionRequest, context: Context) -> pb.SessionInfo:
        def run(who: Principal) -> pb.SessionInfo:
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            session = self._registry.get(request.session_id, principal=who.name)
            return self._session_info(session.wire_id, session.created_at, who.name)

        return await self._unary(context, run, blocking=False)

    async def KeepAlive(
        self, request: pb.KeepAliveRequest, context: Context
    ) -> AsyncIterator[pb.KeepAliveResponse]:
        try:
            interval = decode.keepalive_interval(request.interval_seconds, self._config.session_ttl)
            who = self._who(context)
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            holder = self._registry.keepalive(request.session_id, principal=who.name)
            holder.__enter__()
        except errors.BuilddError as exc:
            await failures.abort(context, exc, self._metrics)
        # Waiting costs a sleeping coroutine; a cancel or disconnect raises in the sleep.
        try:
            while not self._service.draining:
                yield pb.KeepAliveResponse(now=time.time())
                await asyncio.sleep(interval)
        finally:
            holder.__exit__(None, None, None)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Context
    ) -> pb.CloseSessionResponse:
        def run(who: Principal) -> pb.CloseSessionResponse:
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            session = self._registry.close(request.session_id, principal=who.name)
            deleted, pending, stored = self._service.last_end_counts(session.id)
            return pb.CloseSessionResponse(
                environments_deleted=deleted,
                environments_pending=pending,
                environments_stored=stored,
            )

        return await self._unary(context, run)

    # ---------------------------------------------------------- long calls --

    async def GetRequires(
        self, request: pb.GetRequiresRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        def run(req: Request, emit: Emit, cancel: threading.Event) -> pb.Result:
            dist = decode.distribution(request.distribution)
            return encode.requires(self._service.get_requires(req, dist, emit, cancel))

        async for event in self._long.stream(request.context, context, "get_requires", run):
            yield event

    async def PrepareMetadata(
        self, request: pb.PrepareMetadataRequest, context: Context
    ) -> AsyncIterator[pb.Event]:
        def run(req: Request, emit: Emit, cancel: threading.Event) -> pb.Result:
            dist = decode.metadata_distribution(request.distribution)
            return encode.metadata(self._service.prepare_metadata(req, dist, emit, cancel))

        async for event in self._long.stream(request.context, context, "prepare_metadata", run):
            yield event

    async def Build(self, request: pb.BuildRequest, context: Context) -> AsyncIterator[pb.Event]:
        def run(req: Request, emit: Emit, cancel: threading.Event) -> pb.Result:
            dists = decode.distributions(request.distributions)
            return encode.build(
                self._service.build(
                    req, dists, request.wheel_from_sdist, request.output_directory, emit, cancel
                )
            )

        outdir = (("output_directory", request.output_directory),)
        async for event in self._long.stream(request.context, context, "build", run, outdir):
            yield event

    async def WatchMetadata(
        self, request: pb.WatchMetadataRequest, context: Context
    ) -> AsyncIterator[pb.WatchMetadataEvent]:
        # Waiting for changes costs this coroutine only; updates come from the
        # watcher's and the preparing threads through call_soon_threadsafe.
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[WatchUpdate] = asyncio.Queue()

        def deliver(update: WatchUpdate) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads
                loop.call_soon_threadsafe(updates.put_nowait, update)

        try:
            who = self._who(context)
            wire = request.context
            check_session_header(
                context.invocation_metadata(), wire.session_id, "context.session_id"
            )
            dist = decode.metadata_distribution(request.distribution)
            # A watch sends no log lines: only metadata and failures.
            # Its hooks are contained as the principal's kind requires (containment.py).
            req = dataclasses.replace(
                decode.context(wire, None, who.name), quiet=True, remote=who.remote
            )
            self._auth.check_path(who, wire.source.path, "context.source.path")
            self._auth.check_interpreter(who, wire.python)
            with self._limits.acquire(who.name, "watches"):
                # Opening sets up the tree's watcher (a walk of its folders): off the loop.
                watch = await _ended_if_abandoned(
                    self._blocking(self._service.watches.open, req, dist, deliver)
                )
                try:
                    while True:
                        update = await updates.get()
                        if update.final:
                            if update.error is None:
                                return
                            raise update.error
                        yield encode.watch_event(update)
                finally:
                    watch.end()
        except errors.BuilddError as exc:
            error = exc
        except Exception as exc:
            error = failures.internal(exc, "WatchMetadata")
        await failures.abort(context, error, self._metrics, call="watch_metadata")

    # --------------------------------------------------------------- status --

    async def GetStatus(self, request: pb.GetStatusRequest, context: Context) -> pb.StatusResponse:
        def run(who: Principal) -> pb.StatusResponse:
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            return self.status_source.status(request.session_id, who)

        return await self._unary(context, run, blocking=False)

    async def PruneStore(
        self, request: pb.PruneStoreRequest, context: Context
    ) -> pb.PruneStoreResponse:
        # Deletes folders: in the executor, off the event loop.
        return await self._unary(context, lambda who: prune_store(self._service, request, who))

    async def Shutdown(self, request: pb.ShutdownRequest, context: Context) -> pb.ShutdownResponse:
        def run(who: Principal) -> pb.ShutdownResponse:
            if self._auth.tokens_configured and not who.admin:
                raise errors.PermissionDenied(
                    f"Shutdown: principal {who.name!r} is not an admin of this daemon (--admin)"
                )
            if request.grace_seconds < 0:
                raise errors.InvalidRequest(f"grace_seconds: {request.grace_seconds} is negative")
            log.info("shutdown_requested", principal=who.name)
            active = self.calls.active
            if self.on_shutdown is None:
                raise errors.Unavailable("this daemon cannot be stopped over the wire")
            self.on_shutdown(request.grace_seconds or self._config.grace)
            return pb.ShutdownResponse(active_calls=active)

        return await self._unary(context, run, blocking=False)

    # ------------------------------------------------- uploads, downloads --

    async def FindMissingBlobs(
        self, request: pb.FindMissingBlobsRequest, context: Context
    ) -> pb.FindMissingBlobsResponse:
        routed = header_session(context.invocation_metadata())
        return await self._unary(
            context, lambda who: self._transfers_for().find_missing(request, who, routed)
        )

    async def UploadBlob(
        self, request_iterator: AsyncIterator[pb.UploadBlobRequest], context: Context
    ) -> pb.UploadBlobResponse:
        try:
            who = self._who(context)
            routed = header_session(context.invocation_metadata())
            with self._limits.acquire(who.name, "uploads"):
                return await self._transfers_for().upload(request_iterator, who, routed)
        except errors.BuilddError as exc:
            error = exc
        except Exception as exc:
            error = failures.internal(exc, "UploadBlob")
        await failures.abort(context, error, self._metrics)

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: Context
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        try:
            check_session_header(context.invocation_metadata(), request.session_id, "session_id")
            async for response in self._transfers_for().download(request, self._who(context)):
                yield response
            return
        except errors.BuilddError as exc:
            error = exc
        except Exception as exc:
            error = failures.internal(exc, "DownloadArtifact")
        await failures.abort(context, error, self._metrics)

    async def ListInterpreters(
        self, request: pb.ListInterpretersRequest, context: Context
    ) -> pb.ListInterpretersResponse:
        # Probing runs subprocesses (once per interpreter; cached after).
        return await self._unary(context, lambda _who: encode.interpreters(discover_interpreters()))

    def _transfers_for(self) -> Transfers:
        if self._service.draining:
            raise errors.Unavailable("the daemon is shutting down and takes no transfers")
        if self._transfers is None:
            raise errors.Unavailable("this daemon keeps no blob cache: uploads are off")
        return self._transfers

    @property
    def address(self) -> str:
        """The address status reports; the daemon sets it once the port is bound."""
        return self.status_source.address

    @address.setter
    def address(self, value: str) -> None:
        self.status_source = dataclasses.replace(self.status_source, address=value)

    def _who(self, context: Context) -> Principal:
        return self._auth.principal(context)

    # ------------------------------------------------------------ plumbing --

    def _session_info(self, session_id: str, created_at: float, principal: str) -> pb.SessionInfo:
        return pb.SessionInfo(
            session_id=session_id,
            ttl_seconds=self._config.session_ttl,
            created_at=created_at,
            principal=principal,
            daemon_id=self._config.daemon_id,
        )

    async def _unary(
        self, context: Context, run: Callable[[Principal], T], *, blocking: bool = True
    ) -> T:
        """Run a unary call's logic; errors become its status.

        Logic that touches the disk runs in the blocking executor. Logic that
        only reads the daemon's state under its short in-memory locks
        (``blocking=False``) runs on the loop: a hop to the executor and back
        would cost more than the call.
        """
        try:
            who = self._who(context)
            return await self._blocking(run, who) if blocking else run(who)
        except errors.BuilddError as exc:
            error = exc
        except Exception as exc:
            error = failures.internal(exc, "unary call")
        await failures.abort(context, error, self._metrics)
