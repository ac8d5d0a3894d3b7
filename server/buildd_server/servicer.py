"""The gRPC servicer: translates between buildd.v1 messages and the service.

Nothing here decides anything. Long calls run the service in a worker thread
that pushes events into a bounded queue; the RPC's generator drains it. When
the RPC ends for any reason (client cancel, disconnect, deadline, shutdown),
gRPC runs the callback that sets the request's cancel event, which kills the
running hook's process group.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb
from buildd.v1 import buildd_pb2_grpc

from . import errors
from .auth import Authenticator, Principal
from .blobs import parse_digest
from .events import Event, Log, Phase
from .service import ArtifactOutcome, BuildService, Dist, MetadataOutcome, Request, RequiresOutcome
from .store_status import add_store_status, environment_info, prune_store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from .config import Config
    from .environments import Environment
    from .keys import EnvKey
    from .pool import Pool
    from .sessions import SessionRegistry
    from .transfers import Transfers

log = structlog.get_logger("buildd.servicer")
T = TypeVar("T")

_PHASES: dict[str, int] = {
    "key_resolved": pb.PHASE_KIND_KEY_RESOLVED,
    "waiting_for_environment": pb.PHASE_KIND_WAITING_FOR_ENVIRONMENT,
    "creating_environment": pb.PHASE_KIND_CREATING_ENVIRONMENT,
    "installing_requirements": pb.PHASE_KIND_INSTALLING_REQUIREMENTS,
    "environment_leased": pb.PHASE_KIND_ENVIRONMENT_LEASED,
    "environment_adopted": pb.PHASE_KIND_ENVIRONMENT_ADOPTED,
    "running_hook": pb.PHASE_KIND_RUNNING_HOOK,
    "hook_finished": pb.PHASE_KIND_HOOK_FINISHED,
    "artifact_written": pb.PHASE_KIND_ARTIFACT_WRITTEN,
}
_SLOTTED = frozenset({"environment_leased", "environment_adopted"})
_DISTS: dict[int, Dist] = {
    pb.DISTRIBUTION_WHEEL: "wheel",
    pb.DISTRIBUTION_SDIST: "sdist",
    pb.DISTRIBUTION_EDITABLE: "editable",
}
_DIST_NUMBERS = {name: number for number, name in _DISTS.items()}
# Bounded so a backend printing without end cannot grow the daemon's memory:
# when the client reads slowly, the hook's pipe fills and the hook waits.
_QUEUE_SIZE = 512
_MAX_SETTINGS = 256
_MAX_SETTING_BYTES = 64 * 1024


class _End:
    """Queue sentinel carrying the worker's outcome."""

    def __init__(self, value: object = None, error: errors.BuilddError | None = None) -> None:
        self.value = value
        self.error = error


