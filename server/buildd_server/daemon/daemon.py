"""The daemon process: state folder, listening address, lifecycle.

Start-up order matters: the state-dir lock is taken first, so a second daemon
on the same folder stops before touching anything; only then are the orphans
of a crashed run deleted (nobody else can be using them, ``statedir.py``) and
the address bound (``listening.py``).

Threads: the main thread runs the lifecycle, top to bottom (start, wait for
a signal, the Shutdown RPC or the idle timeout, drain, clean up), and blocks
wherever that is simplest. The gRPC server (``grpc.aio``) runs on an event
loop in a thread of its own, ``buildd-grpc``, so it keeps answering (health
NOT_SERVING, status) while the main thread waits out a drain; the main thread
hands it work with ``EventLoopThread.call``. Long calls run in worker threads of
their own, short blocking work in the ``buildd-blocking`` executor
(``wire/streams.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import shutil
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from buildd.v1 import buildd_pb2, buildd_pb2_grpc
from buildd_client.addresses import Address, default_address, parse_address

from ..access.access import LocalToken
from ..access.auth import Authenticator, check_listen, server_credentials
from ..environments.bytecode import COMPILER
from ..environments.environments import Environment, EnvironmentFactory
from ..environments.installers import select_installer
from ..errors import DaemonStartupError
from ..hooks import containment, zygotes
from ..metrics import Metrics
from ..pool.pool import Pool
from ..pool.store import Store
from ..pool.storekeeper import StoreKeeper
from ..service.service import BuildService
from ..service.sessions import Session, SessionRegistry
from ..sources.blobs import BlobStore
from ..wire.limits import TRANSPORT_LIMIT, Limits
from ..wire.servicer import Servicer
from ..wire.streams import Blocking, EventLoopThread
from ..wire.transfers import Transfers
from .listening import bind
from .reflection import enable_reflection
from .statedir import release_state_dir, take_state_dir

if TYPE_CHECKING:
    from types import FrameType

    import filelock

    from ..config import Config
    from ..environments.keys import EnvKey

log = structlog.get_logger("buildd.daemon")

SERVICE_NAME = buildd_pb2.DESCRIPTOR.services_by_name["Buildd"].full_name
# Replies may be large (a METADATA file); requests are bounded per RPC (wire/limits.py).
_MAX_SEND = 64 * 1024 * 1024
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Daemon:
    """One running buildd-server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.address = parse_address(config.address or default_address())
        self._lock: filelock.BaseFileLock | None = None
        self._server: grpc.aio.Server | None = None
        self._events: EventLoopThread | None = None
        self._blocking: futures.ThreadPoolExecutor | None = None
        self._stopped = threading.Event()
        self._stop_requested = threading.Event()
        # Signals received, in order (appended by the handler), and what wakes
        # serve_forever's wait (written by the interpreter on a signal, and by
        # request_stop).
        self._signals: list[int] = []
        self._waker: socket.socket | None = None
        self._health = health.aio.HealthServicer()
        self._grace: float | None = None
        self.metrics_port = 0
        self._local_token: LocalToken | None = None

    # -------------------------------------------------------------- start --

    def start(self) -> None:
        """Take the state folder, reclaim orphans, bind the address and serve."""
        # Tokens, TLS files and the address policy are checked before anything
        # is touched (auth.py): a daemon that would listen unprotected stops here.
        self.auth = Authenticator.from_config(self.config)
        self._tls = server_credentials(self.config)
        check_listen(self.address, self.auth, self._tls is not None, self.config.insecure)
        if (
            self.address.kind == "tcp"
            and self.address.is_local
            and not self.auth.tokens_configured
            and not self.config.insecure
        ):
            # Loopback TCP reaches every local user: only this user gets the token.
            self._local_token = LocalToken()
            self.auth.add_local_token(self._local_token.value)
        self._lock = take_state_dir(self.config.state_dir)
        installer = select_installer(self.config.installer)
        sessions_root = self.config.state_dir / "sessions"
        sessions_root.mkdir(mode=0o700, exist_ok=True)
        containment.configure(self._containment(installer.name))

        factory = EnvironmentFactory(
            self.config.state_dir,
            installer,
            self.config.installer_options,
            fork_server=self.config.fork_server,
        )
        holder: list[BuildService] = []
        keepers: list[StoreKeeper] = []

        def destroy(env: Environment) -> None:
            holder[0].destroy_environment(env)

        def validate(env: Environment) -> bool:
            return keepers[0].validate(env)

        def on_end(session: Session) -> None:
            holder[0].session_ended(session)

        self.pool: Pool[EnvKey, Environment] = Pool(
            max_per_key=self.config.max_envs_per_key,
            max_total=self.config.max_envs,
            destroy=destroy,
            validate=validate,
        )
        self.registry = SessionRegistry(
            sessions_root, self.config.session_ttl, on_end, daemon_id=self.config.daemon_id
        )
        self.metrics = Metrics()
        self.store = Store(self.config.state_dir / "envs", enabled=self.config.store)
        self.keeper = StoreKeeper(
            self.store,
            self.pool,
            factory,
            self.metrics,
            max_bytes=self.config.store_size,
            ttl=self.config.store_ttl,
        )
        keepers.append(self.keeper)
        factory.on_resized = self.keeper.changed
        self.blobs = BlobStore(
            self.config.state_dir / "blobs",
            self.config.blob_cache_size,
            self.config.source_limits,
        )
        self.service = BuildService(
            self.config,
            self.registry,
            self.pool,
            factory,
            installer.name,
            self.metrics,
            blobs=self.blobs,
            store=self.store,
            keeper=self.keeper,
        )
        holder.append(self.service)
        if self.config.store:
            # Before serving: a request must never meet an instance twice.
            self.keeper.adopt()
        self._blocking = futures.ThreadPoolExecutor(
            max_workers=self.config.max_workers, thread_name_prefix="buildd-blocking"
        )
        blocking = Blocking(self._blocking)
        self.limits = Limits(self.config.caps)
        self.servicer = Servicer(
            self.config,
            self.address.target,
            self.service,
            self.registry,
            self.pool,
            installer.name,
            blocking=blocking,
            auth=self.auth,
            transfers=Transfers(self.blobs, self.registry, self.metrics, blocking),
            limits=self.limits,
        )
        self.servicer.on_shutdown = self.request_stop
        self.metrics.watch(
            sessions=lambda: len(self.registry),
            environments=self._environment_counts,
            active_calls=lambda: self.servicer.calls.active,
            held=self.limits.totals,
            store_bytes=(lambda: self.keeper.usage()[0]) if self.config.store else None,
        )
        # Everything that can refuse to start does so before the socket exists.
        if self.config.metrics_address:
            self._serve_metrics(self.config.metrics_address)
        self._events = EventLoopThread()
        self._server = self._events.call(self._serve())
        self.registry.start_reaper(min(5.0, max(0.05, self.config.session_ttl / 10)))
        if self.config.store:
            # Often enough that an idle instance outlives --store-ttl by at most a quarter.
            self.keeper.start(min(30.0, max(0.2, self.config.store_ttl / 4)))
        log.info(
            "daemon_started",
            address=self.address.target,
            daemon_id=self.config.daemon_id,
            pid=os.getpid(),
            state_dir=str(self.config.state_dir),
            installer=installer.name,
            tls=self._tls is not None,
            client_certificates=self.config.tls_client_ca is not None,
            principals=self.auth.principals or ["local"],
            local_token=str(self._local_token.path) if self._local_token else None,
            admins=list(self.config.admins),
            allow_paths=[str(p) for p in self.auth.allow_paths],
            caps=dataclasses.asdict(self.config.caps),
        )

    def _containment(self, installer: str) -> containment.Policy:
        """Probe and fix how hooks and installs are contained (refuses what cannot be had)."""
        config = self.config
        secrets = [p for p in (config.token_file, config.tls_key) if p is not None]
        if self.address.kind == "unix" and self.address.path:
            secrets.append(Path(self.address.path))
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / installer
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
        choice = config.containment
        assert choice in containment.CHOICES
        return containment.detect(
            choice,
            state_dir=config.state_dir,
            remote_possible=config.token_file is not None or not self.address.is_local,
            hidden_files=secrets,
            install_readable=[
                Path(link) for link in config.installer_options.find_links if "://" not in link
            ],
            install_writable=[cache] if cache.is_dir() else [],
        )

    async def _serve(self) -> grpc.aio.Server:
        """On the event loop: the gRPC server, bound and serving."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", TRANSPORT_LIMIT),
                ("grpc.max_send_message_length", _MAX_SEND),
                ("grpc.so_reuseport", 0),
            ],
            # Tokens first (auth.py), then per-RPC message limits and stream caps.
            interceptors=[
                self.auth.interceptor(),
                self.limits.interceptor(self.auth, self.metrics),
            ],
        )
        buildd_pb2_grpc.add_BuilddServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        enable_reflection(server, (SERVICE_NAME, health.SERVICE_NAME))
        self.address, port = bind(server, self.address, self._tls)
        if self._local_token is not None and self.address.kind == "tcp":
            self._local_token.write(port)
        # Port 0 is bound to a real port only now: status reports that one.
        self.servicer.address = self.address.target
        await server.start()
        await self._set_health(_SERVING)
        return server

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    def _serve_metrics(self, text: str) -> None:
        where = parse_address(text)
        if where.kind != "tcp":
            raise DaemonStartupError(f"--metrics-address: {text!r} must be HOST:PORT")
        try:
            port = self.metrics.serve(where.host, where.port)
        except OSError as exc:
            raise DaemonStartupError(f"--metrics-address: cannot listen on {text}: {exc}") from exc
        self.metrics_port = port
        log.info("metrics_serving", address=f"http://{where.host}:{port}/metrics")

    def _environment_counts(self) -> dict[str, int]:
        counts = {"idle": 0, "leased": 0, "creating": len(self.pool.creating())}
        for entry in self.pool.snapshot():
            counts[entry.state] += 1
        return counts

    def abandon_start(self) -> None:
        """Undo a start that failed half-way: stop serving, release the state folder."""
        metrics: Metrics | None = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.stop()
        if self._local_token is not None:
            self._local_token.remove()
        if self._events is not None:
            self._events.close()
        if self._blocking is not None:
            self._blocking.shutdown(wait=False)
        if self._lock is not None and self._lock.is_locked:
            release_state_dir(self.config.state_dir, self._lock)

    # --------------------------------------------------------------- run --

    def serve_forever(self) -> None:
        """Serve until SIGTERM/SIGINT (or idle timeout), then drain and clean up.

        The signal handler only records the signal; the interpreter's C
        handler writes its number to the waker, which ends the wait here.
        A handler that logs or takes a lock deadlocks, or recurses until
        RecursionError, when signals come faster than it returns. A signal
        after the first changes nothing, up to the process's very end.
        """
        wake, self._waker = socket.socketpair()
        for end in (wake, self._waker):
            end.setblocking(False)
        signal.set_wakeup_fd(self._waker.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        idle_since = time.monotonic()
        while not self._stop_requested.is_set() and not self._signals:
            select.select([wake], [], [], 0.5)
            with contextlib.suppress(BlockingIOError):
                wake.recv(4096)
            if self.config.idle_timeout <= 0:
                continue
            if len(self.registry.all()) or self.servicer.calls.active:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.config.idle_timeout:
                log.info("idle_shutdown", idle_seconds=self.config.idle_timeout)
                break
        if self._signals:
            log.info("signal_received", signal=signal.Signals(self._signals[0]).name)
        self.stop()
        if len(self._signals) > 1:
            log.info("signals_ignored", count=len(self._signals) - 1)
        # Python's finalization puts SIG_DFL back in place of a Python handler
        # (never of SIG_IGN): a SIGTERM in those last moments would end a
        # daemon that has already stopped cleanly with -15 instead of 0.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        wake.close()
        self._waker.close()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # no lock, no I/O: see serve_forever

    def request_stop(self, grace: float | None = None) -> None:
        """Begin a drain from any thread (signal, Shutdown RPC, idle timeout)."""
        if grace is not None:
            self._grace = grace
        self._stop_requested.set()
        if self._waker is not None:
            with contextlib.suppress(OSError):
                self._waker.send(b"\0")

    def stop(self) -> None:
        """Drain: refuse new calls, let running ones finish within the grace, clean up."""
        if self._stopped.is_set():
            return
        grace = self._grace if self._grace is not None else self.config.grace
        # New long calls and sessions get UNAVAILABLE from here on, while the
        # server still answers health checks with NOT_SERVING.
        self.service.draining = True
        assert self._events is not None and self._server is not None
        self._events.call(self._set_health(_NOT_SERVING))
        calls = self.servicer.calls
        log.info("draining", grace=grace, active_calls=calls.active)
        if not calls.wait_idle(grace):
            log.info("grace_expired", cancelling=calls.active)
        # A second for short calls still on the wire (the very Shutdown call
        # that started this drain, a status); then whatever still runs is
        # cancelled: cancel events fire, hook process groups die.
        self._events.call(self._server.stop(1.0))
        # Worker threads end shortly after their cancel event; wait so that no
        # environment is deleted under a hook that is still being killed.
        calls.wait_workers(10.0)
        self._events.close()
        if self._blocking is not None:
            self._blocking.shutdown(wait=True, cancel_futures=True)
        self.metrics.stop()
        self.registry.stop_reaper()
        # Sessions end as they do on close: stored instances are checked and
        # kept; then the processes that run from them go.
        self.registry.end_all()
        self.keeper.stop()
        zygotes.REGISTRY.stop_all()
        COMPILER.stop_all()
        if self.address.kind == "unix" and self.address.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address.path)
        if self._local_token is not None:
            self._local_token.remove()
        shutil.rmtree(self.config.state_dir / "sessions", ignore_errors=True)
        if self._lock is not None:
            release_state_dir(self.config.state_dir, self._lock)
        self._stopped.set()
        log.info("daemon_stopped")


__all__ = ["Address", "Daemon"]
