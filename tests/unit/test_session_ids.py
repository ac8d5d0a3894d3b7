"""Client-proposed session ids: their shape, clashes, and ids scoped per principal."""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import pytest

from buildd_client.routing import SESSION_HEADER, new_session_id
from buildd_server import errors
from buildd_server.access.routing import check_session_header, header_session
from buildd_server.service.sessions import SessionRegistry

if TYPE_CHECKING:
    from pathlib import Path

PROPOSED = "Prop0sedSessionId_with-32-chars0"
assert len(PROPOSED) == 32


@pytest.fixture
def registry(tmp_path: Path) -> SessionRegistry:
    return SessionRegistry(tmp_path / "sessions", 60.0, lambda session: None, daemon_id="d-7")


def test_a_well_formed_proposal_becomes_the_session_id(
    registry: SessionRegistry, tmp_path: Path
) -> None:
    session = registry.open("ci", principal="alice", session_id=PROPOSED)
    assert session.id == session.wire_id == PROPOSED
    assert session.directory == tmp_path / "sessions" / PROPOSED
    assert registry.get(PROPOSED, principal="alice") is session


def test_client_ids_have_the_daemon_ids_shape(registry: SessionRegistry) -> None:
    # Every id the client library proposes is accepted (2,000 draws: about 60
    # of them begin with '-' or '_' before the redraw).
    for _ in range(2000):
        proposal = new_session_id()
        assert registry.open("ci", session_id=proposal).wire_id == proposal


@pytest.mark.parametrize(
    "bad",
    [
        "A" * 31,
        "A" * 33,
        "-" + "A" * 31,
        "_" + "A" * 31,
        "A" * 30 + "/.",
        "A" * 31 + "é",
        "A" * 31 + "\n",
        "A" * 100_000,
    ],
    ids=["short", "long", "dash", "underscore", "slash", "non-ascii", "newline", "huge"],
)
def test_a_malformed_proposal_is_refused_naming_the_field(
    registry: SessionRegistry, bad: str
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        registry.open("ci", session_id=bad)
    assert info.value.message.startswith("session_id: the proposed id ")
    assert "exactly 32 characters" in info.value.message
    assert "\n" not in info.value.message and len(info.value.message) < 400
    assert len(registry) == 0


def test_a_proposal_of_an_own_live_or_ended_id_is_already_exists(
    registry: SessionRegistry,
) -> None:
    registry.open("ci", principal="alice", session_id=PROPOSED)
    with pytest.raises(errors.SessionExists, match="propose a new random id") as info:
        registry.open("ci", principal="alice", session_id=PROPOSED)
    assert info.value.status.name == "ALREADY_EXISTS"
    registry.close(PROPOSED, principal="alice")
    # Reusing a remembered id would let a holder of the old id into the new session.
    with pytest.raises(errors.SessionExists):
        registry.open("ci", principal="alice", session_id=PROPOSED)


def test_another_principals_id_opens_a_separate_session_and_reveals_nothing(
    registry: SessionRegistry,
) -> None:
    def unknown_message(principal: str) -> str:
        with pytest.raises(errors.SessionNotFound) as info:
            registry.get(PROPOSED, principal=principal)
        return info.value.message

    before = unknown_message("bob")
    alice = registry.open("ci", principal="alice", session_id=PROPOSED)
    # Bob learns nothing from a lookup or from proposing Alice's id.
    assert unknown_message("bob") == before
    bob = registry.open("ci", principal="bob", session_id=PROPOSED)
    assert bob is not alice and bob.wire_id == alice.wire_id == PROPOSED
    # Unique inside the daemon (pool owner, folder); never shown to Bob.
    assert bob.id != alice.id and bob.directory != alice.directory
    assert registry.get(PROPOSED, principal="alice") is alice
    assert registry.get(PROPOSED, principal="bob") is bob
    assert unknown_message("carol") == before
    assert {s.principal for s in registry.named(PROPOSED)} == {"alice", "bob"}
    assert registry.named(PROPOSED, "bob") == [bob]

    registry.close(PROPOSED, principal="alice")
    assert registry.get(PROPOSED, principal="bob") is bob
    # Alice's ended id is hers alone: Carol may still propose it.
    carol = registry.open("ci", principal="carol", session_id=PROPOSED)
    assert carol.wire_id == PROPOSED
    with pytest.raises(errors.SessionNotFound, match="has ended: was closed"):
        registry.get(PROPOSED, principal="alice")


def test_concurrent_proposals_of_one_id_open_one_session(registry: SessionRegistry) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def propose() -> None:
        barrier.wait()
        try:
            registry.open("ci", principal="alice", session_id=PROPOSED)
            outcomes.append("opened")
        except errors.SessionExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=propose) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(outcomes) == ["exists"] * 7 + ["opened"]
    assert len(registry) == 1


