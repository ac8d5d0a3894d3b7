"""The ``GetStatus`` answer: the daemon, and the sessions the caller may see."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb

if TYPE_CHECKING:
    from ..auth import Principal
    from ..config import Config
    from ..environments import Environment
    from ..keys import EnvKey
    from ..pool import Pool
    from ..service import BuildService
    from ..sessions import SessionRegistry


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
        sessions = [registry.peek(only, principal=scope)] if only else registry.all(scope)
        entries = self.pool.snapshot()
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
            ),
            principal=who.name,
            admin=who.admin,
        )
        for session in sessions:
            status = response.sessions.add(
                session_id=session.id,
                client_name=session.client_name,
                created_at=session.created_at,
                last_active_at=time.time() - (time.monotonic() - session.last_active),
                keepalives=session.keepalives,
                principal=session.principal,
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
        return response
