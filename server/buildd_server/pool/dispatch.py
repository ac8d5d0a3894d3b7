"""The pool's state, its one decision (who gets what), and the calls that never wait.

``Dispatcher`` holds everything the pool knows (entries, waiters, creations
and destructions in flight) and ``_dispatch``, which hands out idle instances
and creation slots under the lock, in arrival order; plus what the store does
to idle instances without queueing (a check's lease, adoption, eviction).
pool.py adds the calls that wait: acquiring, validating, creating.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog

from .leases import Entry, Lease, Slot, Waiter

if TYPE_CHECKING:
    from collections.abc import Callable

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def _decrement(counter: Counter[Slot[K]], slot: Slot[K]) -> None:
    # Drop zero counts: slots of ended owners must not accumulate.
    counter[slot] -= 1
    if counter[slot] <= 0:
        del counter[slot]


class Dispatcher(Generic[K, T]):
    """State of a pool, guarded by ``_cond``. The public calls take the lock;
    the internal ones run with it held, except ``_destroy_*`` (never under it)."""

    _log = structlog.get_logger("buildd.pool")

    def __init__(
        self,
        *,
        max_per_key: int,
        max_total: int,
        destroy: Callable[[T], None],
        clock: Callable[[], float],
    ) -> None:
        if max_per_key < 1 or max_total < 1:
            raise ValueError(f"pool caps must be >= 1, got {max_per_key=} {max_total=}")
        self._max_per_key = max_per_key
        self._max_total = max_total
        self._destroy = destroy
        self._clock = clock
        # A plain Lock, not an RLock: re-entering by mistake deadlocks in tests
        # at once instead of silently holding the lock across a callback.
        self._cond = threading.Condition(threading.Lock())
        # Keyed by id(): instances need not be hashable; the entry keeps them alive.
        self._entries: dict[int, Entry[K, T]] = {}
        self._creating: set[Slot[K]] = set()
        # Who asked for each creation in flight (for status).
        self._creators: dict[Slot[K], str] = {}
        # Instances being destroyed count against their slot and the total...
        self._destroying: Counter[Slot[K]] = Counter()
        # ...except evicted ones, whose share of the total went to a creation.
        self._evicting: Counter[Slot[K]] = Counter()
        self._waiters: list[Waiter[K, T]] = []
        # Remembered so a request racing with the end of its session cannot
        # create an instance nobody would ever destroy. Ids are small.
        self._dropped: set[str] = set()
        self._ended: set[str] = set()
        self._seq = itertools.count()
        self._use = itertools.count()
        # Recency of instances added idle (adopted at start): before any use.
        self._added = itertools.count(-(1 << 62))

    # ------------------------------------------- calls that never wait --

    def try_lease(self, instance: T, *, party: str = "") -> Lease[T] | None:
        """Lease ``instance`` now if it is idle and nobody waits for it; no validation.

        For checks and maintenance (a session's end, the store's adoption
        check): never waits, and returns None rather than take it from anybody.
        """
        with self._cond:
            entry = self._entries.get(id(instance))
            if (
                entry is None
                or entry.instance is not instance
                or entry.leased
                or id(entry) in self._reserved()
                or entry.owner in self._dropped
            ):
                return None
            entry.leased = True
            entry.party = party
            return Lease(self, entry)

    def add_idle(self, owner: str, key: K, instance: T, *, idle_for: float = 0.0) -> None:
        """Put an existing instance (found on disk at start) into the pool, idle.

        ``idle_for`` is how long it has been unused, for age-based eviction.
        Add them least recently used first: in recency order they come in the
        order added, and before every instance used since the pool began.
        """
        with self._cond:
            if id(instance) in self._entries:
                raise ValueError(f"{instance!r} is already in the pool")
            order = next(self._added)
            entry = Entry(owner, key, instance, False, self._clock() - idle_for, order)
            self._entries[id(instance)] = entry
            self._changed()

    def evict_idle(self, older_than: float | None = None, *, owner: str | None = None) -> list[T]:
        """Destroy idle instances unused for ``older_than`` seconds (all if None).

        Only ``owner``'s when given; instances somebody waits for stay.
        Returns the instances destroyed.
        """
        with self._cond:
            now = self._clock()
            reserved = self._reserved()
            victims = [
                e
                for e in self._entries.values()
                if not e.leased
                and id(e) not in reserved
                and (owner is None or e.owner == owner)
                and (older_than is None or now - e.last_used >= older_than)
            ]
            for entry in victims:
                self._remove(entry)
        for entry in victims:
            self._destroy_counted((entry.owner, entry.key), entry.instance)
        return [entry.instance for entry in victims]

    def discard_idle(self, instance: T) -> bool:
        """Destroy ``instance`` if it is idle and nobody waits for it (eviction)."""
        with self._cond:
            entry = self._entries.get(id(instance))
            if (
                entry is None
                or entry.instance is not instance
                or entry.leased
                or id(entry) in self._reserved()
            ):
                return False
            self._remove(entry)
        self._destroy_counted((entry.owner, entry.key), entry.instance)
        return True

    # ------------------------------------------------------- internals --

    def _closed(self, waiter: Waiter[K, T]) -> bool:
        return waiter.owner in self._dropped or waiter.party in self._ended

    def _dispatch(self) -> None:
        """Hand out what is available, oldest waiter first."""
        if not self._waiters:
            return
        reserved = self._reserved()
        # Pass 1: existing idle instances, before anything is evicted for a creation.
        for waiter in list(self._waiters):
            if self._closed(waiter):
                continue
            if waiter.target is not None:
                # The first waiter for a target in queue order gets it; it is then leased.
                if not waiter.target.gone and not waiter.target.leased:
                    self._grant(waiter, waiter.target)
                continue
            preferred = waiter.prefer
            if (
                preferred is not None
                and not preferred.gone
                and not preferred.leased
                and id(preferred) not in reserved
            ):
                self._grant(waiter, preferred)
                continue
            idle = [
                e
                for e in self._entries.values()
                if not e.leased
                and e.owner == waiter.owner
                and e.key == waiter.key
                and id(e) not in reserved
            ]
            if idle:
                self._grant(waiter, max(idle, key=lambda e: e.order))
        # Pass 2: creation slots.
        for waiter in list(self._waiters):
            if waiter.target is not None or self._closed(waiter):
                continue
            slot = (waiter.owner, waiter.key)
            if slot in self._creating:
                continue
            in_slot = sum(1 for e in self._entries.values() if (e.owner, e.key) == slot)
            in_slot += self._destroying[slot] + self._evicting[slot]
            if in_slot >= self._max_per_key:
                continue
            if self._total() >= self._max_total:
                idle = [e for e in self._entries.values() if not e.leased and id(e) not in reserved]
                if not idle:
                    continue
                victim = min(idle, key=lambda e: e.order)
                del self._entries[id(victim.instance)]
                victim.gone = True
                victim_slot = (victim.owner, victim.key)
                self._evicting[victim_slot] += 1
                waiter.evicted.append((victim_slot, victim.instance))
            self._creating.add(slot)
            self._creators[slot] = waiter.party
            waiter.may_create = True
            self._waiters.remove(waiter)

    def _abandon(self, waiter: Waiter[K, T]) -> list[tuple[Slot[K], T]]:
        """Undo whatever ``waiter`` holds; returns instances to destroy (counted)."""
        doomed: list[tuple[Slot[K], T]] = []
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.may_create:
            waiter.may_create = False
            self._creating.discard((waiter.owner, waiter.key))
            self._creators.pop((waiter.owner, waiter.key), None)
            # No creation takes the evicted instance's share of the total now.
            for slot, _ in waiter.evicted:
                _decrement(self._evicting, slot)
                self._destroying[slot] += 1
            doomed.extend(waiter.evicted)
            waiter.evicted.clear()
        entry, waiter.granted = waiter.granted, None
        if entry is not None:
            if entry.owner in self._dropped:
                self._remove(entry)
                doomed.append(((entry.owner, entry.key), entry.instance))
            else:
                entry.leased = False
                entry.party = None
        self._changed()
        return doomed

    def _release(self, entry: Entry[K, T], discard: bool, used: bool = True) -> None:
        with self._cond:
            destroy = discard or entry.owner in self._dropped
            if destroy:
                self._remove(entry)
            else:
                entry.leased = False
                entry.party = None
                if used:
                    entry.last_used = self._clock()
                    entry.order = next(self._use)
            self._changed()
        if destroy:
            self._destroy_counted((entry.owner, entry.key), entry.instance)

    def _rekey(self, entry: Entry[K, T], new_key: K) -> None:
        with self._cond:
            entry.key = new_key
            # The old (owner, key) has a free slot now.
            self._changed()

    def _changed(self) -> None:
        """After any change: hand things out and wake waiters to look."""
        self._dispatch()
        self._cond.notify_all()

    def _grant(self, waiter: Waiter[K, T], entry: Entry[K, T]) -> None:
        entry.leased = True
        entry.party = waiter.party
        waiter.granted = entry
        self._waiters.remove(waiter)

    def _reserved(self) -> set[int]:
        return {id(w.target) for w in self._waiters if w.target is not None}

    def _total(self) -> int:
        return len(self._entries) + len(self._creating) + self._destroying.total()

    def _remove(self, entry: Entry[K, T]) -> None:
        """Take ``entry`` out; it counts against the total until destroyed."""
        del self._entries[id(entry.instance)]
        entry.gone = True
        self._destroying[entry.owner, entry.key] += 1

    def _destroy_counted(self, slot: Slot[K], instance: T) -> None:
        """Destroy (lock not held), then stop counting it against its slot."""
        try:
            self._destroy_quietly(instance)
        finally:
            with self._cond:
                _decrement(self._destroying, slot)
                self._changed()

    def _destroy_quietly(self, instance: T) -> None:
        # A failed destroy must not fail the request that triggered it; the
        # daemon reclaims leftovers at start (rule 7).
        try:
            self._destroy(instance)
        except Exception:
            self._log.exception("destroy_failed", instance=repr(instance))
