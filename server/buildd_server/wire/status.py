"""The ``GetStatus`` answer: the daemon, and the sessions the caller may see."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb

from .. import containment

if TYPE_CHECKING:
    from ..auth import Principal
    from ..config import Config
    from ..environments import Environment
    from ..keys import EnvKey
    from ..pool import Pool
    from ..service import BuildService
    from ..sessions import SessionRegistry


_CONTAINMENT = {
    "none": pb.CONTAINMENT_NONE,
    "pid": pb.CONTAINMENT_PID,
    "sandbox": pb.CONTAINMENT_SANDBOX,
}


@dataclass(frozen=True)
class StatusSource:
    """What a status answer is read from."""

    config: Config
    address: str
    installer_name: str
    started_at: float
    service: BuildService
    registry: SessionRegistry
    pool: Pool[EnvKey, Environment]

    def status(self, only: str, who: Principal) -> pb.StatusResponse:
        """One session (``only``) or every session ``who`` may see: admins see all."""
        scope = None if who.admin else who.name
        registry = self.registry
        sessions = (
            # Admins may see several: ids are scoped per principal (sessions.py).
            (registry.named(only, scope) or [registry.peek(only, principal=scope)])
            if only
            else registry.all(scope)
        )
        entries = self.pool.snapshot()
        creating = self.pool.creating()
        response = pb.StatusResponse(
            daemon=pb.DaemonInfo(
                pid=os.getpid(),
                version=__version__,
                address=self.address,
                state_dir=str(self.config.state_dir),
                started_at=self.started_at,
                installer=self.installer_name,
                max_envs=self.config.max_envs,
                max_envs_per_key=self.config.max_envs_per_key,
                draining=self.service.draining,
                daemon_id=self.config.daemon_id,
                max_watches_per_session=self.config.max_watches_per_session,
                max_watches_per_principal=self.config.caps.watches,
                watched_trees=self.service.watches.trees.watched(),
                local_containment=_CONTAINMENT[containment.POLICY.local],
                remote_containment=_CONTAINMENT[containment.POLICY.remote],
                containment_setting=containment.POLICY.choice,
                containment_notes=list(containment.POLICY.notes),
            ),
            principal=who.name,
            admin=who.admin,
        )
        for session in sessions:
            status = response.sessions.add(
                session_id=session.wire_id,
                client_name=session.client_name,
                created_at=session.created_at,
                last_active_at=time.time() - (time.monotonic() - session.last_active),
                keepalives=session.keepalives,
                principal=session.principal,
                watches=self.service.watches.count(session.id),
            )
            for entry in entries:
                if entry.owner != session.id:
                    continue
                env = entry.instance
                status.environments.add(
                    id=env.id,
                    path=str(env.path),
                    key_id=env.key.id,
                    interpreter=env.interpreter.executable,
                    python_version=env.interpreter.version,
                    requirements=list(env.key.requirements),
                    state=(
                        pb.ENVIRONMENT_STATE_LEASED
                        if entry.state == "leased"
                        else pb.ENVIRONMENT_STATE_IDLE
                    ),
                    hook_calls=env.hook_calls,
                    created_at=env.created_at,
                    last_used_at=env.last_used_at,
                    sources=self.service.sources_of(session.id, env),
                )
            for owner, key in creating:
                if owner == session.id:
                    # Not an instance yet: no id, no path, only what it is made for.
                    status.environments.add(
                        key_id=key.id,
                        interpreter=key.interpreter[0],
                        python_version=key.interpreter[2],
                        requirements=list(key.requirements),
                        state=pb.ENVIRONMENT_STATE_CREATING,
                    )
        return response
