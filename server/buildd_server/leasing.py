"""Leasing an environment for one request, and the request's resolved context.

A source that already ran in this session gets its own instance back (rule
2), waiting for it when busy; otherwise any instance of the key does, and a
missing one is created. The lease is held for the request's whole sequence
of hook calls (get_requires, install, then the hook asked for), so nothing can
slip into the instance between them; when anything goes wrong the instance
is discarded unless it can be proven intact (rule 5).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog

from . import errors
from .events import Emit, Event, Phase
from .hooks import Hooks
from .pool import InstanceGone, Lease, OwnerGone, Pool, PoolCancelled, PoolTimeout

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator

    from .environments import Environment, EnvironmentFactory
    from .interpreters import Interpreter
    from .keys import EnvKey
    from .metrics import Metrics
    from .requests import Request, SourceState
    from .sessions import Session
    from .sources import Project

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
    """Turns a request context into a lease on an environment instance."""

    def __init__(
        self,
        pool: Pool[EnvKey, Environment],
        factory: EnvironmentFactory,
        metrics: Metrics,
        hook_timeout: float,
    ) -> None:
        self.pool = pool
        self.factory = factory
        self.metrics = metrics
        self.hook_timeout = hook_timeout

    def lease(self, ctx: RequestContext) -> Lease[Environment]:
        """Lease the source's own instance, or one of its key (creating it if needed)."""
        started = time.monotonic()
        lease = self._lease(ctx)
        self.metrics.leases.inc()
        self.metrics.lease_wait.observe(time.monotonic() - started)
        return lease

    def _lease(self, ctx: RequestContext) -> Lease[Environment]:
        owner = ctx.session.id

        def on_wait() -> None:
            ctx.emit(Phase("waiting_for_environment", key_id=ctx.key.id))

        env = ctx.state.environment
        if env is not None and not _still_fits(env, ctx.key):
            # The project's static requirements or interpreter changed: start afresh.
            ctx.state.environment = None
            ctx.state.prepared.clear()
            env = None
        try:
            if env is not None:
                try:
                    return self.pool.acquire_instance(
                        owner,
                        env,
                        deadline=ctx.request.deadline,
                        cancel=ctx.cancel,
                        on_wait=on_wait,
                    )
                except InstanceGone:
                    log.info("affinity_lost", session=owner[:8], env=env.id)
                    ctx.state.environment = None
                    ctx.state.prepared.clear()
            envs_dir = ctx.session.directory / "envs"

            def create() -> Environment:
                started = time.monotonic()
                outcome = "failed"
                try:
                    env = self.factory.create(
                        ctx.key, ctx.interpreter, envs_dir, emit=ctx.emit, cancel=ctx.cancel
                    )
                    outcome = "ok"
                    return env
                finally:
                    self.metrics.creation.labels(outcome=outcome).observe(
                        time.monotonic() - started
                    )

            return self.pool.acquire(
                owner,
                ctx.key,
                create,
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
            raise errors.SessionNotFound(f"session {owner[:8]}… ended while waiting") from exc


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
        self.emit(Phase("environment_leased", key_id=env.key.id, environment_path=str(env.path)))
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
        ) as exc:
            # The hook process ended through the PEP 517 protocol itself (or
            # exited 0 with a broken artifact): the instance was not touched,
            # but prove it before keeping it.
            self.hook_failed(exc)
            discard = not self.leaser.factory.validate(env)
            raise
        except BaseException as exc:
            self.hook_failed(exc)
            raise
        finally:
            if discard:
                self.state.environment = None
                self.state.prepared.clear()
            else:
                self.state.environment = env
            env.last_used_at = time.time()
            lease.release(discard=discard)


def _still_fits(env: Environment, key: EnvKey) -> bool:
    return (
        env.key.interpreter == key.interpreter
        and env.key.installer == key.installer
        and env.key.installer_options == key.installer_options
        and set(key.requirements) <= set(env.key.requirements)
    )