def test_an_unknown_session_names_the_daemon_and_says_to_reopen(
    registry: SessionRegistry,
) -> None:
    with pytest.raises(errors.SessionNotFound) as info:
        registry.get(PROPOSED, principal="alice")
    assert info.value.message == (
        f"session {PROPOSED!r} is unknown to this daemon (d-7): open a new session (the "
        "daemon that held it may have stopped or been lost, or it ended long ago)"
    )


# ----------------------------------------------------------- the header --


def test_a_header_equal_to_the_request_or_absent_passes() -> None:
    check_session_header([("authorization", "x")], PROPOSED, "session_id")
    check_session_header([(SESSION_HEADER, PROPOSED)], PROPOSED, "session_id")
    check_session_header([(SESSION_HEADER, PROPOSED.encode())], PROPOSED, "session_id")
    check_session_header(None, "", "session_id")


@pytest.mark.parametrize(
    ("request_id", "said"),
    [("B" * 32, f"is {'B' * 32!r}"), ("", "is empty")],
)
def test_a_header_naming_another_session_is_invalid_argument(request_id: str, said: str) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        check_session_header([(SESSION_HEADER, PROPOSED)], request_id, "context.session_id")
    assert info.value.status.name == "INVALID_ARGUMENT"
    assert info.value.message == (
        f"context.session_id {said} but the metadata {SESSION_HEADER} names {PROPOSED!r}: a "
        "proxy routes the call by the header, so both must name the same session"
    )


def test_a_header_given_twice_must_agree_with_itself() -> None:
    same = [(SESSION_HEADER, PROPOSED), (SESSION_HEADER, PROPOSED)]
    assert header_session(same) == PROPOSED
    with pytest.raises(errors.InvalidRequest, match=re.escape("given 2 different values")):
        header_session([(SESSION_HEADER, PROPOSED), (SESSION_HEADER, "B" * 32)])
    assert header_session([("other", "x")]) is None


# ------------------------------------------------------------ daemon id --


def test_the_daemon_id_defaults_to_the_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from buildd_server.daemon.cli import config_from_args

    monkeypatch.delenv("BUILDD_DAEMON_ID", raising=False)
    assert config_from_args([]).daemon_id == socket.gethostname()[:64]
    assert config_from_args(["--daemon-id", "buildd-7"]).daemon_id == "buildd-7"
    monkeypatch.setenv("BUILDD_DAEMON_ID", "from.env_1")
    assert config_from_args([]).daemon_id == "from.env_1"


@pytest.mark.parametrize("bad", ["-lead", "has space", "x" * 65, "é", ""])
def test_a_malformed_daemon_id_is_a_usage_error(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from buildd_server.daemon.cli import config_from_args

    if not bad:
        # Empty means "the default", not an error.
        assert config_from_args(["--daemon-id", bad]).daemon_id
        return
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--daemon-id", bad])
    assert exited.value.code == 2
    assert "--daemon-id" in capsys.readouterr().err
