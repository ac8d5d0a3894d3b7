"""One request, from source to artifact: the logic behind the servicer.

A request names a session and a source. The service reads the project, works
out its environment key, leases an environment (the source's own instance
when it has one: rule 2), runs the hooks in it, installs dynamic requirements
into that same instance (rule 3), and moves artifacts into place.

Requests for the same source in the same session are serialised by a
per-source lock held for the whole request: the first request picks the
instance and every later one finds the affinity already recorded, so two
concurrent first requests can never pick two different instances.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import structlog

from .. import errors
from ..environments.interpreters import resolve_interpreter
from ..environments.keys import make_key
from ..events import Emit, Phase
from ..hooks import containment
from ..metrics import Metrics
from ..pool.store import Store
from ..sources.blobs import BlobStore, is_digest
from ..sources.sources import load_project
from ..sources.treewatch import TreeWatchers
from .hookcache import HookCache
from .leasing import Leaser, RequestContext, hold_source
from .requests import (
    ArtifactOutcome,
    Dist,
    MetadataOutcome,
    Request,
    RequiresOutcome,
    SourceState,
    drop_logs,
)
from .steps import Steps
from .watches import Watches
from .workspace import Workspace, artifact_folder, remove_empty

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..config import Config
    from ..environments.environments import Environment, EnvironmentFactory
    from ..environments.keys import EnvKey
    from ..pool.pool import Pool
    from ..pool.storekeeper import StoreKeeper
    from .sessions import Session, SessionRegistry

log = structlog.get_logger("buildd.service")

T = TypeVar("T")

__all__ = [
    "ArtifactOutcome",
    "BuildService",
    "Dist",
    "MetadataOutcome",
    "Request",
    "RequiresOutcome",
]


class BuildService:
    """Runs requests against sessions, the pool and environments."""

    def __init__(
        self,
        config: Config,
        registry: SessionRegistry,
        pool: Pool[EnvKey, Environment],
        factory: EnvironmentFactory,
        installer_name: str,
        metrics: Metrics | None = None,
        blobs: BlobStore | None = None,
        store: Store | None = None,
        keeper: StoreKeeper | None = None,
    ) -> None:
        self._config = config
        self.metrics = metrics or Metrics()
        self._registry = registry
        self._pool = pool
        self._factory = factory
        self._installer_name = installer_name
        self._lock = threading.Lock()
        self._workspace = Workspace(blobs)
        self._in_flight: dict[str, int] = {}
        self._end_counts: dict[str, tuple[int, int, int]] = {}
        # Without a store given: session-only environments (--no-store).
        self._store = store or Store(config.state_dir / "envs", enabled=False)
        self._keeper = keeper
        self._leaser = Leaser(pool, factory, self.metrics, config.hook_timeout, self._store, keeper)
        self.cache = HookCache()
        self._steps = Steps(
            factory,
            installer_name,
            config.installer_options,
            self.cache,
            self._store,
            keeper,
            self._leaser,
            self._workspace,
        )
        self.watches = Watches(
            registry,
            TreeWatchers(config.max_watched_trees),
            self.prepare_metadata,
            max_per_session=config.max_watches_per_session,
        )
        self._draining = False

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        # Watches wait for changes, not for work: a drain ends them at once.
        self._draining = value
        if value:
            self.watches.end_all(errors.Unavailable("the daemon is shutting down"))

    # ------------------------------------------------------------ requests --

    def get_requires(
        self, request: Request, dist: Dist, emit: Emit, cancel: threading.Event
    ) -> RequiresOutcome:
        def work(ctx: RequestContext) -> RequiresOutcome:
            env = ctx.state.environment
            cached = self.cache.requires(ctx, env, dist)
            if env is not None and cached is not None:
                return RequiresOutcome(
                    ctx.project.requires, tuple(cached), env.key.id, ctx.project.backend, True
                )
            with ctx.leased() as (lease, hooks):
                dynamic = self._steps.dynamic_requirements(ctx, lease, hooks, dist)
            self.cache.commit(ctx)
            return RequiresOutcome(
                static=ctx.project.requires,
                dynamic=tuple(dynamic),
                key_id=lease.instance.key.id,
                backend=ctx.project.backend,
            )

        return self._run(request, emit, cancel, work)

    def prepare_metadata(
        self,
        request: Request,
        dist: Literal["wheel", "editable"],
        emit: Emit,
        cancel: threading.Event,
    ) -> MetadataOutcome:
        def work(ctx: RequestContext) -> MetadataOutcome:
            cached = self.cache.metadata(ctx, dist)
            if cached is not None:
                return cached
            with ctx.leased() as (lease, hooks):
                before = lease.instance.generation
                self._steps.dynamic_requirements(ctx, lease, hooks, dist)
                prepared = self._steps.prepare(ctx, lease.instance, hooks, dist)
                self.cache.ran_prepare(ctx, lease.instance, before, prepared)
            self.cache.commit(ctx)
            return MetadataOutcome(
                metadata=prepared.metadata,
                dist_info_name=prepared.dist_info,
                dist_info_path=prepared.directory / prepared.dist_info,
                from_wheel=prepared.from_wheel,
                fingerprint=ctx.fingerprint or "",
            )

        return self._run(request, emit, cancel, work)

    def build(
        self,
        request: Request,
        dists: Sequence[Dist],
        wheel_from_sdist: bool,
        output_directory: str,
        emit: Emit,
        cancel: threading.Event,
    ) -> list[ArtifactOutcome]:
        if not dists:
            dists = ("sdist", "wheel")
        if len(set(dists)) != len(dists):
            raise errors.InvalidRequest(f"distributions: {list(dists)} names one kind twice")

        def work(ctx: RequestContext) -> list[ArtifactOutcome]:
            if is_digest(ctx.request.source) and not output_directory:
                # Uploaded: a session-owned folder, fetched with DownloadArtifact.
                outdir = self._workspace.work_dir(ctx.session) / "artifacts"
            else:
                outdir = artifact_folder(output_directory, Path(ctx.request.source))
            results: list[ArtifactOutcome] = []
            sdist_path: Path | None = None
            for dist in dists:
                if dist == "wheel" and wheel_from_sdist and sdist_path is not None:
                    results.append(self._steps.wheel_from_sdist(ctx, sdist_path, outdir))
                    continue
                with ctx.leased() as (lease, hooks):
                    self._steps.dynamic_requirements(ctx, lease, hooks, dist)
                    artifact = self._steps.build_one(ctx, lease.instance, hooks, dist, outdir)
                results.append(artifact)
                if dist == "sdist":
                    sdist_path = artifact.path
            with ctx.session.lock:  # what DownloadArtifact may serve
                ctx.session.artifacts.update((str(a.path), (a.size, a.sha256)) for a in results)
            self.cache.commit(ctx)
            return results

        return self._run(request, emit, cancel, work)

    # ------------------------------------------------------------- sessions --

    def session_ended(self, session: Session) -> tuple[int, int, int]:
        """Drop everything a session owns; called once when it ends, however it ends.

        With the store, the idle instances it used are checked and stay in
        its principal's store; with ``--no-store`` they are deleted.
        Returns (deleted now, deleted or stored at release, stored now).
        """
        self.watches.session_ended(session.id)
        self._workspace.session_ended(session.id)
        with self._lock:
            busy = self._in_flight.get(session.id, 0)
        used = self._leaser.used(session.id)
        if self._store.enabled and self._keeper is not None:
            self._pool.end_party(session.id)
            stored, deleted, pending = self._keeper.session_ended(session.id, used)
        else:
            stored = 0
            deleted, pending = self._pool.drop_owner(session.id)
        if busy == 0:
            self._workspace.remove_session_dir(session)
        with self._lock:
            # Read back once by CloseSession; sessions that expire are never
            # asked about, so keep only the latest few.
            self._end_counts[session.id] = (deleted, pending, stored)
            while len(self._end_counts) > 64:
                del self._end_counts[next(iter(self._end_counts))]
        log.info(
            "session_ended",
            session=session.id[:8],
            envs_deleted=deleted,
            envs_pending=pending,
            envs_stored=stored,
        )
        return deleted, pending, stored

    @property
    def keeper(self) -> StoreKeeper | None:
        """The store's keeper; None with --no-store."""
        return self._keeper if self._store.enabled else None

    def leased_by(self, session_id: str) -> set[int]:
        """ids of the instances a live session has leased so far (for status)."""
        return self._leaser.leased_by(session_id)

    def last_end_counts(self, session_id: str) -> tuple[int, int, int]:
        """(deleted now, at release, stored now) of a session that just ended."""
        with self._lock:
            return self._end_counts.pop(session_id, (0, 0, 0))

    def sources_of(self, session_id: str, env: Environment) -> list[str]:
        """The sources of a session whose affinity points at ``env``."""
        return self._workspace.sources_of(session_id, env)

    def destroy_environment(self, env: Environment) -> None:
        """The pool's destroy callback.

        An ended session's folder is removed by whoever finishes last: the end
        itself, its last request (whose lease is released, and so destroyed,
        before it finishes), or this: an idle instance evicted for another
        session's creation may still be being deleted, by that other
        session's request, when its own session ends.
        """
        self._factory.destroy(env)
        if env.in_store:
            self._store.release(env.principal, env.key_dir, env.slot)
            return
        session_dir = env.path.parent.parent
        if session_dir.parent != self._config.state_dir / "sessions" or any(
            session.directory == session_dir for session in self._registry.all()
        ):
            return
        # Only empty folders go: a request of the ended session still running
        # keeps its work/ (and so the session folder) until it finishes.
        remove_empty(session_dir / "envs", session_dir)

    # ------------------------------------------------------------ internals --

    def _run(
        self,
        request: Request,
        emit: Emit,
        cancel: threading.Event,
        work: Callable[[RequestContext], T],
    ) -> T:
        if self.draining:
            raise errors.Unavailable("the daemon is shutting down and takes no new requests")
        with (
            self._registry.using(request.session_id, principal=request.principal) as session,
            containment.caller(request.remote),
        ):
            return self._run_in(session, request, emit, cancel, work)

    def _run_in(
        self,
        session: Session,
        request: Request,
        emit: Emit,
        cancel: threading.Event,
        work: Callable[[RequestContext], T],
    ) -> T:
        with self._lock:
            self._in_flight[session.id] = self._in_flight.get(session.id, 0) + 1
        if request.quiet:
            emit = drop_logs(emit)
        bound = log.bind(session=session.id[:8], source=request.source)
        try:
            # Checked after counting this request in, so that an end racing
            # with it either sees the request (and leaves cleanup to it) or
            # the request sees the end.
            if session.ended:
                raise errors.SessionEnded(
                    f"session {session.id[:8]}… has ended",
                    metadata={"session_id": session.id, "end_reason": session.end_reason or ""},
                )
            state = self._workspace.state(session.id, request.source)
            # Taken before the project is even read: the first request of a
            # source fixes its instance, and an sdist is unpacked only once.
            with hold_source(state, cancel, request.deadline):
                ctx = self._context(request, session, state, emit, cancel)
                self.cache.begin(ctx)
                bound.info("request_started", key=ctx.key.id, backend=ctx.project.backend)
                return work(ctx)
        finally:
            with self._lock:
                left = self._in_flight[session.id] - 1
                if left:
                    self._in_flight[session.id] = left
                else:
                    del self._in_flight[session.id]
                finished_after_end = left == 0 and session.ended
            if finished_after_end:
                self._workspace.remove_session_dir(session)

    def _context(
        self,
        request: Request,
        session: Session,
        state: SourceState,
        emit: Emit,
        cancel: threading.Event,
    ) -> RequestContext:
        root = self._workspace.project_root(request.source, session, state)
        try:
            project = load_project(str(root))
        except errors.SourceNotFound as exc:
            if not exc.field and not is_digest(request.source):
                exc.field = "context.source.path"
            raise
        interpreter = resolve_interpreter(request.python)
        origin = f"{project.pyproject or project.root}: build-system.requires"
        key = make_key(
            interpreter,
            project.requires,
            self._installer_name,
            self._config.installer_options,
            origin=origin,
        )
        structlog.contextvars.bind_contextvars(key=key.id)
        for warning in project.warnings:
            emit(warning)
        emit(Phase("key_resolved", detail=project.backend, key_id=key.id))
        return RequestContext(
            self._leaser, request, session, state, project, interpreter, key, emit, cancel
        )
