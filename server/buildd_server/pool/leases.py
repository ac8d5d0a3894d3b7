"""What the pool hands out and what it reports: leases, entries, waiters, errors.

The pool (pool.py) decides who gets which instance; this module holds the
handles and records it decides about, so that holders of a lease (leasing.py,
the store) need not see the pool's internals.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from types import TracebackType

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
# (owner, key): the unit of max_per_key and of single-flight creation.
Slot = tuple[str, K]


class PoolError(Exception):
    """Base of the pool's own failures; the service maps each to a typed error."""


class PoolTimeout(PoolError):
    """The deadline passed before an instance became available."""


class PoolCancelled(PoolError):
    """The caller's cancel event was set while it waited."""


class OwnerGone(PoolError):
    """The owner was dropped, or the caller's party (its session) ended, while it waited."""


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
    # The party (session) holding the lease; None when idle.
    party: str | None = None


@dataclass(eq=False)
class Entry(Generic[K, T]):
    """The pool's record of one instance (internal to the pool)."""

    owner: str
    key: K
    instance: T
    leased: bool
    last_used: float
    # Recency order: clock values tie (coarse or fake clocks), a counter does not.
    order: int
    party: str | None = None
    gone: bool = False


@dataclass(eq=False)
class Waiter(Generic[K, T]):
    """One caller queued for an instance (internal to the pool)."""

    seq: int
    owner: str
    party: str
    key: K
    # Set for acquire_instance: only this entry will do.
    target: Entry[K, T] | None
    # Taken when idle, before any other instance of the key; never waited for.
    prefer: Entry[K, T] | None = None
    granted: Entry[K, T] | None = None
    may_create: bool = False
    # An idle instance evicted to make room; the creator destroys it before creating.
    evicted: list[tuple[Slot[K], T]] = field(default_factory=list)
    announced: bool = False


class _Releaser(Protocol):
    def _release(self, entry: Any, discard: bool, used: bool) -> None: ...

    def _rekey(self, entry: Any, new_key: Any) -> None: ...


class Lease(Generic[T]):
    """Exclusive use of one instance until ``release``; use it as a context manager.

    Leaving the ``with`` block by an exception discards the instance: its state
    is unknown and it must never be leased again (rule 5). Generic in the
    instance only, so holders need not spell out the pool's key type.
    """

    def __init__(self, pool: _Releaser, entry: Entry[Any, T]) -> None:
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

    @property
    def party(self) -> str | None:
        return self._entry.party

    def release(self, discard: bool = False, *, used: bool = True) -> None:
        """Give the instance back, or destroy it when ``discard``; idempotent.

        ``used=False``: a check, not a use; the instance keeps its place in
        the least-recently-used order.
        """
        if self._released:
            return
        self._released = True
        self._pool._release(self._entry, discard, used)

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
