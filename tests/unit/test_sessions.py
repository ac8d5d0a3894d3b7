"""SessionRegistry: ids, lookup errors, holds, expiry and ending, with a fake clock."""

from __future__ import annotations

import os
import re
import stat
import threading
from typing import TYPE_CHECKING

import pytest

from buildd_client.cli import build_parser
from buildd_server import errors
from buildd_server.service.sessions import Session, SessionRegistry

if TYPE_CHECKING:
    from pathlib import Path

TTL = 60.0
JOIN = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ends:
    """Records on_end calls and checks the registry lock is free during them."""

    def __init__(self) -> None:
        self.ended: list[Session] = []
        self.registry: SessionRegistry | None = None
        self.lock_was_free: list[bool] = []
        self.fail_for: set[str] = set()
        self.called = threading.Event()

    def __call__(self, session: Session) -> None:
        assert session.ended
        if self.registry is not None:
            # Another thread must be able to use the registry meanwhile.
            probe = threading.Thread(target=self.registry.all)
            probe.start()
            probe.join(JOIN)
            self.lock_was_free.append(not probe.is_alive())
        self.ended.append(session)
        self.called.set()
        if session.id in self.fail_for:
            raise OSError("rmtree failed")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ends() -> Ends:
    return Ends()


@pytest.fixture
def registry(tmp_path: Path, clock: FakeClock, ends: Ends) -> SessionRegistry:
    reg = SessionRegistry(tmp_path / "sessions", TTL, ends, clock=clock)
    ends.registry = reg
    return reg


def test_open_gives_an_unguessable_id_and_a_private_directory(
    registry: SessionRegistry, tmp_path: Path
) -> None:
    one, two = registry.open("vscode/1.0"), registry.open("ci")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", one.id)
    assert one.id != two.id
    assert one.directory == tmp_path / "sessions" / one.id
    assert stat.S_IMODE(one.directory.stat().st_mode) == 0o700
    assert one.client_name == "vscode/1.0"
    assert (one.keepalives, one.ended, one.sources) == (0, False, {})
    assert registry.get(one.id) is one
    assert len(registry) == 2
    assert set(registry.all()) == {one, two}


def test_every_id_handed_out_is_usable_as_a_command_line_argument(
    registry: SessionRegistry,
) -> None:
    # About 1 in 32 urlsafe tokens begins with '-', which argparse reads as
    # an option: 2,000 ids made the old generator fail with near certainty.
    parser = build_parser()
    for _ in range(2000):
        session_id = registry.open("ci").id
        assert session_id[0].isalnum(), session_id
        assert parser.parse_args(["--session", session_id, "status"]).session == session_id
        closing = parser.parse_args(["session", "close", session_id])
        assert session_id in vars(closing).values()
        registry.close(session_id)


def test_directory_is_private_whatever_the_umask(registry: SessionRegistry) -> None:
    registry.open("creates the root under the normal umask")
    previous = os.umask(0o277)  # would leave the owner without write access
    try:
        session = registry.open("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(session.directory.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        ("", "is empty"),
        ("short", "'short' is malformed"),
        ("../../etc/passwd" + "x" * 10, "'../../etc/passwd"),
        ("a b" * 10, "'a ba ba b"),
        ("x" * 65, "malformed"),
        ("é" * 20, "malformed"),
        ("\n" * 30, r"'\n\n\n"),
    ],
)
def test_malformed_ids_are_rejected_with_a_quoted_truncated_form(
    registry: SessionRegistry, bad: str, shown: str
) -> None:
    with pytest.raises(errors.SessionNotFound) as info:
        registry.get(bad)
    assert shown in info.value.message
    assert "\n" not in info.value.message


def test_a_huge_id_is_truncated_in_the_message(registry: SessionRegistry) -> None:
    with pytest.raises(errors.SessionNotFound) as info:
        registry.get("A" * 100_000)
    assert "100000 characters" in info.value.message
    assert len(info.value.message) < 200


def test_unknown_and_ended_ids(registry: SessionRegistry, ends: Ends) -> None:
    with pytest.raises(errors.SessionNotFound, match="is unknown"):
        registry.get("A" * 32)
    session = registry.open("x")
    assert registry.close(session.id) is session
    assert ends.ended == [session]
    assert session.ended and session.end_reason == "closed"
    with pytest.raises(errors.SessionNotFound, match="has ended: was closed"):
        registry.get(session.id)
    with pytest.raises(errors.SessionNotFound):
        registry.close(session.id)
    assert ends.ended == [session]  # on_end ran once
    assert ends.lock_was_free == [True]
    assert len(registry) == 0


