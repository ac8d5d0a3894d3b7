"""Pool: exact behaviour with fake instances, a fake clock and real threads.

Threads are synchronised with events (``on_wait`` tells when a caller is
queued), never with sleeps; a join timeout only turns a hang into a failure.
"""

from __future__ import annotations

import itertools
import random
import sys
import threading
from collections import Counter
from typing import TYPE_CHECKING, Generic, TypeVar

import pytest

from buildd_server.pool.pool import InstanceGone, Lease, OwnerGone, Pool, PoolCancelled, PoolTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

R = TypeVar("R")
JOIN = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Env:
    """A fake instance; unhashable on purpose (like a mutable dataclass)."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key

    def __repr__(self) -> str:
        return f"Env({self.name})"


class Fakes:
    """Callbacks that record what the pool did and check invariants as it goes."""

    def __init__(self, pool_ref: list[Pool[str, Env]] | None = None) -> None:
        self.lock = threading.Lock()
        self.names = itertools.count(1)
        self.created: list[Env] = []
        self.destroyed: list[Env] = []
        self.validated: list[Env] = []
        self.invalid: set[str] = set()
        self.live: Counter[str] = Counter()  # per key, from create() start to destroy() end
        self.max_live: Counter[str] = Counter()
        self.max_live_total = 0
        self.creating_now: Counter[str] = Counter()
        self.max_creating: Counter[str] = Counter()
        self.pool_ref = pool_ref or []
        self.lock_free_in_callbacks = True
        self.destroy_gate: threading.Event | None = None
        self.destroy_started = threading.Event()

    def check_unlocked(self) -> None:
        # Another thread must be able to take the pool's lock while a callback runs.
        if not self.pool_ref:
            return
        probe = threading.Thread(target=self.pool_ref[0].total)
        probe.start()
        probe.join(JOIN)
        if probe.is_alive():
            self.lock_free_in_callbacks = False

    def creator(
        self,
        key: str,
        gate: threading.Event | None = None,
        started: threading.Event | None = None,
    ) -> Callable[[], Env]:
        def create() -> Env:
            with self.lock:
                self.live[key] += 1
                self.max_live[key] = max(self.max_live[key], self.live[key])
                self.max_live_total = max(self.max_live_total, sum(self.live.values()))
                self.creating_now[key] += 1
                self.max_creating[key] = max(self.max_creating[key], self.creating_now[key])
            try:
                self.check_unlocked()
                if started is not None:
                    started.set()
                if gate is not None:
                    assert gate.wait(JOIN)
                env = Env(f"{key}{next(self.names)}", key)
                with self.lock:
                    self.created.append(env)
                return env
            except BaseException:
                with self.lock:
                    self.live[key] -= 1
                raise
            finally:
                with self.lock:
                    self.creating_now[key] -= 1

        return create

    def destroy(self, env: Env) -> None:
        self.check_unlocked()
        self.destroy_started.set()
        if self.destroy_gate is not None:
            assert self.destroy_gate.wait(JOIN)
        with self.lock:
            self.destroyed.append(env)
            self.live[env.key] -= 1

    def validate(self, env: Env) -> bool:
        self.check_unlocked()
        with self.lock:
            self.validated.append(env)
        return env.name not in self.invalid


def make_pool(
    max_per_key: int = 2, max_total: int = 10, clock: FakeClock | None = None
) -> tuple[Pool[str, Env], Fakes]:
    ref: list[Pool[str, Env]] = []
    fakes = Fakes(ref)
    pool: Pool[str, Env] = Pool(
        max_per_key=max_per_key,
        max_total=max_total,
        destroy=fakes.destroy,
        validate=fakes.validate,
        clock=clock or FakeClock(),
    )
    ref.append(pool)
    return pool, fakes


class Worker(threading.Thread, Generic[R]):
    """Runs ``fn`` on a thread; ``waiting`` is set by ``on_wait``."""

    def __init__(self, fn: Callable[[Worker[R]], R]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.waiting = threading.Event()
        self.done = threading.Event()
        # Set by either: a worker that should wait but does not fails fast.
        self.progress = threading.Event()
        self.result: R | None = None
        self.error: BaseException | None = None

    def on_wait(self) -> None:
        self.waiting.set()
        self.progress.set()

    def run(self) -> None:
        try:
            self.result = self.fn(self)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()
            self.progress.set()

    def started_waiting(self) -> Worker[R]:
        self.start()
        assert self.progress.wait(JOIN), "worker hangs"
        assert self.waiting.is_set(), f"worker did not wait: {self.result or self.error!r}"
        return self

    def outcome(self) -> R:
        self.join(JOIN)
        assert not self.is_alive(), "worker hangs"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def acquire_worker(
    pool: Pool[str, Env],
    fakes: Fakes,
    key: str,
    *,
    owner: str = "s1",
    deadline: float | None = None,
    cancel: threading.Event | None = None,
) -> Worker[Lease[Env]]:
    return Worker(
        lambda w: pool.acquire(
            owner, key, fakes.creator(key), deadline=deadline, cancel=cancel, on_wait=w.on_wait
        )
    )


def acquire(pool: Pool[str, Env], fakes: Fakes, key: str, owner: str = "s1") -> Lease[Env]:
    return pool.acquire(owner, key, fakes.creator(key), deadline=None)


def states(pool: Pool[str, Env]) -> dict[str, str]:
    return {e.instance.name: e.state for e in pool.snapshot()}


# ------------------------------------------------------------------ borrow --


def test_creates_then_reuses_the_released_instance() -> None:
    pool, fakes = make_pool()
    lease = acquire(pool, fakes, "a")
    env = lease.instance
    assert lease.key == "a" and lease.owner == "s1"
    assert states(pool) == {"a1": "leased"}
    lease.release()
    assert states(pool) == {"a1": "idle"}
    again = acquire(pool, fakes, "a")
    assert again.instance is env
    assert fakes.created == [env]
    assert fakes.validated == [env]  # validated on borrow, not on creation
    assert fakes.lock_free_in_callbacks


def test_most_recently_used_idle_instance_first() -> None:
    pool, fakes = make_pool()
    first, second = acquire(pool, fakes, "a"), acquire(pool, fakes, "a")
    second.release()
    first.release()  # now the most recently used
    assert acquire(pool, fakes, "a").instance is first.instance
    assert acquire(pool, fakes, "a").instance is second.instance


def test_keys_and_owners_do_not_share_instances() -> None:
    pool, fakes = make_pool()
    acquire(pool, fakes, "a").release()
    assert acquire(pool, fakes, "b").instance.name == "b2"
    assert acquire(pool, fakes, "a", owner="s2").instance.name == "a3"


def test_invalid_instance_is_destroyed_and_replaced() -> None:
    pool, fakes = make_pool(max_per_key=1)
    acquire(pool, fakes, "a").release()
    fakes.invalid.add("a1")
    lease = acquire(pool, fakes, "a")
    assert lease.instance.name == "a2"
    assert [e.name for e in fakes.destroyed] == ["a1"]
    assert states(pool) == {"a2": "leased"}
    assert fakes.lock_free_in_callbacks


def test_validator_that_raises_counts_as_invalid() -> None:
    pool, fakes = make_pool()
    acquire(pool, fakes, "a").release()

    def broken(env: Env) -> bool:
        raise OSError("stat failed")

    pool._validate = broken
    assert acquire(pool, fakes, "a").instance.name == "a2"
    assert [e.name for e in fakes.destroyed] == ["a1"]


def test_lease_context_manager_discards_on_exception() -> None:
    pool, fakes = make_pool()
    with acquire(pool, fakes, "a"):
        pass
    assert states(pool) == {"a1": "idle"}
    with pytest.raises(RuntimeError), acquire(pool, fakes, "a"):
        raise RuntimeError("hook killed")
    assert states(pool) == {}
    assert [e.name for e in fakes.destroyed] == ["a1"]
    assert pool.total() == 0


def test_release_is_idempotent_and_rekey_after_release_fails() -> None:
    pool, fakes = make_pool()
    lease = acquire(pool, fakes, "a")
    lease.release(discard=True)
    lease.release()
    assert len(fakes.destroyed) == 1
    with pytest.raises(RuntimeError):
        lease.rekey("b")


def test_create_returning_a_pooled_instance_is_refused() -> None:
    pool, fakes = make_pool()
    env = acquire(pool, fakes, "a").instance
    with pytest.raises(ValueError, match="already in the pool"):
        pool.acquire("s1", "a", lambda: env, deadline=None)
    assert pool.total() == 1


# ------------------------------------------------------------ waiting/FIFO --


def test_waiters_are_served_in_arrival_order() -> None:
    pool, fakes = make_pool(max_per_key=1)
    holder = acquire(pool, fakes, "a")
    order: list[str] = []

    def waiter(name: str) -> Worker[Lease[Env]]:
        def run(w: Worker[Lease[Env]]) -> Lease[Env]:
            lease = pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=w.on_wait)
            order.append(name)
            lease.release()
            return lease

        return Worker(run)

    workers = [waiter(name).started_waiting() for name in ("w1", "w2", "w3", "w4")]
    holder.release()
    for worker in workers:
        assert worker.outcome().instance is holder.instance
    assert order == ["w1", "w2", "w3", "w4"]
    assert len(fakes.created) == 1


def test_on_wait_is_called_once_outside_the_lock_and_only_when_waiting() -> None:
    pool, fakes = make_pool(max_per_key=1)
    calls: list[str] = []
    lease = pool.acquire(
        "s1", "a", fakes.creator("a"), deadline=None, on_wait=lambda: calls.append("first")
    )
    assert calls == []

    def run(w: Worker[Lease[Env]]) -> Lease[Env]:
        def on_wait() -> None:
            # Same thread, plain lock: this would deadlock if the lock were held.
            calls.append(f"second, total={pool.total()}")
            w.on_wait()

        return pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=on_wait)

    worker = Worker(run).started_waiting()
    lease.release()
    assert worker.outcome().instance is lease.instance
    assert calls == ["second, total=1"]


def test_second_acquire_of_a_new_key_waits_for_the_creation_in_flight() -> None:
    pool, fakes = make_pool(max_per_key=1)
    gate = threading.Event()
    first = Worker(lambda w: pool.acquire("s1", "a", fakes.creator("a", gate), deadline=None))
    first.start()
    second = acquire_worker(pool, fakes, "a").started_waiting()
    assert fakes.creating_now["a"] == 1 and fakes.created == []
    gate.set()
    lease = first.outcome()
    lease.release()
    assert second.outcome().instance is lease.instance
    assert len(fakes.created) == 1


def test_creation_is_single_flight_even_below_the_cap() -> None:
    pool, fakes = make_pool(max_per_key=3)
    gate = threading.Event()
    first = Worker(lambda w: pool.acquire("s1", "a", fakes.creator("a", gate), deadline=None))
    first.start()
    others = [acquire_worker(pool, fakes, "a").started_waiting() for _ in range(2)]
    # Both are queued behind the one creation, not creating in parallel.
    assert pool.creating() == [("s1", "a")]
    gate.set()
    leases = [first.outcome()] + [w.outcome() for w in others]
    # One creation after the other, granted in arrival order.
    assert [lease.instance.name for lease in leases] == ["a1", "a2", "a3"]
    assert fakes.max_creating["a"] == 1


def test_creation_slots_across_keys_are_granted_in_arrival_order() -> None:
    pool, fakes = make_pool(max_total=1)
    held = acquire(pool, fakes, "a")
    order: list[str] = []

    def waiter(key: str) -> Worker[Lease[Env]]:
        def run(w: Worker[Lease[Env]]) -> Lease[Env]:
            lease = pool.acquire("s1", key, fakes.creator(key), deadline=None, on_wait=w.on_wait)
            order.append(key)
            lease.release()
            return lease

        return Worker(run)

    workers = [waiter(key).started_waiting() for key in ("c", "b", "d")]
    held.release()
    for worker in workers:
        worker.outcome()
    assert order == ["c", "b", "d"]
    assert fakes.max_live_total == 1


def test_destruction_in_flight_counts_against_the_total() -> None:
    pool, fakes = make_pool(max_total=1)
    lease = acquire(pool, fakes, "a")
    fakes.destroy_gate = threading.Event()
    discarding = Worker(lambda w: lease.release(discard=True))
    discarding.start()
    assert fakes.destroy_started.wait(JOIN)
    other = acquire_worker(pool, fakes, "b").started_waiting()
    fakes.destroy_gate.set()
    assert other.outcome().instance.name == "b2"
    assert fakes.max_live_total == 1
    discarding.join(JOIN)


def test_destruction_in_flight_counts_against_the_key_cap() -> None:
    pool, fakes = make_pool(max_per_key=1)
    lease = acquire(pool, fakes, "a")
    fakes.destroy_gate = threading.Event()
    discarding = Worker(lambda w: lease.release(discard=True))
    discarding.start()
    assert fakes.destroy_started.wait(JOIN)
    other = acquire_worker(pool, fakes, "a").started_waiting()
    fakes.destroy_gate.set()
    assert other.outcome().instance.name == "a2"
    assert fakes.max_live["a"] == 1
    discarding.join(JOIN)


def test_evicted_instance_counts_against_its_key_until_destroyed() -> None:
    pool, fakes = make_pool(max_per_key=1, max_total=2)
    acquire(pool, fakes, "a").release()
    c = acquire(pool, fakes, "c")
    gate = fakes.destroy_gate = threading.Event()
    # b evicts the idle a1 and blocks destroying it...
    evictor = acquire_worker(pool, fakes, "b")
    evictor.start()
    assert fakes.destroy_started.wait(JOIN)
    other = acquire_worker(pool, fakes, "a").started_waiting()
    fakes.destroy_gate = None  # only a1's destruction stays blocked
    # ...so when c2 becomes idle, a must not evict it to recreate a beside a1.
    c.release()
    assert states(pool) == {"c2": "idle"}
    assert pool.creating() == [("s1", "b")]
    assert fakes.destroyed == []
    gate.set()
    evictor.outcome().release()
    assert other.outcome().instance.name == "a4"
    assert fakes.max_live["a"] == 1


def test_waiter_keeps_its_place_after_an_invalid_instance() -> None:
    pool, fakes = make_pool(max_per_key=1)
    held = acquire(pool, fakes, "a")
    order: list[str] = []

    def waiter(name: str) -> Worker[Lease[Env]]:
        def run(w: Worker[Lease[Env]]) -> Lease[Env]:
            lease = pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=w.on_wait)
            order.append(f"{name}:{lease.instance.name}")
            lease.release()
            return lease

        return Worker(run)

    first, second = waiter("w1").started_waiting(), waiter("w2").started_waiting()
    fakes.invalid.add("a1")
    held.release()
    first.outcome()
    second.outcome()
    # w1 got the invalid a1, and still comes first with the replacement.
    assert order == ["w1:a2", "w2:a2"]
    assert fakes.destroyed == [held.instance]


def test_failed_create_wakes_the_next_waiter_which_creates() -> None:
    pool, fakes = make_pool(max_per_key=1)
    gate = threading.Event()

    def failing() -> Env:
        assert gate.wait(JOIN)
        raise OSError("ENOSPC")

    first = Worker(lambda w: pool.acquire("s1", "a", failing, deadline=None))
    first.start()
    second = acquire_worker(pool, fakes, "a").started_waiting()
    gate.set()
    with pytest.raises(OSError, match="ENOSPC"):
        first.outcome()
    assert second.outcome().instance.name == "a1"
    assert pool.creating() == []
    assert pool.total() == 1


# ------------------------------------------------------------------- caps --


@pytest.fixture
def busy_switching() -> Iterator[None]:
    # Switch threads very often, so leases, creations and releases interleave.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("busy_switching")
def test_caps_are_never_exceeded_under_contention() -> None:
    max_per_key, max_total = 2, 3
    pool, fakes = make_pool(max_per_key=max_per_key, max_total=max_total)
    fakes.pool_ref.clear()  # skip the lock probe: it would serialise the threads
    in_use: Counter[int] = Counter()
    leased_now: Counter[tuple[str, str]] = Counter()
    violations: list[str] = []
    guard = threading.Lock()
    start = threading.Barrier(16)

    def create_sometimes_failing(owner: str, key: str, fail: bool) -> Callable[[], Env]:
        create = fakes.creator(f"{owner}/{key}")

        def run() -> Env:
            env = create()
            if fail:
                fakes.destroy(env)  # a failed creation cleans up after itself
                raise OSError("install failed")
            return env

        return run

    def run(index: int) -> None:
        rng = random.Random(index)
        start.wait(JOIN)
        for _ in range(40):
            owner, key = rng.choice(["s1", "s2"]), rng.choice(["a", "b"])
            create = create_sometimes_failing(owner, key, rng.random() < 0.05)
            try:
                lease = pool.acquire(owner, key, create, deadline=None)
            except OSError:
                continue
            with guard:
                in_use[id(lease.instance)] += 1
                leased_now[owner, key] += 1
                if in_use[id(lease.instance)] != 1:
                    violations.append(f"{lease.instance} leased twice")
                if leased_now[owner, key] > max_per_key:
                    violations.append(f"{owner}/{key} over the cap")
                if pool.total() > max_total:
                    violations.append("over the total")
            with guard:
                in_use[id(lease.instance)] -= 1
                leased_now[owner, key] -= 1
            lease.release(discard=rng.random() < 0.1)

    def guarded(index: int) -> None:
        try:
            run(index)
        except BaseException as exc:
            violations.append(f"thread {index}: {exc!r}")

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
        assert not thread.is_alive()
    assert violations == []
    assert max(fakes.max_live.values()) <= max_per_key
    assert fakes.max_live_total <= max_total
    assert max(fakes.max_creating.values()) == 1
    assert pool.total() == len(fakes.created) - len(fakes.destroyed) <= max_total


def test_creation_in_flight_counts_against_the_total() -> None:
    pool, fakes = make_pool(max_total=1)
    gate = threading.Event()
    first = Worker(lambda w: pool.acquire("s1", "a", fakes.creator("a", gate), deadline=None))
    first.start()
    other = acquire_worker(pool, fakes, "b", owner="s2").started_waiting()
    assert fakes.created == []
    gate.set()
    lease = first.outcome()
    assert fakes.created == [lease.instance]
    lease.release()
    # The idle instance of another owner is evicted, then destroyed before creating.
    assert other.outcome().instance.name == "b2"
    assert [e.name for e in fakes.destroyed] == ["a1"]
    assert fakes.max_live_total == 1


def test_eviction_takes_the_least_recently_used_idle_instance() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(max_total=3, clock=clock)
    x, y, z = (
        acquire(pool, fakes, "a"),
        acquire(pool, fakes, "b", owner="s2"),
        acquire(pool, fakes, "c"),
    )
    y.release()
    clock.advance(1)
    x.release()
    assert acquire(pool, fakes, "d").instance.name == "d4"
    assert [e.name for e in fakes.destroyed] == ["b2"]
    assert states(pool) == {"a1": "idle", "c3": "leased", "d4": "leased"}
    assert z.instance.name == "c3"


def test_full_total_without_idle_instances_waits() -> None:
    pool, fakes = make_pool(max_total=2)
    a, b = acquire(pool, fakes, "a"), acquire(pool, fakes, "b")
    waiter = acquire_worker(pool, fakes, "c").started_waiting()
    b.release(discard=True)
    assert waiter.outcome().instance.name == "c3"
    assert a.instance.name == "a1"


def test_idle_instance_goes_to_its_own_waiter_not_to_eviction() -> None:
    # A waiter for key b (needing room) queued before a waiter for key a: the
    # released a-instance must go to the a-waiter, not be evicted for b.
    pool, fakes = make_pool(max_per_key=1, max_total=1)
    held = acquire(pool, fakes, "a")
    for_b = acquire_worker(pool, fakes, "b").started_waiting()
    for_a = acquire_worker(pool, fakes, "a").started_waiting()
    held.release()
    lease_a = for_a.outcome()
    assert lease_a.instance is held.instance
    assert fakes.destroyed == []
    lease_a.release()
    assert for_b.outcome().instance.name == "b2"


# --------------------------------------------------------------- affinity --


def test_acquire_instance_waits_for_its_instance_though_a_sibling_is_idle() -> None:
    pool, fakes = make_pool()
    wanted, sibling = acquire(pool, fakes, "a"), acquire(pool, fakes, "a")
    sibling.release()
    worker = Worker(
        lambda w: pool.acquire_instance("s1", wanted.instance, deadline=None, on_wait=w.on_wait)
    ).started_waiting()
    wanted.release()
    assert worker.outcome().instance is wanted.instance
    assert states(pool) == {"a1": "leased", "a2": "idle"}


def test_generic_acquire_does_not_take_an_instance_someone_waits_for() -> None:
    pool, fakes = make_pool(max_per_key=1)
    held = acquire(pool, fakes, "a")
    order: list[str] = []

    def affinity(w: Worker[Lease[Env]]) -> Lease[Env]:
        lease = pool.acquire_instance("s1", held.instance, deadline=None, on_wait=w.on_wait)
        order.append("affinity")
        return lease

    def generic(w: Worker[Lease[Env]]) -> Lease[Env]:
        lease = pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=w.on_wait)
        order.append("generic")
        return lease

    # The generic waiter queues first, and still loses to the affinity waiter.
    second = Worker(generic).started_waiting()
    first = Worker(affinity).started_waiting()
    held.release()
    first.outcome().release()
    assert second.outcome().instance is held.instance
    assert order == ["affinity", "generic"]


def test_acquire_instance_waiters_are_fifo() -> None:
    pool, fakes = make_pool()
    held = acquire(pool, fakes, "a")
    order: list[int] = []

    def waiter(n: int) -> Worker[Lease[Env]]:
        def run(w: Worker[Lease[Env]]) -> Lease[Env]:
            lease = pool.acquire_instance("s1", held.instance, deadline=None, on_wait=w.on_wait)
            order.append(n)
            lease.release()
            return lease

        return Worker(run)

    workers = [waiter(n).started_waiting() for n in range(3)]
    held.release()
    for worker in workers:
        worker.outcome()
    assert order == [0, 1, 2]


def test_acquire_instance_gone_discarded_invalid_or_foreign() -> None:
    pool, fakes = make_pool()
    held = acquire(pool, fakes, "a")
    with pytest.raises(InstanceGone, match="does not belong"):
        pool.acquire_instance("s2", held.instance, deadline=None)
    worker = Worker(
        lambda w: pool.acquire_instance("s1", held.instance, deadline=None, on_wait=w.on_wait)
    ).started_waiting()
    held.release(discard=True)
    with pytest.raises(InstanceGone):
        worker.outcome()
    with pytest.raises(InstanceGone):
        pool.acquire_instance("s1", held.instance, deadline=None)
    other = acquire(pool, fakes, "a")
    other.release()
    fakes.invalid.add(other.instance.name)
    with pytest.raises(InstanceGone, match="failed validation"):
        pool.acquire_instance("s1", other.instance, deadline=None)
    assert fakes.destroyed == [held.instance, other.instance]
    assert pool.total() == 0


# --------------------------------------------------------- deadline/cancel --


def test_deadline_passes_while_waiting() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(max_per_key=1, clock=clock)
    held = acquire(pool, fakes, "a")
    worker = acquire_worker(pool, fakes, "a", deadline=clock() + 30).started_waiting()
    clock.advance(30)
    with pytest.raises(PoolTimeout):
        worker.outcome()
    held.release()
    # The timed-out waiter left the queue: nothing is leased to a ghost.
    assert states(pool) == {"a1": "idle"}


def test_deadline_already_past_fails_without_waiting_but_idle_is_still_served() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(max_per_key=1, clock=clock)
    held = acquire(pool, fakes, "a")
    calls: list[int] = []
    with pytest.raises(PoolTimeout):
        pool.acquire(
            "s1", "a", fakes.creator("a"), deadline=clock() - 1, on_wait=lambda: calls.append(1)
        )
    assert calls == []
    held.release()
    assert (
        pool.acquire("s1", "a", fakes.creator("a"), deadline=clock() - 1).instance is held.instance
    )


def test_cancel_while_waiting() -> None:
    pool, fakes = make_pool(max_per_key=1)
    held = acquire(pool, fakes, "a")
    cancel = threading.Event()
    worker = acquire_worker(pool, fakes, "a", cancel=cancel).started_waiting()
    cancel.set()
    with pytest.raises(PoolCancelled):
        worker.outcome()
    held.release()
    assert states(pool) == {"a1": "idle"}


def test_cancel_of_an_instance_waiter() -> None:
    pool, fakes = make_pool()
    held = acquire(pool, fakes, "a")
    cancel = threading.Event()
    worker = Worker(
        lambda w: pool.acquire_instance(
            "s1", held.instance, deadline=None, cancel=cancel, on_wait=w.on_wait
        )
    ).started_waiting()
    cancel.set()
    with pytest.raises(PoolCancelled):
        worker.outcome()


# ----------------------------------------------------------------- owners --


def test_drop_owner_destroys_idle_now_and_leased_at_release() -> None:
    pool, fakes = make_pool(max_per_key=1)
    leased, idle = acquire(pool, fakes, "a"), acquire(pool, fakes, "b")
    idle.release()
    other = acquire(pool, fakes, "a", owner="s2")
    waiter = acquire_worker(pool, fakes, "a").started_waiting()
    assert pool.drop_owner("s1") == (1, 1)
    assert fakes.destroyed == [idle.instance]
    with pytest.raises(OwnerGone):
        waiter.outcome()
    with pytest.raises(OwnerGone):
        acquire(pool, fakes, "c")
    with pytest.raises(OwnerGone):
        pool.acquire_instance("s1", leased.instance, deadline=None)
    leased.release()
    assert fakes.destroyed == [idle.instance, leased.instance]
    assert states(pool) == {other.instance.name: "leased"}
    assert pool.drop_owner("s1") == (0, 0)


def test_drop_owner_during_creation_destroys_the_new_instance() -> None:
    pool, fakes = make_pool()
    gate, started = threading.Event(), threading.Event()
    creator = Worker(
        lambda w: pool.acquire("s1", "a", fakes.creator("a", gate, started), deadline=None)
    )
    creator.start()
    assert started.wait(JOIN)
    assert pool.drop_owner("s1") == (0, 1)
    gate.set()
    with pytest.raises(OwnerGone):
        creator.outcome()
    assert fakes.destroyed == fakes.created
    assert pool.total() == 0


def paused_in_on_wait(
    fn: Callable[[Callable[[], None]], Lease[Env]],
) -> tuple[Worker[Lease[Env]], threading.Event]:
    """A worker whose ``on_wait`` blocks until the returned event is set.

    While it is blocked the pool's lock is free, so the test can change the
    pool between the moment the worker is granted something and the moment it
    looks at its grant.
    """
    proceed = threading.Event()

    def run(w: Worker[Lease[Env]]) -> Lease[Env]:
        def on_wait() -> None:
            w.on_wait()
            assert proceed.wait(JOIN)

        return fn(on_wait)

    return Worker(run).started_waiting(), proceed


def test_grant_of_an_idle_instance_is_void_when_the_owner_is_dropped_first() -> None:
    pool, fakes = make_pool(max_per_key=1)
    held = acquire(pool, fakes, "a")
    worker, proceed = paused_in_on_wait(
        lambda on_wait: pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=on_wait)
    )
    held.release()  # granted to the paused worker
    assert states(pool) == {"a1": "leased"}
    assert pool.drop_owner("s1") == (0, 1)
    proceed.set()
    with pytest.raises(OwnerGone):
        worker.outcome()
    assert fakes.destroyed == [held.instance]
    assert pool.total() == 0


def test_grant_of_a_creation_is_void_when_the_owner_is_dropped_first() -> None:
    pool, fakes = make_pool(max_total=1)
    other = acquire(pool, fakes, "x", owner="s2")
    worker, proceed = paused_in_on_wait(
        lambda on_wait: pool.acquire("s1", "a", fakes.creator("a"), deadline=None, on_wait=on_wait)
    )
    other.release()  # the paused worker evicts x1 and may create
    assert pool.creating() == [("s1", "a")]
    assert pool.drop_owner("s1") == (0, 1)
    proceed.set()
    with pytest.raises(OwnerGone):
        worker.outcome()
    # Never created, and the evicted instance is still destroyed.
    assert fakes.created == [other.instance]
    assert fakes.destroyed == [other.instance]
    assert pool.total() == 0
    assert pool.creating() == []


# ------------------------------------------------------------------ rekey --


def test_rekey_moves_the_instance_and_frees_the_old_slot() -> None:
    pool, fakes = make_pool(max_per_key=1)
    lease = acquire(pool, fakes, "a")
    waiter = acquire_worker(pool, fakes, "a").started_waiting()
    lease.rekey("a+b")
    assert lease.key == "a+b"
    assert waiter.outcome().instance.name == "a2"
    lease.release()
    assert acquire(pool, fakes, "a+b").instance is lease.instance
    assert {e.instance.name: e.key for e in pool.snapshot()} == {"a1": "a+b", "a2": "a"}


# ------------------------------------------------------------ re-entrancy --


def test_callbacks_may_call_back_into_the_pool() -> None:
    pool, fakes = make_pool()

    def create() -> Env:
        # Borrow another key from inside a creation: no lock may be held here.
        with acquire(pool, fakes, "inner"):
            pass
        return Env("outer", "outer")

    worker = Worker(lambda w: pool.acquire("s1", "outer", create, deadline=None))
    worker.start()
    assert worker.outcome().instance.name == "outer"
    assert fakes.lock_free_in_callbacks


def test_evict_idle_respects_age() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(clock=clock)
    old, new = acquire(pool, fakes, "a"), acquire(pool, fakes, "b")
    old.release()
    clock.advance(60)
    new.release()
    assert pool.evict_idle(older_than=30) == [old.instance]
    assert fakes.destroyed == [old.instance]
    assert pool.evict_idle() == [new.instance]
    assert pool.total() == 0


# ---------------------------------------------------- owners and parties --


def test_a_party_that_ends_gives_up_waiting_but_its_owner_keeps_the_instances() -> None:
    pool, fakes = make_pool(max_per_key=1)
    held = pool.acquire("alice", "a", fakes.creator("a"), party="s1", deadline=None)
    assert held.party == "s1" and held.owner == "alice"
    waiter = Worker(
        lambda w: pool.acquire(
            "alice", "a", fakes.creator("a"), party="s2", deadline=None, on_wait=w.on_wait
        )
    ).started_waiting()
    pool.end_party("s2")
    with pytest.raises(OwnerGone):
        waiter.outcome()
    with pytest.raises(OwnerGone):
        pool.acquire("alice", "a", fakes.creator("a"), party="s2", deadline=None)
    pool.end_party("s1")
    # The lease of an ended party returns its instance to the owner, idle.
    held.release()
    assert states(pool) == {"a1": "idle"}
    again = pool.acquire("alice", "a", fakes.creator("a"), party="s3", deadline=None)
    assert again.instance is held.instance and fakes.destroyed == []


def test_a_creation_whose_party_ended_leaves_the_instance_idle_to_its_owner() -> None:
    pool, fakes = make_pool()
    gate, started = threading.Event(), threading.Event()
    creator = Worker(
        lambda w: pool.acquire(
            "alice", "a", fakes.creator("a", gate, started), party="s1", deadline=None
        )
    )
    creator.start()
    assert started.wait(JOIN)
    pool.end_party("s1")
    gate.set()
    with pytest.raises(OwnerGone):
        creator.outcome()
    assert states(pool) == {"a1": "idle"} and fakes.destroyed == []


def test_two_parties_of_one_owner_never_share_an_instance() -> None:
    pool, fakes = make_pool(max_per_key=2)
    first = pool.acquire("alice", "a", fakes.creator("a"), party="s1", deadline=None)
    second = pool.acquire("alice", "a", fakes.creator("a"), party="s2", deadline=None)
    assert first.instance is not second.instance
    assert {e.party for e in pool.snapshot()} == {"s1", "s2"}


def test_a_preferred_instance_is_taken_when_idle_whatever_its_key() -> None:
    pool, fakes = make_pool()
    grown = acquire(pool, fakes, "a")
    grown.rekey("a+b")
    other = acquire(pool, fakes, "a")
    grown.release()
    other.release()  # most recently used: a generic acquire would take it
    lease = pool.acquire("s1", "a", fakes.creator("a"), prefer=grown.instance, deadline=None)
    assert lease.instance is grown.instance
    # Busy: the caller does not wait for it but takes another one.
    second = pool.acquire("s1", "a", fakes.creator("a"), prefer=grown.instance, deadline=None)
    assert second.instance is other.instance


def test_a_preferred_instance_of_another_owner_is_ignored() -> None:
    pool, fakes = make_pool()
    foreign = acquire(pool, fakes, "a", owner="bob")
    foreign.release()
    lease = pool.acquire("alice", "a", fakes.creator("a"), prefer=foreign.instance, deadline=None)
    assert lease.instance is not foreign.instance and lease.owner == "alice"


def test_try_lease_never_waits_and_never_takes_a_reserved_instance() -> None:
    pool, fakes = make_pool(max_per_key=1)
    lease = acquire(pool, fakes, "a")
    assert pool.try_lease(lease.instance) is None  # leased
    waiter = Worker(
        lambda w: pool.acquire_instance("s1", lease.instance, deadline=None, on_wait=w.on_wait)
    ).started_waiting()
    lease.release()
    taken = waiter.outcome()
    assert pool.try_lease(taken.instance) is None
    taken.release()
    check = pool.try_lease(taken.instance, party="check")
    assert check is not None and check.party == "check"
    check.release()
    assert fakes.validated == [lease.instance]  # try_lease does not validate


def test_added_instances_are_idle_oldest_first_and_age_like_others() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(max_total=3, clock=clock)
    old, young = Env("old", "a"), Env("young", "a")
    pool.add_idle("alice", "a", old, idle_for=100)
    pool.add_idle("alice", "a", young, idle_for=10)
    with pytest.raises(ValueError, match="already"):
        pool.add_idle("alice", "a", old)
    assert [e.instance.name for e in pool.snapshot()] == ["old", "young"]
    # The most recently used is borrowed first.
    assert pool.acquire("alice", "a", fakes.creator("a"), deadline=None).instance is young
    assert pool.evict_idle(older_than=50, owner="alice") == [old]
    assert pool.evict_idle(owner="bob") == []


def test_discard_idle_takes_only_idle_unreserved_instances() -> None:
    pool, fakes = make_pool()
    lease = acquire(pool, fakes, "a")
    assert pool.discard_idle(lease.instance) is False
    lease.release()
    assert pool.discard_idle(lease.instance) is True
    assert fakes.destroyed == [lease.instance] and pool.total() == 0
    assert pool.discard_idle(lease.instance) is False


def test_a_check_lease_keeps_the_instance_s_place_in_recency() -> None:
    clock = FakeClock()
    pool, fakes = make_pool(clock=clock)
    old, new = acquire(pool, fakes, "a"), acquire(pool, fakes, "a")
    old.release()
    clock.advance(10)
    new.release()
    check = pool.try_lease(old.instance, party="check")
    assert check is not None
    clock.advance(10)
    check.release(used=False)
    # Still the least recently used: first in the snapshot, oldest for age-based eviction.
    assert [e.instance for e in pool.snapshot()] == [old.instance, new.instance]
    assert pool.evict_idle(older_than=15) == [old.instance]
