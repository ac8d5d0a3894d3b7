"""The store on the wire: status entries and ``PruneStore``.

Like the rest of the wire layer this only translates: what the store holds
and what a prune removes is decided in storekeeper.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buildd.v1 import buildd_pb2 as pb

from .. import errors
from ..pool.storekeeper import CHECK_PARTY

if TYPE_CHECKING:
    from ..access.auth import Principal
    from ..config import Config
    from ..environments.environments import Environment
    from ..environments.keys import EnvKey
    from ..pool.pool import PoolEntry
    from ..service.service import BuildService


def environment_info(entry: PoolEntry[EnvKey, Environment]) -> pb.EnvironmentInfo:
    """One instance as status shows it (without the session's sources)."""
    env = entry.instance
    if entry.state == "idle":
        state = pb.ENVIRONMENT_STATE_IDLE
    elif entry.party == CHECK_PARTY:
        state = pb.ENVIRONMENT_STATE_CHECKING
    else:
        state = pb.ENVIRONMENT_STATE_LEASED
    return pb.EnvironmentInfo(
        id=env.id,
        path=str(env.path),
        key_id=env.key.id,
        interpreter=env.interpreter.executable,
        python_version=env.interpreter.version,
        requirements=list(env.key.requirements),
        state=state,
        hook_calls=env.hook_calls,
        created_at=env.created_at,
        last_used_at=env.last_used_at,
        slot=env.slot,
        size_bytes=env.size_bytes,
        principal=env.principal,
        store_key_id=env.key_dir,
    )


def add_store_status(
    response: pb.StatusResponse, service: BuildService, config: Config, scope: str | None
) -> None:
    """The store part of a status answer: daemon totals and one entry per key folder.

    ``scope`` is the caller's principal, or None for an admin (every store).
    """
    daemon = response.daemon
    keeper = service.keeper
    daemon.store_enabled = keeper is not None
    daemon.store_size_limit_bytes = config.store_size
    daemon.store_ttl_seconds = config.store_ttl
    if keeper is None:
        return
    daemon.store_bytes, daemon.store_environments = keeper.usage(scope)
    states = {id(e.instance): e for e in keeper.pool.snapshot()}
    for row in keeper.keys(scope):
        status = response.store.add(
            principal=row.principal,
            key_id=row.key_id,
            size_bytes=row.size_bytes,
            last_used_at=row.last_used_at,
            hook_calls=row.hook_calls,
        )
        for env, _, _ in row.environments:
            entry = states.get(id(env))
            if entry is not None:
                status.environments.append(environment_info(entry))


def prune_store(
    service: BuildService, request: pb.PruneStoreRequest, who: Principal
) -> pb.PruneStoreResponse:
    keeper = service.keeper
    if keeper is None:
        raise errors.StoreDisabled(
            "PruneStore: this daemon keeps no store (it was started with --no-store)"
        )
    if request.older_than_seconds < 0:
        raise errors.InvalidRequest(f"older_than_seconds: {request.older_than_seconds} is negative")
    if request.all_principals and not who.admin:
        raise errors.PermissionDenied(
            f"PruneStore: principal {who.name!r} is not an admin and may prune only its own store"
        )
    scope = None if request.all_principals else who.name
    removed, freed, kept = keeper.prune(scope, request.older_than_seconds or None)
    return pb.PruneStoreResponse(
        environments_removed=removed, bytes_freed=freed, environments_kept=kept
    )
