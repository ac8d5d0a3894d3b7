"""Reusing what a hook answered while its inputs are unchanged.

An answer of ``get_requires_for_build_*`` or ``prepare_metadata_for_build_*``
is reused for a request of the same source in the same session when all of
these are the same as when the hook ran:

- the environment instance, in the same *generation*: same id, same key, same
  site-packages fingerprint, and not destroyed since (installing dynamic
  requirements starts a new generation, so does anything that changes
  site-packages);
- the request's interpreter, installer and static requirements (the key);
- the distribution and the config settings (the slot);
- the source fingerprint (fingerprints.py): the tree's contents, its VCS state,
  the daemon's environment variables, the date.

Answers are stored only when every hook of the request ran in one
generation (no install in between) and the tree's fingerprint after the
hooks equals the one before: a tree edited while the hook ran gives an
answer of unknown provenance, and the next request runs the hook again.
Entries live in the session's per-source state (requests.SourceState) and
go with it, and with the instance: a discard forgets them, a destroyed or
changed instance no longer matches. A ``get_requires_for_build_*`` answer is
also kept with the instance itself, by source path (at most
``_SHARED_ANSWERS`` per instance): a later session of the same principal that
leases the instance from the store for the same unchanged tree skips the hook
as well. Only the principal's sessions ever lease its instances, and the
answer is reused under exactly the conditions above.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import structlog

from ..events import Phase
from ..sources.fingerprints import TreeIndex
from .leasing import still_fits
from .requests import CachedRequires, MetadataOutcome, settings_id

if TYPE_CHECKING:
    from ..environments.environments import Environment
    from .leasing import RequestContext
    from .requests import Dist, Prepared

log = structlog.get_logger("buildd.hookcache")

# A fingerprint of the build declaration only (size and mtime of
# pyproject.toml, setup.py, setup.cfg, PKG-INFO), for trees too large to
# fingerprint: enough for rule 6, never for a cached answer.
_WEAK = "weak:"

Generation = tuple[str, str, str]

# get_requires answers an instance keeps for later sessions (oldest dropped).
_SHARED_ANSWERS = 64


class HookCache:
    """Looks answers up and records them, for the service."""

    def __init__(self, index: TreeIndex | None = None) -> None:
        self.index = index or TreeIndex()

    def begin(self, ctx: RequestContext) -> str:
        """Fingerprint the request's source; set and return ``ctx.fingerprint``."""
        ctx.fingerprint = self._fingerprint(ctx)
        return ctx.fingerprint

    def metadata(self, ctx: RequestContext, dist: Dist) -> MetadataOutcome | None:
        """The cached answer of prepare_metadata_for_build_<dist>, or None."""
        prepared = ctx.state.prepared.get(_slot(ctx, dist))
        env = ctx.state.environment
        if (
            prepared is None
            or env is None
            or not self._usable(ctx, env, prepared.generation, prepared.fingerprint)
        ):
            return None
        path = prepared.directory / prepared.dist_info
        if not path.is_dir():
            return None
        assert ctx.fingerprint is not None
        for hook in (f"get_requires_for_build_{dist}", f"prepare_metadata_for_build_{dist}"):
            self._hit(ctx, env, hook)
        return MetadataOutcome(
            metadata=prepared.metadata,
            dist_info_name=prepared.dist_info,
            dist_info_path=path,
            from_wheel=prepared.from_wheel,
            cached=True,
            fingerprint=ctx.fingerprint,
        )

    def requires(
        self, ctx: RequestContext, env: Environment | None, dist: Dist
    ) -> list[str] | None:
        """The cached answer of get_requires_for_build_<dist> in ``env``, or None."""
        if env is None:
            return None
        entry = ctx.state.requires.get(_slot(ctx, dist))
        if entry is None:
            shared = env.requires_answers.get(_shared_key(ctx, dist))
            entry = CachedRequires(*shared) if shared is not None else None
        if entry is None:
            return None
        if not self._usable(ctx, env, entry.generation, entry.fingerprint):
            return None
        self._hit(ctx, env, f"get_requires_for_build_{dist}")
        return list(entry.dynamic)

    def ran_requires(
        self,
        ctx: RequestContext,
        env: Environment,
        dist: Dist,
        before: Generation,
        dynamic: list[str],
    ) -> None:
        """get_requires ran in generation ``before``: keep its answer if all holds at the end."""
        if env.generation != before or not _strong(ctx.fingerprint):
            return  # an install followed: the answer in the new generation may differ
        assert ctx.fingerprint is not None
        slot, shared = _slot(ctx, dist), _shared_key(ctx, dist)
        entry = CachedRequires(before, ctx.fingerprint, tuple(dynamic))

        def keep() -> None:
            ctx.state.requires[slot] = entry
            answers = env.requires_answers
            answers.pop(shared, None)  # the newest last
            answers[shared] = (entry.generation, entry.fingerprint, entry.dynamic)
            while len(answers) > _SHARED_ANSWERS:
                del answers[next(iter(answers))]

        ctx.on_unchanged.append(keep)

    def ran_prepare(
        self, ctx: RequestContext, env: Environment, before: Generation, prepared: Prepared
    ) -> None:
        """prepare_metadata ran, its lease having begun in generation ``before``.

        Confirmed at commit: for rule 6 (same instance, same tree), and as a
        cached answer when no install happened during the lease.
        """
        fingerprint = ctx.fingerprint
        gen = env.generation

        def confirm() -> None:
            prepared.fingerprint = fingerprint
            if _strong(fingerprint) and before == gen:
                prepared.generation = gen

        ctx.on_unchanged.append(confirm)

    def commit(self, ctx: RequestContext) -> None:
        """The request succeeded: store its answers if the tree is still what it was."""
        pending, ctx.on_unchanged = ctx.on_unchanged, []
        if not pending or ctx.fingerprint is None:
            return
        after = self._fingerprint(ctx)
        if after != ctx.fingerprint:
            log.info("source_changed_during_hooks", source=ctx.request.source)
            return
        for store in pending:
            store()

    # ------------------------------------------------------------ internals --

    def _fingerprint(self, ctx: RequestContext) -> str:
        found = self.index.fingerprint(ctx.project.root)
        if found is not None:
            return found.digest
        weak = repr(ctx.project.fingerprint()).encode()
        return _WEAK + hashlib.sha256(weak).hexdigest()

    def _usable(
        self,
        ctx: RequestContext,
        env: Environment,
        gen: Generation | None,
        fingerprint: str | None,
    ) -> bool:
        return (
            not ctx.request.no_cache
            and _strong(ctx.fingerprint)
            and fingerprint == ctx.fingerprint
            and gen is not None
            and gen == env.generation
            and not env.retired
            and still_fits(env, ctx.key)
        )

    def _hit(self, ctx: RequestContext, env: Environment, hook: str) -> None:
        assert ctx.fingerprint is not None
        ctx.emit(
            Phase(
                "cache_hit",
                hook=hook,
                key_id=env.key.id,
                environment_path=str(env.path),
                fingerprint=ctx.fingerprint,
            )
        )
        log.info("cache_hit", hook=hook, env=env.id, fingerprint=ctx.fingerprint[:16])


def _slot(ctx: RequestContext, dist: Dist) -> tuple[str, str]:
    return (dist, settings_id(ctx.request.config_settings))


def _shared_key(ctx: RequestContext, dist: Dist) -> tuple[str, str, str]:
    return (str(ctx.project.root), *_slot(ctx, dist))


def _strong(fingerprint: str | None) -> bool:
    return fingerprint is not None and not fingerprint.startswith(_WEAK)
