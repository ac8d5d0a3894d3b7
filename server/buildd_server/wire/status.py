"""The ``GetStatus`` answer: the daemon, and the sessions the caller may see."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from buildd import __version__
from buildd.v1 import buildd_pb2 as pb

from .. import containment
from .store_status import add_store_status, environment_info

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
        creating = self.pool.creations()
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
        add_store_status(response, self.service, self.config, scope)
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
            # Those it leased: its own (--no-store), or of its principal's store.
            leased = self.service.leased_by(session.id)
            for entry in entries:
                if entry.owner != session.id and id(entry.instance) not in leased:
                    continue
                info = environment_info(entry)
                info.sources.extend(self.service.sources_of(session.id, entry.instance))
                status.environments.append(info)
            for owner, key, party in creating:
                # Its own (--no-store), or one it asked its principal's store for.
                if session.id in (owner, party):
                    # Not an instance yet: no id, no path, only what it is made for.
                    status.environments.add(
                        key_id=key.id,
                        interpreter=key.interpreter[0],
                        python_version=key.interpreter[2],
                        requirements=list(key.requirements),
                        state=pb.ENVIRONMENT_STATE_CREATING,
                    )
        return response