def test_idle_session_expires_after_the_ttl_only(
    registry: SessionRegistry, clock: FakeClock, ends: Ends
) -> None:
    session = registry.open("x")
    clock.advance(TTL)
    assert registry.expire_idle() == []  # exactly the TTL is not "longer than"
    clock.advance(0.5)
    assert registry.expire_idle() == [session]
    assert ends.ended == [session]
    assert ends.lock_was_free == [True]
    assert session.end_reason == "expired"
    with pytest.raises(errors.SessionNotFound, match="expired"):
        registry.get(session.id)


def test_activity_restarts_the_idle_clock(registry: SessionRegistry, clock: FakeClock) -> None:
    by_get, by_touch = registry.open("get"), registry.open("touch")
    clock.advance(TTL - 1)
    registry.get(by_get.id)
    registry.touch(by_touch)
    clock.advance(TTL - 1)
    assert registry.expire_idle() == []
    clock.advance(2)
    assert set(registry.expire_idle()) == {by_get, by_touch}


def test_keepalive_holds_the_session_and_restarts_the_clock_on_exit(
    registry: SessionRegistry, clock: FakeClock
) -> None:
    session = registry.open("ide")
    with registry.keepalive(session.id) as held:
        assert held is session and session.keepalives == 1
        with registry.keepalive(session.id):
            assert session.keepalives == 2
        clock.advance(TTL * 10)
        assert registry.expire_idle() == []
    assert session.keepalives == 0
    clock.advance(TTL - 1)
    assert registry.expire_idle() == []  # the stream's end counts as activity
    clock.advance(2)
    assert registry.expire_idle() == [session]


def test_keepalive_of_a_bad_id_fails_before_holding(registry: SessionRegistry) -> None:
    with pytest.raises(errors.SessionNotFound), registry.keepalive("nope"):
        pass


def test_close_while_held_ends_the_session(registry: SessionRegistry, ends: Ends) -> None:
    session = registry.open("ide")
    with registry.keepalive(session.id):
        registry.close(session.id)
        assert session.ended
    assert session.keepalives == 0
    assert ends.ended == [session]


def test_a_failing_on_end_does_not_stop_other_expiries(
    registry: SessionRegistry, clock: FakeClock, ends: Ends
) -> None:
    first, second = registry.open("a"), registry.open("b")
    ends.fail_for.add(first.id)
    clock.advance(TTL + 1)
    assert set(registry.expire_idle()) == {first, second}
    assert set(ends.ended) == {first, second}
    assert len(registry) == 0


def test_end_all_ends_everything_and_refuses_new_sessions(
    registry: SessionRegistry, ends: Ends, tmp_path: Path
) -> None:
    sessions = [registry.open(str(i)) for i in range(3)]
    assert set(registry.end_all()) == set(sessions)
    assert set(ends.ended) == set(sessions)
    assert all(s.end_reason == "shutdown" for s in sessions)
    with pytest.raises(errors.Unavailable):
        registry.open("late")
    # The refused session left no directory behind.
    assert sorted(p.name for p in (tmp_path / "sessions").iterdir()) == sorted(
        s.id for s in sessions
    )


def test_reaper_expires_idle_sessions(
    registry: SessionRegistry, clock: FakeClock, ends: Ends
) -> None:
    session = registry.open("x")
    clock.advance(TTL + 1)
    registry.start_reaper(0.01)
    try:
        with pytest.raises(RuntimeError):
            registry.start_reaper(0.01)
        assert ends.called.wait(JOIN)
    finally:
        registry.stop_reaper()
    assert ends.ended == [session]
    registry.stop_reaper()  # idempotent


def test_concurrent_close_ends_once(registry: SessionRegistry, ends: Ends) -> None:
    session = registry.open("x")
    ends.registry = None
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def close() -> None:
        start.wait(JOIN)
        try:
            registry.close(session.id)
            outcomes.append("closed")
        except errors.SessionNotFound:
            outcomes.append("not found")

    threads = [threading.Thread(target=close) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    assert sorted(outcomes) == ["closed"] + ["not found"] * 7
    assert ends.ended == [session]
