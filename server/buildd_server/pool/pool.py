"""Keyed pools of exclusively leased instances (build environments), per owner.

An *owner* holds instances (a principal's store, or a session's environments
with ``--no-store``); a *key* says which instances are interchangeable; a
*party* is who asks (a session): when a party ends its waiters give up, while
its owner's instances stay. The pool knows nothing about environments: it
creates, validates and destroys them only through callbacks, which always run
*without* the pool's lock held, so a slow virtualenv creation never blocks other
keys and a callback may call back into the pool (the seed PR deadlocked exactly
there).

Every decision about who gets what is taken in one place, ``_dispatch``
(dispatch.py), under one lock, in arrival order; waiters then do the slow part
(validate, create, destroy) on their own thread. That keeps the rules easy to
check:

- a lease is exclusive (rule 1);
- idle instances are handed out most recently used first, to keep them warm,
  except that a caller may name one it prefers (the instance its source used
  last, in an earlier session), taken when idle and never waited for;
- at most one creation per (owner, key) is in flight; others wait for it;
- ``max_per_key`` bounds each (owner, key) and ``max_total`` bounds everything;
  an instance counts from the moment its creation is granted until its
  ``destroy`` returns, so the bounds hold on disk at every moment; when the
  total is full the least recently used idle instance of any owner is evicted
  to make room (the creator destroys it before creating);
- waiters are served first come, first served; one waiting for a specific
  instance (source affinity, rule 2) is served before any generic waiter, which
  therefore never takes an instance somebody is waiting for.
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING, Generic

from .dispatch import Dispatcher, K, T, _decrement
from .leases import (
    Entry,
    InstanceGone,
    Lease,
    OwnerGone,
    PoolCancelled,
    PoolEntry,
    PoolError,
    PoolTimeout,
    Slot,
    Waiter,
)

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

__all__ = [
    "InstanceGone",
    "Lease",
    "OwnerGone",
    "Pool",
    "PoolCancelled",
    "PoolEntry",
    "PoolError",
    "PoolTimeout",
]

# Waiters poll cancel events and the (possibly fake) clock at least this often.
_SLICE = 0.05


class Pool(Dispatcher[K, T], Generic[K, T]):
    """Instances of type ``T`` grouped by (owner, key); see the module docstring."""

    def __init__(
        self,
        *,
        max_per_key: int,
        max_total: int,
        destroy: Callable[[T], None],
        validate: Callable[[T], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_per_key=max_per_key, max_total=max_total, destroy=destroy, clock=clock)
        self._validate = validate

    # ------------------------------------------------------------ public API --

    def acquire(
        self,
        owner: str,
        key: K,
        create: Callable[[], T],
        *,
        deadline: float | None,
        party: str | None = None,
        prefer: T | None = None,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Lease[T]:
        """Lease an instance of (owner, key): idle, newly created, or waited for.

        ``party`` (default: the owner) is who asks; ``prefer`` an instance of
        the owner to take, whatever its key, when it is idle. ``deadline`` is
        absolute, in ``clock`` time. ``create`` runs on this thread and its
        exception reaches this caller only; waiters behind it get their turn.
        ``on_wait`` is called at most once, outside the lock, when the caller
        starts waiting (to tell the client why it is slow).
        """
        party = owner if party is None else party
        with self._cond:
            self._check_open(owner, party)
            preferred = self._entries.get(id(prefer)) if prefer is not None else None
            if preferred is not None and (
                preferred.instance is not prefer or preferred.owner != owner
            ):
                preferred = None
            waiter: Waiter[K, T] = Waiter(next(self._seq), owner, party, key, None, preferred)
            self._waiters.append(waiter)
            self._dispatch()
        while True:
            self._await(waiter, deadline, cancel, on_wait)
            if waiter.may_create:
                return self._create_for(waiter, create)
            lease = self._borrow(waiter)
            if lease is not None:
                return lease

    def acquire_instance(
        self,
        owner: str,
        instance: T,
        *,
        deadline: float | None,
        party: str | None = None,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Lease[T]:
        """Lease exactly ``instance``, waiting for it even if siblings are idle.

        Source affinity (rule 2) keeps metadata and wheel in one environment;
        while anybody waits here, ``acquire`` will not hand this instance out.
        """
        party = owner if party is None else party
        with self._cond:
            self._check_open(owner, party)
            entry = self._entries.get(id(instance))
            if entry is None or entry.instance is not instance:
                raise InstanceGone(f"instance {instance!r} is no longer in the pool")
            if entry.owner != owner:
                raise InstanceGone(f"instance {instance!r} does not belong to owner {owner!r}")
            waiter: Waiter[K, T] = Waiter(next(self._seq), owner, party, entry.key, entry)
            self._waiters.append(waiter)
            self._dispatch()
        self._await(waiter, deadline, cancel, on_wait)
        lease = self._borrow(waiter)
        # _borrow re-queues only generic waiters; ours raised InstanceGone instead.
        assert lease is not None
        return lease

    def drop_owner(self, owner: str) -> tuple[int, int]:
        """End an owner: returns (destroyed now, destroyed later on release).

        Idle instances are destroyed before this returns; leased ones and
        creations in flight are destroyed when their holder is done. Waiters of
        the owner get ``OwnerGone``, and so do later acquires.
        """
        with self._cond:
            self._dropped.add(owner)
            idle = [e for e in self._entries.values() if e.owner == owner and not e.leased]
            for entry in idle:
                self._remove(entry)
            pending = sum(1 for e in self._entries.values() if e.owner == owner)
            pending += sum(1 for o, _ in self._creating if o == owner)
            self._cond.notify_all()
        for entry in idle:
            self._destroy_counted((entry.owner, entry.key), entry.instance)
        return len(idle), pending

    def end_party(self, party: str) -> None:
        """A party (session) ended: its waiters and later acquires get ``OwnerGone``.

        The owner's instances stay: an instance the party holds returns to the
        owner at release, and a creation it has in flight ends up idle.
        """
        with self._cond:
            self._ended.add(party)
            self._cond.notify_all()

    def snapshot(self) -> list[PoolEntry[K, T]]:
        """Every instance (not creations in flight), least recently used first."""
        with self._cond:
            entries = sorted(self._entries.values(), key=lambda e: e.order)
            return [
                PoolEntry(
                    e.owner,
                    e.key,
                    e.instance,
                    "leased" if e.leased else "idle",
                    e.last_used,
                    e.party if e.leased else None,
                )
                for e in entries
            ]

    def creating(self) -> list[Slot[K]]:
        """The (owner, key) pairs with a creation in flight, for status."""
        with self._cond:
            return list(self._creating)

    def creations(self) -> list[tuple[str, K, str]]:
        """(owner, key, party asking) of every creation in flight, for status."""
        with self._cond:
            return [
                (owner, key, self._creators.get((owner, key), "")) for owner, key in self._creating
            ]

    def total(self) -> int:
        """What counts against ``max_total``: instances, creations, destructions."""
        with self._cond:
            return self._total()

    # ------------------------------------------------------------- internals --

    def _check_open(self, owner: str, party: str) -> None:
        if owner in self._dropped:
            raise OwnerGone(f"owner {owner!r} has been dropped")
        if party in self._ended:
            raise OwnerGone(f"party {party!r} has ended")

    def _await(
        self,
        waiter: Waiter[K, T],
        deadline: float | None,
        cancel: threading.Event | None,
        on_wait: Callable[[], None] | None,
    ) -> None:
        """Block until ``waiter`` holds a grant, or raise (and give up its place)."""
        doomed: list[tuple[Slot[K], T]] = []
        try:
            with self._cond:
                try:
                    while waiter.granted is None and not waiter.may_create:
                        error = self._failure(waiter, deadline, cancel)
                        if error is not None:
                            raise error
                        if on_wait is not None and not waiter.announced:
                            waiter.announced = True
                            self._cond.release()
                            try:
                                on_wait()
                            finally:
                                self._cond.acquire()
                            continue
                        timeout = _SLICE
                        if deadline is not None:
                            timeout = min(_SLICE, max(0.0, deadline - self._clock()))
                        self._cond.wait(timeout)
                    # A grant made just before the owner was dropped is void.
                    if self._closed(waiter):
                        raise OwnerGone(f"owner {waiter.owner!r} was dropped while waiting")
                except BaseException:
                    doomed = self._abandon(waiter)
                    raise
        finally:
            for slot, instance in doomed:
                self._destroy_counted(slot, instance)

    def _failure(
        self, waiter: Waiter[K, T], deadline: float | None, cancel: threading.Event | None
    ) -> PoolError | None:
        target = waiter.target
        what = f"instance {target.instance!r}" if target is not None else f"key {waiter.key!r}"
        if self._closed(waiter):
            return OwnerGone(f"owner {waiter.owner!r} was dropped while waiting for {what}")
        if waiter.target is not None and waiter.target.gone:
            return InstanceGone(f"{what} was discarded while waiting for it")
        if cancel is not None and cancel.is_set():
            return PoolCancelled(f"cancelled while waiting for {what}")
        if deadline is not None and self._clock() >= deadline:
            return PoolTimeout(f"deadline passed while waiting for {what}")
        return None

    def _create_for(self, waiter: Waiter[K, T], create: Callable[[], T]) -> Lease[T]:
        slot = (waiter.owner, waiter.key)
        try:
            # The evicted instance's share of the total is ours already;
            # destroying it first keeps the disk within max_total.
            while waiter.evicted:
                victim_slot, victim = waiter.evicted.pop()
                try:
                    self._destroy_quietly(victim)
                finally:
                    with self._cond:
                        _decrement(self._evicting, victim_slot)
                        self._changed()
            instance = create()
        except BaseException:
            with self._cond:
                self._creating.discard(slot)
                self._creators.pop(slot, None)
                self._changed()
            raise
        with self._cond:
            self._creating.discard(slot)
            self._creators.pop(slot, None)
            dropped = waiter.owner in self._dropped
            ended = waiter.party in self._ended
            duplicate = id(instance) in self._entries
            if dropped:
                self._destroying[slot] += 1
            elif not duplicate:
                # A party that ended meanwhile leaves the new instance to its owner, idle.
                entry = Entry(*slot, instance, not ended, self._clock(), next(self._use))
                entry.party = None if ended else waiter.party
                self._entries[id(instance)] = entry
            self._changed()
        if dropped:
            self._destroy_counted(slot, instance)
            raise OwnerGone(f"owner {waiter.owner!r} was dropped while creating {instance!r}")
        if duplicate:
            # Leasing it twice would break rule 1; the callback is at fault.
            raise ValueError(f"create returned {instance!r}, which is already in the pool")
        if ended:
            raise OwnerGone(f"party {waiter.party!r} ended while creating {instance!r}")
        return Lease(self, entry)

    def _borrow(self, waiter: Waiter[K, T]) -> Lease[T] | None:
        """Validate the granted instance; None means try again (it was invalid)."""
        entry = waiter.granted
        assert entry is not None
        valid = self._validate_quietly(entry.instance)
        error: PoolError | None = None
        with self._cond:
            waiter.granted = None
            dropped = entry.owner in self._dropped
            ended = waiter.party in self._ended
            if valid and not dropped and not ended:
                entry.party = waiter.party
                return Lease(self, entry)
            if valid and not dropped:
                entry.leased = False  # back to its owner: only the party is gone
                error = OwnerGone(f"party {waiter.party!r} ended while validating")
            else:
                self._remove(entry)
                if dropped or ended:
                    error = OwnerGone(f"owner {entry.owner!r} was dropped while validating")
                elif waiter.target is not None:
                    error = InstanceGone(f"instance {entry.instance!r} failed validation")
                else:
                    # Keep the original place in the queue: the invalid instance
                    # was not the waiter's fault.
                    bisect.insort(self._waiters, waiter, key=lambda w: w.seq)
            self._changed()
        if not valid or dropped:
            self._destroy_counted((entry.owner, entry.key), entry.instance)
        if error is not None:
            raise error
        return None

    def _validate_quietly(self, instance: T) -> bool:
        # A validator that crashes says the state is unknown: discard (rule 5).
        try:
            return bool(self._validate(instance))
        except Exception:
            self._log.exception("validate_failed", instance=repr(instance))
            return False
