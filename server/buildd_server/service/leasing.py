"""Leasing an environment for one request, and the request's resolved context.

A source that already ran in this session gets its own instance back (rule
2), waiting for it when busy; otherwise any instance of the key does, and a
missing one is created. The lease is held for the request's whole sequence
of hook calls (get_requires, install, then the hook asked for), so nothing can
slip into the instance between them; when anything goes wrong the instance
is discarded unless it can be proven intact (rule 5).
"""

from __future__ import annotations

import secrets
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog

from .. import errors
from ..environments.environments import Placement, mark_leased, unmark_leased
from ..events import Emit, Event, Phase
from ..hooks import zygotes
from ..hooks.hooks import Hooks
from ..pool.pool import InstanceGone, Lease, OwnerGone, Pool, PoolCancelled, PoolTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..environments.environments import Environment, EnvironmentFactory
    from ..environments.interpreters import Interpreter
    from ..environments.keys import EnvKey
    from ..metrics import Metrics
    from ..pool.store import Store
    from ..pool.storekeeper import StoreKeeper
    from ..sources.sources import Project
    from .requests import Request, SourceState
    from .sessions import Session

log = structlog.get_logger("buildd.leasing")


@contextmanager
def hold_source(
    state: SourceState, cancel: threading.Event, deadline: float | None
) -> Iterator[None]:
    """Hold a source's lock for a whole request, within the deadline, noticing cancels."""
    while not state.lock.acquire(timeout=0.05):
        if cancel.is_set():
            raise errors.Cancelled("the request was cancelled while waiting for its source")
        if deadline is not None and time.monotonic() > deadline:
            raise errors.Timeout("the deadline passed while another request used this source")
    try:
        yield
    finally:
        state.lock.release()


class Leaser:
    """Turns a request context into a lease on an environment instance.

    With the store, instances belong to the session's principal (the pool's
    owner) and the session is the party that leases them; with ``--no-store``
    the session is both, and its instances live in its own folder.
    """

    def __init__(
        self,
        pool: Pool[EnvKey, Environment],
        factory: EnvironmentFactory,
        metrics: Metrics,
        hook_timeout: float,
        store: Store,
        keeper: StoreKeeper | None = None,
    ) -> None:
        self.pool = pool
        self.factory = factory
        self.metrics = metrics
        self.hook_timeout = hook_timeout
        self.store = store
        self.keeper = keeper
        self._lock = threading.Lock()
        # Per session: the instances it leased (checked when it ends).
        self._used: dict[str, dict[int, Environment]] = {}

    def owner_of(self, session: Session) -> str:
        return session.principal if self.store.enabled else session.id

    def lease(self, ctx: RequestContext) -> Lease[Environment]:
        """Lease the source's own instance, or one of its key (creating it if needed)."""
        started = time.monotonic()
        lease = self._lease(ctx)
        self.metrics.leases.inc()
        self.metrics.lease_wait.observe(time.monotonic() - started)
        env = lease.instance
        with self._lock:
            used = self._used.setdefault(ctx.session.id, {})
            first = id(env) not in used
            used[id(env)] = env
        if first and env.in_store and env.created_by != ctx.session.id:
            # Made by an earlier session or daemon run: the store kept it.
            self.metrics.store_adoptions.labels(when="session").inc()
            ctx.emit(
                Phase(
                    "environment_adopted",
                    detail=f"created {_ago(env.created_at)}, last used {_ago(env.last_used_at)}",
                    key_id=env.key.id,
                    environment_path=str(env.path),
                    slot=env.slot,
                    validation_seconds=env.validation_seconds,
                )
            )
        return lease

    def leased_by(self, session_id: str) -> set[int]:
        with self._lock:
            return set(self._used.get(session_id, ()))

    def used(self, session_id: str) -> list[Environment]:
        """The instances a session leased, forgotten with it."""
        with self._lock:
            return list(self._used.pop(session_id, {}).values())

    def _lease(self, ctx: RequestContext) -> Lease[Environment]:
        session = ctx.session
        owner = self.owner_of(session)

        def on_wait() -> None:
            ctx.emit(Phase("waiting_for_environment", key_id=ctx.key.id))

        env = ctx.state.environment
        if env is not None and not still_fits(env, ctx.key):
            # The project's static requirements or interpreter changed: start afresh.
            ctx.state.environment = None
            ctx.state.forget_answers()
            env = None
        try:
            if env is not None:
                try:
                    return self.pool.acquire_instance(
                        owner,
                        env,
                        party=session.id,
                        deadline=ctx.request.deadline,
                        cancel=ctx.cancel,
                        on_wait=on_wait,
                    )
                except InstanceGone:
                    log.info("affinity_lost", session=session.id[:8], env=env.id)
                    ctx.state.environment = None
                    ctx.state.forget_answers()
            prefer, slot = self._last_used(ctx, owner)
            return self.pool.acquire(
                owner,
                ctx.key,
                lambda: self._create(ctx, owner, slot),
                party=session.id,
                prefer=prefer,
                deadline=ctx.request.deadline,
                cancel=ctx.cancel,
                on_wait=on_wait,
            )
        except PoolTimeout as exc:
            raise errors.Timeout(
                f"no environment for key {ctx.key.id} became free before the request's deadline"
            ) from exc
        except PoolCancelled as exc:
            raise errors.Cancelled(
                "the request was cancelled while waiting for an environment"
            ) from exc
        except OwnerGone as exc:
            raise errors.SessionEnded(
                f"session {session.id[:8]}… ended while waiting",
                metadata={"session_id": session.id, "end_reason": session.end_reason or ""},
            ) from exc

    def _last_used(self, ctx: RequestContext, owner: str) -> tuple[Environment | None, int | None]:
        """The instance the source used last in an earlier session, and its slot."""
        if not self.store.enabled:
            return None, None
        last = self.store.last_slot(ctx.session.principal, ctx.request.source)
        if last is None:
            return None, None
        key_dir, slot = last
        for entry in self.pool.snapshot():
            env = entry.instance
            if (
                entry.owner == owner
                and (env.key_dir, env.slot) == last
                and still_fits(env, ctx.key)
            ):
                return env, slot
        # Gone (evicted, discarded): a new instance of the same key takes its slot.
        return None, slot if key_dir == ctx.key.id else None

    def _create(self, ctx: RequestContext, owner: str, slot: int | None) -> Environment:
        session = ctx.session
        if self.store.enabled:
            placement = self.store.placement(session.principal, ctx.key.id, slot)
        else:
            placement = Placement(
                path=session.directory / "envs" / secrets.token_hex(6),
                owner=owner,
                principal=session.principal,
            )
        started = time.monotonic()
        outcome = "failed"
        try:
            with self.store.cache_in_use(session.principal):
                env = self.factory.create(
                    ctx.key,
                    ctx.interpreter,
                    placement,
                    emit=ctx.emit,
                    cancel=ctx.cancel,
                    backend=_compile_first(ctx.project),
                    party=session.id,
                )
            outcome = "ok"
        finally:
            self.metrics.creation.labels(outcome=outcome).observe(time.monotonic() - started)
            if outcome != "ok" and placement.slot >= 0:
                self.store.release(placement.principal, placement.key_dir, placement.slot)
        if self.keeper is not None:
            self.keeper.changed(env)
        return env


