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

import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import structlog

from . import checks, containment, errors
from .artifacts import publish
from .blobs import BlobStore, is_digest, unpack_upload
from .events import Emit, Phase
from .hookcache import HookCache
from .interpreters import resolve_interpreter
from .keys import make_key, normalize_requirements
from .leasing import Leaser, RequestContext, hold_source
from .metrics import Metrics
from .requests import (
    ArtifactOutcome,
    Dist,
    MetadataOutcome,
    Prepared,
    Request,
    RequiresOutcome,
    SourceState,
    drop_logs,
    settings_id,
)
from .sources import is_sdist, load_project, unpack_sdist
from .store import Store
from .treewatch import TreeWatchers
from .watches import Watches

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import Config
    from .environments import Environment, EnvironmentFactory
    from .hooks import Hooks
    from .keys import EnvKey
    from .pool import Lease, Pool
    from .sessions import Session, SessionRegistry
    from .storekeeper import StoreKeeper

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
        # Uploaded sources (digest sources); None: this service takes none.
        self._blobs = blobs
        self._registry = registry
        self._pool = pool
        self._factory = factory
        self._installer_name = installer_name
        self._lock = threading.Lock()
        self._sources: dict[str, dict[str, SourceState]] = {}
        self._in_flight: dict[str, int] = {}
        self._end_counts: dict[str, tuple[int, int, int]] = {}
        # Without a store given: session-only environments (--no-store).
        self._store = store or Store(config.state_dir / "envs", enabled=False)
        self._keeper = keeper
        self._leaser = Leaser(pool, factory, self.metrics, config.hook_timeout, self._store, keeper)
        self.cache = HookCache()
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
                dynamic = self._dynamic_requirements(ctx, lease, hooks, dist)
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
                self._dynamic_requirements(ctx, lease, hooks, dist)
                prepared = self._prepare(ctx, lease.instance, hooks, dist)
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
                outdir = self._work_dir(ctx.session) / "artifacts"
            else:
                outdir = self._output_directory(output_directory, Path(ctx.request.source))
            results: list[ArtifactOutcome] = []
            sdist_path: Path | None = None
            for dist in dists:
                if dist == "wheel" and wheel_from_sdist and sdist_path is not None:
                    results.append(self._wheel_from_sdist(ctx, sdist_path, outdir))
                    continue
                with ctx.leased() as (lease, hooks):
                    self._dynamic_requirements(ctx, lease, hooks, dist)
                    artifact = self._build_one(ctx, lease.instance, hooks, dist, outdir)
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
        with self._lock:
            self._sources.pop(session.id, None)
            busy = self._in_flight.get(session.id, 0)
        used = self._leaser.used(session.id)
        if self._store.enabled and self._keeper is not None:
            self._pool.end_party(session.id)
            stored, deleted, pending = self._keeper.session_ended(session.id, used)
        else:
            stored = 0
            deleted, pending = self._pool.drop_owner(session.id)
        if busy == 0:
            self._remove_session_dir(session)
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
        with self._lock:
            states = list(self._sources.get(session_id, {}).items())
        return sorted(src for src, state in states if state.environment is env and "\0" not in src)

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
        for folder in (session_dir / "envs", session_dir):
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break

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
            state = self._source_state(session.id, request.source)
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
                self._remove_session_dir(session)

    def _context(
        self,
        request: Request,
        session: Session,
        state: SourceState,
        emit: Emit,
        cancel: threading.Event,
    ) -> RequestContext:
        root = self._project_root(request.source, session, state)
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

    def _project_root(self, source: str, session: Session, state: SourceState) -> Path:
        if is_digest(source):
            return unpack_upload(self._blobs, source, self._work_dir(session), state)
        path = Path(source)
        if not path.is_absolute():
            raise errors.InvalidRequest(f"source.path: {source!r} is not an absolute path")
        if not is_sdist(path):
            return path
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if state.unpacked is not None and state.unpacked[0] == stamp and state.unpacked[1].is_dir():
            return state.unpacked[1]
        dest = Path(tempfile.mkdtemp(prefix="sdist-", dir=self._work_dir(session)))
        try:
            root = unpack_sdist(path, dest)
            checks.check_sdist_source(path, root)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        if state.unpacked is not None:
            # An older unpacking of this sdist (the file changed since).
            shutil.rmtree(state.unpacked[1].parent, ignore_errors=True)
        state.unpacked = (stamp, root)
        return root

    def _source_state(self, session_id: str, source: str) -> SourceState:
        with self._lock:
            per_session = self._sources.setdefault(session_id, {})
            return per_session.setdefault(source, SourceState())

    def _forget_source(self, session_id: str, source: str) -> None:
        with self._lock:
            self._sources.get(session_id, {}).pop(source, None)

    def _work_dir(self, session: Session) -> Path:
        work = session.directory / "work"
        work.mkdir(mode=0o700, parents=True, exist_ok=True)
        return work

    def _remove_session_dir(self, session: Session) -> None:
        shutil.rmtree(session.directory / "work", ignore_errors=True)
        # Environments still leased live under envs/ and are removed at release.
        for folder in (session.directory / "envs", session.directory):
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break

    def _dynamic_requirements(
        self, ctx: RequestContext, lease: Lease[Environment], hooks: Hooks, dist: Dist
    ) -> list[str]:
        env = lease.instance
        cached = self.cache.requires(ctx, env, dist)
        if cached is not None:
            return cached  # installed in this very generation
        before = env.generation
        dynamic = hooks.get_requires(dist, ctx.request.config_settings)
        origin = f"{ctx.project.backend}: get_requires_for_build_{dist}"
        wanted = normalize_requirements(
            dynamic, ctx.interpreter.marker_environment(), origin=origin
        )
        missing = [req for req in wanted if req not in env.key.requirements]
        if missing:
            with self._store.cache_in_use(env.principal):
                self._factory.install(env, missing, emit=ctx.emit, cancel=ctx.cancel)
            lease.rekey(env.key)
            if self._keeper is not None:
                self._keeper.changed(env)
        self.cache.ran_requires(ctx, env, dist, before, dynamic)
        return dynamic

    def _prepare(
        self,
        ctx: RequestContext,
        env: Environment,
        hooks: Hooks,
        dist: Literal["wheel", "editable"],
    ) -> Prepared:
        work = self._work_dir(ctx.session)
        directory = Path(tempfile.mkdtemp(prefix=f"metadata-{dist}-", dir=work))
        try:
            dist_info, from_wheel = hooks.prepare_metadata(
                dist, directory, ctx.request.config_settings
            )
            checks.check_prepared(directory / dist_info, dist, ctx.project)
            metadata = (directory / dist_info / "METADATA").read_bytes()
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        ctx.emit(
            Phase("artifact_checked", detail=dist_info, hook=f"prepare_metadata_for_build_{dist}")
        )
        # Usable for rule 6 and as a cached answer once the request confirmed
        # the tree held still (hookcache.py).
        prepared = Prepared(directory, dist_info, env.id, None, from_wheel, metadata)
        slot = (dist, settings_id(ctx.request.config_settings))
        old = ctx.state.prepared.get(slot)
        ctx.state.prepared[slot] = prepared
        if old is not None:
            shutil.rmtree(old.directory, ignore_errors=True)
        return prepared

    def _metadata_directory(self, ctx: RequestContext, env: Environment, dist: Dist) -> Path | None:
        """The prepared metadata to pass to build_* (rule 6), when it is still valid."""
        if dist == "sdist":
            return None
        prepared = ctx.state.prepared.get((dist, settings_id(ctx.request.config_settings)))
        if prepared is None:
            return None
        if (
            prepared.environment_id != env.id
            or prepared.fingerprint is None
            or prepared.fingerprint != ctx.fingerprint
            or not (prepared.directory / prepared.dist_info).is_dir()
        ):
            return None
        # PEP 517 passes the .dist-info folder itself, not its parent.
        return prepared.directory / prepared.dist_info

    def _build_one(
        self,
        ctx: RequestContext,
        env: Environment,
        hooks: Hooks,
        dist: Dist,
        outdir: Path,
        expected: Sequence[tuple[str, checks.Identity]] = (),
    ) -> ArtifactOutcome:
        staging = Path(tempfile.mkdtemp(prefix=f"build-{dist}-", dir=self._work_dir(ctx.session)))
        try:
            metadata_directory = self._metadata_directory(ctx, env, dist)
            name = hooks.build(dist, staging, ctx.request.config_settings, metadata_directory)
            built = staging / name
            if not built.is_file():
                raise errors.BackendFailed(
                    f"build_{dist} returned {name!r}, but no such file was written in the "
                    "output directory",
                    hook=f"build_{dist}",
                )
            # Nothing broken reaches the output folder, whoever asked for it.
            checks.check_artifact(
                dist, built, ctx.project, metadata_directory=metadata_directory, expected=expected
            )
            ctx.emit(Phase("artifact_checked", detail=name, hook=f"build_{dist}"))
            final, size, digest = publish(built, outdir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        ctx.emit(Phase("artifact_written", detail=str(final)))
        return ArtifactOutcome(dist, final, size, digest)

    def _wheel_from_sdist(self, ctx: RequestContext, sdist: Path, outdir: Path) -> ArtifactOutcome:
        """Build the wheel from the unpacked sdist, as ``python -m build`` does by default."""
        work = self._work_dir(ctx.session)
        unpack_root = Path(tempfile.mkdtemp(prefix="from-sdist-", dir=work))
        source_id = f"{ctx.request.source}\0from-sdist"
        try:
            try:
                root = unpack_sdist(sdist, unpack_root)
            except errors.InvalidProject as exc:
                # The backend's own sdist, checked already: its fault, not the caller's.
                raise errors.BackendFailed(
                    f"hook build_sdist of backend {ctx.project.backend!r} wrote {sdist.name}, "
                    f"which cannot be unpacked safely: {exc.message}",
                    path=exc.path,
                    hook="build_sdist",
                ) from exc
            project = load_project(str(root))
            origin = f"{sdist.name}: build-system.requires"
            key = make_key(
                ctx.interpreter,
                project.requires,
                self._installer_name,
                self._config.installer_options,
                origin=origin,
            )
            state = self._source_state(ctx.session.id, source_id)
            sub = RequestContext(
                self._leaser,
                ctx.request,
                ctx.session,
                state,
                project,
                ctx.interpreter,
                key,
                ctx.emit,
                ctx.cancel,
            )
            expected = [(f"the sdist {sdist.name}", checks.sdist_identity(sdist.name))]
            with sub.leased() as (lease, hooks):
                self._dynamic_requirements(sub, lease, hooks, "wheel")
                return self._build_one(sub, lease.instance, hooks, "wheel", outdir, expected)
        finally:
            self._forget_source(ctx.session.id, source_id)
            shutil.rmtree(unpack_root, ignore_errors=True)

    def _output_directory(self, requested: str, source: Path) -> Path:
        if not requested:
            # <source>/dist for a tree; for an sdist, the folder it lies in
            # (its unpacked tree is the session's and goes away with it).
            return source.parent if is_sdist(source) else source / "dist"
        path = Path(requested)
        if not path.is_absolute():
            raise errors.InvalidRequest(f"output_directory: {requested!r} is not an absolute path")
        if path.exists() and not path.is_dir():
            raise errors.InvalidRequest(f"output_directory: {requested} exists and is not a folder")
        return path