class Servicer(buildd_pb2_grpc.BuilddServicer):
    def __init__(
        self,
        config: Config,
        address: str,
        service: BuildService,
        registry: SessionRegistry,
        pool: Pool[EnvKey, Environment],
        installer_name: str,
        auth: Authenticator | None = None,
        transfers: Transfers | None = None,
    ) -> None:
        self._config = config
        # Who calls (auth.py) and uploads/downloads (transfers.py).
        self._auth = auth or Authenticator()
        self._transfers = transfers
        self._address = address
        self._service = service
        self._registry = registry
        self._pool = pool
        self._installer_name = installer_name
        self._started_at = time.time()
        # Long-call RPCs not yet over, and worker threads still running
        # (a worker outlives its RPC briefly while its hook is being killed).
        self.active_calls = 0
        self.workers = 0
        self._calls = threading.Condition()
        # Set by the daemon: begins a drain (the Shutdown RPC).
        self.on_shutdown: Callable[[float], None] | None = None

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no long call runs; False when ``timeout`` passed first."""
        with self._calls:
            return self._calls.wait_for(lambda: self.active_calls == 0, timeout=timeout)

    def wait_workers(self, timeout: float) -> bool:
        """Wait until every worker thread has ended; False when ``timeout`` passed first."""
        with self._calls:
            return self._calls.wait_for(lambda: self.workers == 0, timeout=timeout)

    # ------------------------------------------------------------ sessions --

    def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.ServicerContext
    ) -> pb.SessionInfo:
        def run() -> pb.SessionInfo:
            who = self._who(context)
            if self._service.draining:
                raise errors.Unavailable("the daemon is shutting down and opens no sessions")
            session = self._registry.open(request.client_name[:200], principal=who.name)
            log.info(
                "session_opened",
                session=session.id[:8],
                client=request.client_name[:200],
                principal=who.name,
            )
            return self._session_info(session.id, session.created_at, who.name)

        return self._unary(context, run)

    def JoinSession(
        self, request: pb.JoinSessionRequest, context: grpc.ServicerContext
    ) -> pb.SessionInfo:
        def run() -> pb.SessionInfo:
            who = self._who(context)
            session = self._registry.get(request.session_id, principal=who.name)
            return self._session_info(session.id, session.created_at, who.name)

        return self._unary(context, run)

    def KeepAlive(
        self, request: pb.KeepAliveRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.KeepAliveResponse]:
        ended = threading.Event()
        context.add_callback(ended.set)
        interval = request.interval_seconds or min(30.0, self._config.session_ttl / 3)
        interval = max(0.05, interval)
        try:
            who = self._who(context)
            holder = self._registry.keepalive(request.session_id, principal=who.name)
            holder.__enter__()
        except errors.BuilddError as exc:
            context.abort(exc.status, exc.message)
        try:
            while not ended.is_set() and not self._service.draining:
                yield pb.KeepAliveResponse(now=time.time())
                ended.wait(interval)
        finally:
            holder.__exit__(None, None, None)

    def CloseSession(
        self, request: pb.CloseSessionRequest, context: grpc.ServicerContext
    ) -> pb.CloseSessionResponse:
        def run() -> pb.CloseSessionResponse:
            session = self._registry.close(request.session_id, principal=self._who(context).name)
            deleted, pending, stored = self._service.last_end_counts(session.id)
            return pb.CloseSessionResponse(
                environments_deleted=deleted,
                environments_pending=pending,
                environments_stored=stored,
            )

        return self._unary(context, run)

    # ---------------------------------------------------------- long calls --

    def GetRequires(
        self, request: pb.GetRequiresRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Event]:
        dist = _DISTS.get(request.distribution or pb.DISTRIBUTION_WHEEL)

        def run(req: Request, emit: Callable[[Event], None], cancel: threading.Event) -> pb.Result:
            if dist is None:
                raise errors.InvalidRequest(f"distribution: unknown value {request.distribution}")
            out: RequiresOutcome = self._service.get_requires(req, dist, emit, cancel)
            return pb.Result(
                requires=pb.RequiresResult(
                    static_requirements=out.static,
                    dynamic_requirements=out.dynamic,
                    key_id=out.key_id,
                    backend=out.backend,
                )
            )

        return self._stream(request.context, context, "get_requires", run)

    def PrepareMetadata(
        self, request: pb.PrepareMetadataRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Event]:
        dist = _DISTS.get(request.distribution or pb.DISTRIBUTION_WHEEL)

        def run(req: Request, emit: Callable[[Event], None], cancel: threading.Event) -> pb.Result:
            if dist not in ("wheel", "editable"):
                raise errors.InvalidRequest(
                    f"distribution: metadata is prepared for WHEEL or EDITABLE, not "
                    f"{pb.Distribution.Name(request.distribution)}"
                    if request.distribution in _DISTS
                    else f"distribution: unknown value {request.distribution}"
                )
            out: MetadataOutcome = self._service.prepare_metadata(req, dist, emit, cancel)
            return pb.Result(
                metadata=pb.MetadataResult(
                    metadata=out.metadata,
                    dist_info_name=out.dist_info_name,
                    dist_info_path=str(out.dist_info_path),
                    from_wheel=out.from_wheel,
                )
            )

        return self._stream(request.context, context, "prepare_metadata", run)

    def Build(self, request: pb.BuildRequest, context: grpc.ServicerContext) -> Iterator[pb.Event]:
        def run(req: Request, emit: Callable[[Event], None], cancel: threading.Event) -> pb.Result:
            dists: list[Dist] = []
            for index, number in enumerate(request.distributions):
                name = _DISTS.get(number)
                if name is None:
                    raise errors.InvalidRequest(f"distributions[{index}]: unknown value {number}")
                dists.append(name)
            out: list[ArtifactOutcome] = self._service.build(
                req, dists, request.wheel_from_sdist, request.output_directory, emit, cancel
            )
            return pb.Result(
                build=pb.BuildResult(
                    artifacts=[
                        pb.Artifact(
                            distribution=_DIST_NUMBERS[a.distribution],  # type: ignore[arg-type]
                            path=str(a.path),
                            filename=a.path.name,
                            size=a.size,
                            sha256=a.sha256,
                        )
                        for a in out
                    ]
                )
            )

        outdir = (("output_directory", request.output_directory),)
        return self._stream(request.context, context, "build", run, outdir)

    # --------------------------------------------------------------- status --

    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.StatusResponse:
        def run() -> pb.StatusResponse:
            return self._status(request.session_id, self._who(context))

        return self._unary(context, run)

    def PruneStore(
        self, request: pb.PruneStoreRequest, context: grpc.ServicerContext
    ) -> pb.PruneStoreResponse:
        return self._unary(context, lambda: prune_store(self._service, request, self._who(context)))

    def Shutdown(
        self, request: pb.ShutdownRequest, context: grpc.ServicerContext
    ) -> pb.ShutdownResponse:
        def run() -> pb.ShutdownResponse:
            who = self._who(context)
            if self._auth.tokens_configured and not who.admin:
                raise errors.PermissionDenied(
                    f"Shutdown: principal {who.name!r} is not an admin of this daemon (--admin)"
                )
            if request.grace_seconds < 0:
                raise errors.InvalidRequest(f"grace_seconds: {request.grace_seconds} is negative")
            log.info("shutdown_requested", principal=who.name)
            active = self.active_calls
            if self.on_shutdown is None:
                raise errors.Unavailable("this daemon cannot be stopped over the wire")
            self.on_shutdown(request.grace_seconds or self._config.grace)
            return pb.ShutdownResponse(active_calls=active)

        return self._unary(context, run)

    # ------------------------------------------------- uploads, downloads --

    def FindMissingBlobs(
        self, request: pb.FindMissingBlobsRequest, context: grpc.ServicerContext
    ) -> pb.FindMissingBlobsResponse:
        return self._unary(
            context, lambda: self._transfers_for().find_missing(request, self._who(context))
        )

    def UploadBlob(
        self, request_iterator: Iterator[pb.UploadBlobRequest], context: grpc.ServicerContext
    ) -> pb.UploadBlobResponse:
        return self._unary(
            context, lambda: self._transfers_for().upload(request_iterator, self._who(context))
        )

    def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.DownloadArtifactResponse]:
        try:
            yield from self._transfers_for().download(request, self._who(context))
        except errors.BuilddError as exc:
            log.info("request_failed", error=type(exc).__name__, message=exc.message)
            self._count_error(exc.status)
            context.abort(exc.status, exc.message)

    def _transfers_for(self) -> Transfers:
        if self._service.draining:
            raise errors.Unavailable("the daemon is shutting down and takes no transfers")
        if self._transfers is None:
            raise errors.Unavailable("this daemon keeps no blob cache: uploads are off")
        return self._transfers

    def _who(self, context: grpc.ServicerContext) -> Principal:
        return self._auth.principal(context)

    def _status(self, only: str, who: Principal) -> pb.StatusResponse:
        # Admins see every session; everyone else only their own (auth.py).
        scope = None if who.admin else who.name
        sessions = (
            [self._registry.peek(only, principal=scope)] if only else self._registry.all(scope)
        )
        entries = self._pool.snapshot()
        response = pb.StatusResponse(
            daemon=pb.DaemonInfo(
                pid=os.getpid(),
                version=__version__,
                address=self._address,
                state_dir=str(self._config.state_dir),
                started_at=self._started_at,
                installer=self._installer_name,
                max_envs=self._config.max_envs,
                max_envs_per_key=self._config.max_envs_per_key,
                draining=self._service.draining,
            ),
            principal=who.name,
            admin=who.admin,
        )
        add_store_status(response, self._service, self._config, scope)
        for session in sessions:
            status = response.sessions.add(
                session_id=session.id,
                client_name=session.client_name,
                created_at=session.created_at,
                last_active_at=time.time() - (time.monotonic() - session.last_active),
                keepalives=session.keepalives,
                principal=session.principal,
            )
            leased = self._service.leased_by(session.id)
            for entry in entries:
                if entry.owner != session.id and id(entry.instance) not in leased:
                    continue
                info = environment_info(entry)
                info.sources.extend(self._service.sources_of(session.id, entry.instance))
                status.environments.append(info)
        return response

    # ------------------------------------------------------------ plumbing --

    def _session_info(self, session_id: str, created_at: float, principal: str) -> pb.SessionInfo:
        return pb.SessionInfo(
            session_id=session_id,
            ttl_seconds=self._config.session_ttl,
            created_at=created_at,
            principal=principal,
        )

    def _unary(self, context: grpc.ServicerContext, run: Callable[[], T]) -> T:
        try:
            return run()
        except errors.BuilddError as exc:
            log.info("request_failed", error=type(exc).__name__, message=exc.message)
            self._count_error(exc.status)
            context.abort(exc.status, exc.message)
        except Exception as exc:
            log.exception("internal_error")
            self._count_error(grpc.StatusCode.INTERNAL)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")

    def _count_error(self, status: grpc.StatusCode) -> None:
        self._service.metrics.errors.labels(code=status.name).inc()

    def _stream(
        self,
        wire: pb.BuildContext,
        context: grpc.ServicerContext,
        name: str,
        run: Callable[[Request, Callable[[Event], None], threading.Event], pb.Result],
        paths: tuple[tuple[str, str], ...] = (),
    ) -> Iterator[pb.Event]:
        started = time.monotonic()
        cancel = threading.Event()
        with self._calls:
            self.active_calls += 1

        def done() -> None:
            # Runs once when the RPC is over, final status sent or cancelled:
            # that is what a drain waits for, not the worker's end.
            cancel.set()
            with self._calls:
                self.active_calls -= 1
                self._calls.notify_all()

        if not context.add_callback(done):
            done()
        events: queue.Queue[pb.Event | _End] = queue.Queue(maxsize=_QUEUE_SIZE)

        def put(item: pb.Event | _End) -> None:
            while not cancel.is_set():
                try:
                    events.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def emit(event: Event) -> None:
            put(_to_wire(event, started))

        remaining = context.time_remaining()
        try:
            who = self._who(context)
            request = _decode(wire, None if remaining is None else started + remaining, who.name)
            # A remote principal names daemon paths only under --allow-path.
            for field, path in (("context.source.path", wire.source.path), *paths):
                self._auth.check_path(who, path, field)
        except errors.BuilddError as exc:
            self._count_error(exc.status)
            yield pb.Event(failure=_failure(exc))
            context.abort(exc.status, exc.message)

        request_id = uuid.uuid4().hex[:12]

        def work() -> None:
            # Every log event of this request, from any module, carries these.
            structlog.contextvars.bind_contextvars(
                request=request_id, call=name, session=request.session_id[:8]
            )
            with self._calls:
                self.workers += 1
            try:
                put(_End(value=run(request, emit, cancel)))
            except errors.BuilddError as exc:
                put(_End(error=exc))
            except Exception as exc:
                log.exception("internal_error", call=name)
                put(_End(error=errors.BuilddError(f"internal error in {name}: {exc!r}")))
            finally:
                with self._calls:
                    self.workers -= 1
                    self._calls.notify_all()

        threading.Thread(target=work, name=f"buildd-{name}", daemon=True).start()
        while True:
            try:
                item = events.get(timeout=0.1)
            except queue.Empty:
                # Once the RPC is over nobody reads this generator again; the
                # worker drops its remaining events, so stop waiting for them
                # rather than pinning one of the server's threads for good.
                if cancel.is_set():
                    return
                continue
            if isinstance(item, pb.Event):
                yield item
                continue
            if item.error is None:
                assert isinstance(item.value, pb.Result)
                yield pb.Event(result=item.value)
                return
            error = item.error
            log.info(
                "request_failed",
                call=name,
                error=type(error).__name__,
                message=error.message,
                session=request.session_id[:8],
            )
            self._count_error(error.status)
            yield pb.Event(failure=_failure(error))
            context.abort(error.status, error.message)


def _decode(wire: pb.BuildContext, deadline: float | None, principal: str) -> Request:
    where = wire.source.WhichOneof("location") if wire.HasField("source") else None
    if where == "digest":
        parse_digest(wire.source.digest, "context.source.digest")
    elif not wire.source.path:
        raise errors.InvalidRequest(
            "context.source: a source path or the digest of an uploaded archive is required"
        )
    if len(wire.config_settings) > _MAX_SETTINGS:
        raise errors.InvalidRequest(
            f"context.config_settings: {len(wire.config_settings)} entries, at most "
            f"{_MAX_SETTINGS} are accepted"
        )
    settings: dict[str, str | list[str]] = {}
    for index, item in enumerate(wire.config_settings):
        size = len(item.key) + sum(len(v) for v in item.values)
        if not item.key:
            raise errors.InvalidRequest(f"context.config_settings[{index}].key is empty")
        if size > _MAX_SETTING_BYTES:
            raise errors.InvalidRequest(
                f"context.config_settings[{index}] ({item.key[:40]!r}) is {size} bytes, "
                f"at most {_MAX_SETTING_BYTES} are accepted"
            )
        if "\0" in item.key or any("\0" in v for v in item.values):
            raise errors.InvalidRequest(
                f"context.config_settings[{index}] ({item.key[:40]!r}) contains a NUL character"
            )
        values = list(item.values)
        previous = settings.get(item.key)
        if previous is None:
            settings[item.key] = values[0] if len(values) == 1 else values
        else:
            merged = [previous] if isinstance(previous, str) else list(previous)
            settings[item.key] = merged + values
    return Request(
        session_id=wire.session_id,
        source=wire.source.digest if where == "digest" else wire.source.path,
        principal=principal,
        python=wire.python,
        config_settings=settings,
        quiet=wire.quiet,
        deadline=deadline,
    )


def _to_wire(event: Event, started: float) -> pb.Event:
    if isinstance(event, Log):
        stream = pb.LOG_STREAM_STDOUT if event.stream == "stdout" else pb.LOG_STREAM_STDERR
        return pb.Event(log=pb.LogLine(stream=stream, text=event.text, hook=event.hook))
    assert isinstance(event, Phase)
    return pb.Event(
        phase=pb.Phase(
            kind=_PHASES[event.name],  # type: ignore[arg-type]
            elapsed_seconds=time.monotonic() - started,
            detail=event.detail,
            key_id=event.key_id,
            environment_path=event.environment_path,
            hook=event.hook,
            count=event.count,
            step_seconds=event.step_seconds,
            slot=event.slot if event.name in _SLOTTED else 0,
            validation_seconds=event.validation_seconds,
        )
    )


def _failure(exc: errors.BuilddError) -> pb.Failure:
    kwargs: dict[str, Any] = {
        "kind": exc.kind,
        "status_code": exc.status.value[0],
        "message": exc.message,
        "hook": exc.hook,
        "last_lines": exc.last_lines[-50:],
        "path": exc.path,
    }
    return pb.Failure(**kwargs)
