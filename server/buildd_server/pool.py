"""Keyed pools of exclusively leased instances (build environments), per owner.

An owner is a session; a key says which instances are interchangeable. The pool
knows nothing about environments: it creates, validates and destroys them only
through callbacks, which always run *without* the pool's lock held, so a slow
virtualenv creation never blocks other keys and a callback may call back into
the pool (the seed PR deadlocked exactly there).

Every decision about who gets what is taken in one place, ``_dispatch``, under
one lock, in arrival order; waiters then do the slow part (validate, create,
destroy) on their own thread. That keeps the rules easy to check:

- a lease is exclusive (rule 1);
- idle instances are handed out most recently used first, to keep them warm;
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
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import structlog

if TYPE_CHECKING:
    from types import TracebackType

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
# (owner, key): the unit of max_per_key and of single-flight creation.
Slot = tuple[str, K]

_log = structlog.get_logger("buildd.pool")

# Waiters poll cancel events and the (possibly fake) clock at least this often.
_SLICE = 0.05


def _decrement(counter: Counter[Slot[K]], slot: Slot[K]) -> None:
    # Drop zero counts: slots of ended owners must not accumulate.
    counter[slot] -= 1
    if counter[slot] <= 0:
        del counter[slot]


class PoolError(Exception):
    """Base of the pool's own failures; the service maps each to a typed error."""


class PoolTimeout(PoolError):
    """The deadline passed before an instance became available."""


class PoolCancelled(PoolError):
    """The caller's cancel event was set while it waited."""


class OwnerGone(PoolError):
    """The owner was dropped (its session ended) before or while it waited."""


class InstanceGone(PoolError):
    """The awaited instance was discarded, failed validation or is not the owner's."""


@dataclass(frozen=True)
class PoolEntry(Generic[K, T]):
    """One instance as seen by status reports; a copy, safe to keep."""

    owner: str
    key: K
    instance: T
    state: Literal["idle", "leased"]
    last_used: float


@dataclass(eq=False)
class _Entry(Generic[K, T]):
    owner: str
    key: K
    instance: T
    leased: bool
    last_used: float
    # Recency order: clock values tie (coarse or fake clocks), a counter does not.
    order: int
    gone: bool = False


@dataclass(eq=False)
class _Waiter(Generic[K, T]):
    seq: int
    owner: str
    key: K
    # Set for acquire_instance: only this entry will do.
    target: _Entry[K, T] | None
    granted: _Entry[K, T] | None = None
    may_create: bool = False
    # An idle instance evicted to make room; the creator destroys it before creating.
    evicted: list[tuple[Slot[K], T]] = field(default_factory=list)
    announced: bool = False


