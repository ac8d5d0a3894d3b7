"""What the daemon does with its store: adopt at start, check at session end,
keep it within its bounds, prune on request, and describe it for status.

The store's instances live in the pool under their principal (the owner);
sessions lease them as parties. Everything here goes through the pool's calls
that never wait (``try_lease``, ``discard_idle``, ``evict_idle``): a leased
instance is never checked, evicted or pruned; the lease ends first.

Sizes (docs/architecture.md, "Sizes on disk"): an instance counts its whole
folder, bytecode included, each hard-linked file in full; the principal's
installer cache counts the files no instance links. The sum is at least the
real use of the disk, so ``--store-size`` bounds it from above.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from ..environments import manifest
from ..environments.environments import LEASE_FILE
from .store import principal_dir_name

if TYPE_CHECKING:
    from ..environments.environments import Environment, EnvironmentFactory
    from ..environments.keys import EnvKey
    from ..metrics import Metrics
    from .pool import Pool
    from .store import Store

log = structlog.get_logger("buildd.storekeeper")

# The party that holds an instance while the store checks it.
CHECK_PARTY = "store-check"


@dataclass
class StoreKey:
    """The instances of one principal created for one key, for status."""

    principal: str
    key_id: str
    environments: list[tuple[Environment, str, str | None]] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(env.size_bytes for env, _, _ in self.environments)

    @property
    def last_used_at(self) -> float:
        return max((env.last_used_at for env, _, _ in self.environments), default=0.0)

    @property
    def hook_calls(self) -> int:
        return sum(env.hook_calls for env, _, _ in self.environments)


class StoreKeeper:
    """The store's policy over the pool; runs its bounds in a background thread."""

    def __init__(
        self,
        store: Store,
        pool: Pool[EnvKey, Environment],
        factory: EnvironmentFactory,
        metrics: Metrics,
        *,
        max_bytes: int,
        ttl: float,
    ) -> None:
        self.store = store
        self.pool = pool
        self.factory = factory
        self.metrics = metrics
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._lock = threading.Lock()
        # Bytes of each principal's installer cache that no instance links.
        self._cache_bytes: dict[str, int] = {}
        self._measure: set[str] = set()
        # Caches an invalid instance may have reached through a hard link.
        self._suspect: set[str] = set()
        self._unchecked: list[Environment] = []
        # Over --store-size after the last round (all that is left is leased).
        self._over = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- checks --

    def validate(self, env: Environment, when: str = "borrow") -> bool:
        """The pool's validate callback, counting failures by when they happened."""
        valid = self.factory.validate(env)
        if not valid:
            self.metrics.store_validation_failures.labels(when=when).inc()
            log.info("environment_invalid", env=env.id, path=str(env.path), when=when)
            if env.cache_dir is not None:
                with self._lock:
                    self._suspect.add(env.principal)
                self._wake.set()
        return valid

    def adopt(self) -> tuple[int, int]:
        """At start: take complete instances into the pool, delete half-made ones.

        Returns (kept, removed). Kept instances are checked in full by the
        background thread soon after, and on every borrow anyway.
        """
        removed = 0
        now = time.time()
        adopted: list[Environment] = []
        for found in self.store.scan():
            env = self.factory.load(found.path, owner="") if found.complete else None
            if (
                env is None
                # Leased when the daemon died: whatever ran in it may have changed it.
                or (found.path / LEASE_FILE).exists()
                or principal_dir_name(env.principal) != found.principal_dir.name
                or env.path != found.principal_dir / env.key_dir / str(env.slot)
                or not self.store.reserve(env)
            ):
                self.store.remove(found.path)
                removed += 1
                continue
            env.owner = env.principal
            recorded = self.store.recorded_use(env)
            if recorded is not None:
                env.last_used_at, env.hook_calls = recorded
            adopted.append(env)
        # Least recently used first: the pool keeps their recency in that order.
        adopted.sort(key=lambda env: env.last_used_at)
        for env in adopted:
            self.pool.add_idle(
                env.principal, env.key, env, idle_for=max(0.0, now - env.last_used_at)
            )
        with self._lock:
            self._unchecked.extend(adopted)
            self._measure.update(env.principal for env in adopted)
        kept = len(adopted)
        if kept:
            self.metrics.store_adoptions.labels(when="restart").inc(kept)
        log.info("store_adopted", kept=kept, removed=removed, root=str(self.store.root))
        return kept, removed

    def session_ended(self, party: str, used: list[Environment]) -> tuple[int, int, int]:
        """Check the idle instances a session used: (stored, deleted, still leased)."""
        stored = deleted = pending = 0
        leased_by = {id(e.instance): e.party for e in self.pool.snapshot()}
        for env in used:
            lease = self.pool.try_lease(env, party=CHECK_PARTY)
            if lease is None:
                pending += leased_by.get(id(env)) == party
                continue
            valid = self.validate(env, "session_end")
            lease.release(discard=not valid, used=False)
            stored += valid
            deleted += not valid
        self.store.flush()
        return stored, deleted, pending

    # ------------------------------------------------------------- bounds --

    def usage(self, principal: str | None = None) -> tuple[int, int]:
        """(bytes on disk, instances) of one principal's store, or of all."""
        entries = [e for e in self.pool.snapshot() if principal in (None, e.owner)]
        with self._lock:
            caches = sum(v for k, v in self._cache_bytes.items() if principal in (None, k))
        return sum(e.instance.size_bytes for e in entries) + caches, len(entries)

    def changed(self, env: Environment) -> None:
        """An instance was made or grew: measure again, and keep the bounds."""
        with self._lock:
            self._measure.add(env.principal)
        self._wake.set()

    def enforce(self) -> None:
        """Evict idle instances past the TTL, then least recently used ones past the size."""
        for env in self.pool.evict_idle(older_than=self.ttl):
            self._evicted(env, "ttl")
        self._measure_caches()
        total, _ = self.usage()
        if total <= self.max_bytes:
            return
        for entry in self.pool.snapshot():  # least recently used first
            if total <= self.max_bytes:
                break
            if entry.state == "idle" and self.pool.discard_idle(entry.instance):
                total -= entry.instance.size_bytes
                self._evicted(entry.instance, "size")
        with self._lock:
            caches = sum(self._cache_bytes.values())
            # Still over: leased instances (evicted once released, see released()),
            # or the installer caches, cleared when the instances alone fit.
            self._over = total > self.max_bytes
            if self._over and total - caches <= self.max_bytes:
                self._suspect.update(self._cache_bytes)

    def released(self) -> None:
        """An instance went back idle: if the store is over its size, evict now."""
        if self._over:
            self._wake.set()

    def prune(self, principal: str | None, older_than: float | None) -> tuple[int, int, int]:
        """Remove idle instances (of one principal, or all): (removed, bytes freed, kept)."""
        removed = self.pool.evict_idle(older_than=older_than, owner=principal)
        for env in removed:
            self._evicted(env, "prune")
        self.store.flush()
        kept = sum(1 for e in self.pool.snapshot() if principal in (None, e.owner))
        return len(removed), sum(env.size_bytes for env in removed), kept

    def keys(self, principal: str | None) -> list[StoreKey]:
        """The store, per principal and key folder, for status."""
        found: dict[tuple[str, str], StoreKey] = {}
        for entry in self.pool.snapshot():
            env = entry.instance
            if not env.in_store or principal not in (None, env.principal):
                continue
            row = found.setdefault(
                (env.principal, env.key_dir), StoreKey(env.principal, env.key_dir)
            )
            row.environments.append((env, entry.state, entry.party))
        for row in found.values():
            row.environments.sort(key=lambda item: item[0].slot)
        return [found[k] for k in sorted(found)]

    # --------------------------------------------------------- the thread --

    def start(self, interval: float = 30.0) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="buildd-storekeeper", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30.0)
        self.store.flush()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self._check_adopted()
                self.enforce()
                self._clear_suspect_caches()
                self.store.flush()
            except Exception:
                log.exception("store_upkeep_failed")
            self._wake.wait(interval)
            self._wake.clear()

    def _check_adopted(self) -> None:
        with self._lock:
            unchecked, self._unchecked = self._unchecked, []
        for env in unchecked:
            if self._stop.is_set():
                return
            lease = self.pool.try_lease(env, party=CHECK_PARTY)
            if lease is None:
                continue  # leased meanwhile: its borrow validated it
            valid = self.validate(env, "adoption")
            if valid:
                # The marker's size was taken before the bytecode; and a
                # compile stopped with the last daemon goes on where it was.
                env.size_bytes = manifest.survey(str(env.path)).size_bytes
                self.factory.compile(env)
            lease.release(discard=not valid, used=False)

    def _measure_caches(self) -> None:
        with self._lock:
            principals, self._measure = self._measure, set()
        for principal in principals:
            size = manifest.own_bytes(str(self.store.cache_dir(principal)))
            with self._lock:
                self._cache_bytes[principal] = size

    def _clear_suspect_caches(self) -> None:
        with self._lock:
            suspect, self._suspect = self._suspect, set()
        for principal in suspect:
            if self.store.clear_cache(principal):
                with self._lock:
                    self._cache_bytes[principal] = 0
                log.info("installer_cache_cleared", principal=principal)
            else:
                with self._lock:
                    self._suspect.add(principal)  # in use: next round

    def _evicted(self, env: Environment, reason: str) -> None:
        self.metrics.store_evictions.labels(reason=reason).inc()
        log.info(
            "environment_evicted",
            env=env.id,
            path=str(env.path),
            reason=reason,
            size_bytes=env.size_bytes,
        )