class RequestContext:
    """One request's resolved inputs, and the helpers that need them together."""

    def __init__(
        self,
        leaser: Leaser,
        request: Request,
        session: Session,
        state: SourceState,
        project: Project,
        interpreter: Interpreter,
        key: EnvKey,
        emit: Emit,
        cancel: threading.Event,
    ) -> None:
        self.leaser = leaser
        self.request = request
        self.session = session
        self.state = state
        self.project = project
        self.interpreter = interpreter
        self.key = key
        self.cancel = cancel
        # The source fingerprint when the request began, and the answers to
        # store if it is the same when the request ends (hookcache.py).
        self.fingerprint: str | None = None
        self.on_unchanged: list[Callable[[], None]] = []
        self._emit = emit
        self._hook_started = 0.0

    def emit(self, event: Event) -> None:
        """Pass an event on, counting finished hooks for the metrics on the way."""
        if isinstance(event, Phase):
            if event.name == "running_hook":
                self._hook_started = time.monotonic()
            elif event.name == "hook_finished" and event.detail != "failed":
                self.leaser.metrics.hooks.labels(hook=event.hook, outcome="ok").observe(
                    event.step_seconds
                )
        self._emit(event)

    def hook_failed(self, exc: BaseException) -> None:
        if isinstance(exc, errors.BuilddError) and exc.hook:
            outcome = (
                "timeout"
                if isinstance(exc, errors.Timeout)
                else "cancelled"
                if isinstance(exc, errors.Cancelled)
                else "failed"
            )
            self.leaser.metrics.hooks.labels(hook=exc.hook, outcome=outcome).observe(
                time.monotonic() - self._hook_started
            )

    @contextmanager
    def leased(self) -> Iterator[tuple[Lease[Environment], Hooks]]:
        """Lease an environment for a sequence of hook calls; discard it on doubt (rule 5)."""
        lease = self.leaser.lease(self)
        env = lease.instance
        if env.in_store:
            try:
                mark_leased(env)
            except BaseException:
                lease.release()  # nothing ran in it: it stays as it was
                raise
        self.emit(
            Phase(
                "environment_leased",
                key_id=env.key.id,
                environment_path=str(env.path),
                slot=env.slot,
                validation_seconds=env.validation_seconds,
            )
        )
        hooks = Hooks(
            env,
            self.project,
            timeout=self.leaser.hook_timeout,
            cancel=self.cancel,
            emit=self.emit,
        )
        discard = True
        try:
            yield lease, hooks
            discard = False
        except (
            errors.InvalidProject,
            errors.HookMissing,
            errors.BackendUnavailable,
            errors.ArtifactInvalid,
            errors.ResourceExhausted,
        ) as exc:
            # The hook process ended through the PEP 517 protocol itself, or
            # exited 0 with a broken artifact, or the disk is full (not the
            # instance's fault): it may well be intact, so prove it before
            # keeping it (a warm store instance is worth keeping).
            self.hook_failed(exc)
            discard = not self.leaser.factory.validate(env)
            raise
        except BaseException as exc:
            self.hook_failed(exc)
            raise
        finally:
            if discard:
                self.state.environment = None
                self.state.forget_answers()
            else:
                self.state.environment = env
            env.last_used_at = time.time()
            if env.in_store:
                unmark_leased(env)
                if not discard:
                    self.leaser.store.remember(env, self.request.source)
            lease.release(discard=discard)
            if self.leaser.keeper is not None:
                self.leaser.keeper.released()


def still_fits(env: Environment, key: EnvKey) -> bool:
    return (
        env.key.interpreter == key.interpreter
        and env.key.installer == key.installer
        and env.key.installer_options == key.installer_options
        and set(key.requirements) <= set(env.key.requirements)
    )


def _compile_first(project: Project) -> str:
    """The backend module whose imports to compile first: installed and import-safe only."""
    module = project.backend.partition(":")[0].strip()
    if project.backend_path or module not in zygotes.PREIMPORT_SAFE:
        return ""
    return module


def _ago(when: float) -> str:
    seconds = max(0.0, time.time() - when)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