class Lease(Generic[T]):
    """Exclusive use of one instance until ``release``; use it as a context manager.

    Leaving the ``with`` block by an exception discards the instance: its state
    is unknown and it must never be leased again (rule 5). Generic in the
    instance only, so holders need not spell out the pool's key type.
    """

    def __init__(self, pool: Pool[Any, T], entry: _Entry[Any, T]) -> None:
        self._pool = pool
        self._entry = entry
        self._released = False

    @property
    def instance(self) -> T:
        return self._entry.instance

    @property
    def key(self) -> Hashable:
        """The key the instance carries now (changes with ``rekey``)."""
        key: Hashable = self._entry.key
        return key

    @property
    def owner(self) -> str:
        return self._entry.owner

    def release(self, discard: bool = False) -> None:
        """Give the instance back, or destroy it when ``discard``; idempotent."""
        if self._released:
            return
        self._released = True
        self._pool._release(self._entry, discard)

    def rekey(self, new_key: Hashable) -> None:
        """Move the instance to ``new_key``'s pool (dynamic requirements, rule 3).

        Never blocks: the instance already exists, so it may leave the new pool
        above ``max_per_key`` until instances go away; only creation is capped.
        """
        if self._released:
            raise RuntimeError("rekey of a released lease")
        self._pool._rekey(self._entry, new_key)

    def __enter__(self) -> Lease[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release(discard=exc_type is not None)


class Pool(Generic[K, T]):
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
        if max_per_key < 1 or max_total < 1:
            raise ValueError(f"pool caps must be >= 1, got {max_per_key=} {max_total=}")
        self._max_per_key = max_per_key
        self._max_total = max_total
        self._destroy = destroy
        self._validate = validate
        self._clock = clock
        # A plain Lock, not an RLock: re-entering by mistake deadlocks in tests
        # at once instead of silently holding the lock across a callback.
        self._cond = threading.Condition(threading.Lock())
        # Keyed by id(): instances need not be hashable; the entry keeps them alive.
        self._entries: dict[int, _Entry[K, T]] = {}
        self._creating: set[Slot[K]] = set()
        # Instances being destroyed count against their slot and the total...
        self._destroying: Counter[Slot[K]] = Counter()
        # ...except evicted ones, whose share of the total went to a creation.
        self._evicting: Counter[Slot[K]] = Counter()
        self._waiters: list[_Waiter[K, T]] = []
        # Remembered so a request racing with the end of its session cannot
        # create an instance nobody would ever destroy. Session ids are small.
        self._dropped: set[str] = set()
        self._seq = itertools.count()
        self._use = itertools.count()

    # ------------------------------------------------------------ public API --

    def acquire(
        self,
        owner: str,
        key: K,
        create: Callable[[], T],
        *,
        deadline: float | None,
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Lease[T]:
        """Lease an instance of (owner, key): idle, newly created, or waited for.

        ``deadline`` is absolute, in ``clock`` time. ``create`` runs on this
        thread and its exception reaches this caller only; waiters behind it
        get their turn. ``on_wait`` is called at most once, outside the lock,
        when the caller starts waiting (to tell the client why it is slow).
        """
        with self._cond:
            if owner in self._dropped:
                raise OwnerGone(f"owner {owner!r} has been dropped")
            waiter: _Waiter[K, T] = _Waiter(next(self._seq), owner, key, None)
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
        cancel: threading.Event | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Lease[T]:
        """Lease exactly ``instance``, waiting for it even if siblings are idle.

        Source affinity (rule 2) keeps metadata and wheel in one environment;
        while anybody waits here, ``acquire`` will not hand this instance out.
        """
        with self._cond:
            if owner in self._dropped:
                raise OwnerGone(f"owner {owner!r} has been dropped")
            entry = self._entries.get(id(instance))
            if entry is None or entry.instance is not instance:
                raise InstanceGone(f"instance {instance!r} is no longer in the pool")
            if entry.owner != owner:
                raise InstanceGone(f"instance {instance!r} does not belong to owner {owner!r}")
            waiter: _Waiter[K, T] = _Waiter(next(self._seq), owner, entry.key, entry)
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

    def evict_idle(self, older_than: float | None = None) -> int:
        """Destroy idle instances unused for ``older_than`` seconds (all if None).

        For disk pressure or an idle policy; instances somebody waits for stay.
        """
        with self._cond:
            now = self._clock()
            reserved = self._reserved()
            victims = [
                e
                for e in self._entries.values()
                if not e.leased
                and id(e) not in reserved
                and (older_than is None or now - e.last_used >= older_than)
            ]
            for entry in victims:
                self._remove(entry)
        for entry in victims:
            self._destroy_counted((entry.owner, entry.key), entry.instance)
        return len(victims)

    def snapshot(self) -> list[PoolEntry[K, T]]:
        """Every instance (not creations in flight) with its state, for status."""
        with self._cond:
            return [
                PoolEntry(e.owner, e.key, e.instance, "leased" if e.leased else "idle", e.last_used)
                for e in self._entries.values()
            ]

    def creating(self) -> list[Slot[K]]:
        """The (owner, key) pairs with a creation in flight, for status."""
        with self._cond:
            return list(self._creating)

    def total(self) -> int:
        """What counts against ``max_total``: instances, creations, destructions."""
        with self._cond:
            return self._total()

    # ------------------------------------------------------------- internals --

    def _await(
        self,
        waiter: _Waiter[K, T],
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
                    if waiter.owner in self._dropped:
                        raise OwnerGone(f"owner {waiter.owner!r} was dropped while waiting")
                except BaseException:
                    doomed = self._abandon(waiter)
                    raise
        finally:
            for slot, instance in doomed:
                self._destroy_counted(slot, instance)

    def _failure(
        self, waiter: _Waiter[K, T], deadline: float | None, cancel: threading.Event | None
    ) -> PoolError | None:
        target = waiter.target
        what = f"instance {target.instance!r}" if target is not None else f"key {waiter.key!r}"
        if waiter.owner in self._dropped:
            return OwnerGone(f"owner {waiter.owner!r} was dropped while waiting for {what}")
        if waiter.target is not None and waiter.target.gone:
            return InstanceGone(f"{what} was discarded while waiting for it")
        if cancel is not None and cancel.is_set():
            return PoolCancelled(f"cancelled while waiting for {what}")
        if deadline is not None and self._clock() >= deadline:
            return PoolTimeout(f"deadline passed while waiting for {what}")
        return None

    def _abandon(self, waiter: _Waiter[K, T]) -> list[tuple[Slot[K], T]]:
        """Undo whatever ``waiter`` holds; returns instances to destroy (counted)."""
        doomed: list[tuple[Slot[K], T]] = []
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.may_create:
            waiter.may_create = False
            self._creating.discard((waiter.owner, waiter.key))
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
        self._changed()
        return doomed

    def _create_for(self, waiter: _Waiter[K, T], create: Callable[[], T]) -> Lease[T]:
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
                self._changed()
            raise
        with self._cond:
            self._creating.discard(slot)
            dropped = waiter.owner in self._dropped
            duplicate = id(instance) in self._entries
            if dropped:
                self._destroying[slot] += 1
            elif not duplicate:
                entry = _Entry(*slot, instance, True, self._clock(), next(self._use))
                self._entries[id(instance)] = entry
            self._changed()
        if dropped:
            self._destroy_counted(slot, instance)
            raise OwnerGone(f"owner {waiter.owner!r} was dropped while creating {instance!r}")
        if duplicate:
            # Leasing it twice would break rule 1; the callback is at fault.
            raise ValueError(f"create returned {instance!r}, which is already in the pool")
        return Lease(self, entry)

    def _borrow(self, waiter: _Waiter[K, T]) -> Lease[T] | None:
        """Validate the granted instance; None means try again (it was invalid)."""
        entry = waiter.granted
        assert entry is not None
        valid = self._validate_quietly(entry.instance)
        error: PoolError | None = None
        with self._cond:
            waiter.granted = None
            dropped = entry.owner in self._dropped
            if valid and not dropped:
                return Lease(self, entry)
            self._remove(entry)
            if dropped:
                error = OwnerGone(f"owner {entry.owner!r} was dropped while validating")
            elif waiter.target is not None:
                error = InstanceGone(f"instance {entry.instance!r} failed validation")
            else:
                # Keep the original place in the queue: the invalid instance was
                # not the waiter's fault.
                bisect.insort(self._waiters, waiter, key=lambda w: w.seq)
            self._changed()
        self._destroy_counted((entry.owner, entry.key), entry.instance)
        if error is not None:
            raise error
        return None

    def _release(self, entry: _Entry[K, T], discard: bool) -> None:
        with self._cond:
            destroy = discard or entry.owner in self._dropped
            if destroy:
                self._remove(entry)
            else:
                entry.leased = False
                entry.last_used = self._clock()
                entry.order = next(self._use)
            self._changed()
        if destroy:
            self._destroy_counted((entry.owner, entry.key), entry.instance)

    def _rekey(self, entry: _Entry[K, T], new_key: K) -> None:
        with self._cond:
            entry.key = new_key
            # The old (owner, key) has a free slot now.
            self._changed()

    def _dispatch(self) -> None:
        """Hand out what is available, oldest waiter first. Lock held."""
        if not self._waiters:
            return
        reserved = self._reserved()
        # Pass 1: existing idle instances, before anything is evicted for a creation.
        for waiter in list(self._waiters):
            if waiter.owner in self._dropped:
                continue
            if waiter.target is not None:
                # The first waiter for a target in queue order gets it; it is then leased.
                if not waiter.target.gone and not waiter.target.leased:
                    self._grant(waiter, waiter.target)
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
            if waiter.target is not None or waiter.owner in self._dropped:
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
            waiter.may_create = True
            self._waiters.remove(waiter)

    def _changed(self) -> None:
        """After any change: hand things out and wake waiters to look. Lock held."""
        self._dispatch()
        self._cond.notify_all()

    def _grant(self, waiter: _Waiter[K, T], entry: _Entry[K, T]) -> None:
        entry.leased = True
        waiter.granted = entry
        self._waiters.remove(waiter)

    def _reserved(self) -> set[int]:
        return {id(w.target) for w in self._waiters if w.target is not None}

    def _total(self) -> int:
        return len(self._entries) + len(self._creating) + self._destroying.total()

    def _remove(self, entry: _Entry[K, T]) -> None:
        """Take ``entry`` out; it counts against the total until destroyed. Lock held."""
        del self._entries[id(entry.instance)]
        entry.gone = True
        self._destroying[entry.owner, entry.key] += 1

    def _destroy_counted(self, slot: Slot[K], instance: T) -> None:
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
            _log.exception("destroy_failed", instance=repr(instance))

    def _validate_quietly(self, instance: T) -> bool:
        # A validator that crashes says the state is unknown: discard (rule 5).
        try:
            return bool(self._validate(instance))
        except Exception:
            _log.exception("validate_failed", instance=repr(instance))
            return False
