"""The identity rules in isolation: token files, principals, paths, listening policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildd_client.addresses import parse_address
from buildd_client.credentials import Credentials, read_token
from buildd_server import errors
from buildd_server.access.auth import (
    ANONYMOUS,
    LOCAL,
    Authenticator,
    bearer_token,
    check_listen,
    is_local_peer,
    parse_tokens,
)

TOKEN = "t" * 20


def test_token_file_lines_become_principals() -> None:
    text = f"# comment\n\nci:{TOKEN}1\n  {TOKEN}2  \nrelease@team: {TOKEN}3:with-colon\n"
    tokens = parse_tokens(text, "tokens")
    assert [(t.name, t.line) for t in tokens] == [
        ("ci", 3),
        ("token-4", 4),
        ("release@team", 5),
    ]
    auth = Authenticator(tokens)
    assert auth.match(f"{TOKEN}1") == "ci"
    assert auth.match(f"{TOKEN}2") == "token-4"
    assert auth.match(f"{TOKEN}3:with-colon") == "release@team"
    assert auth.match(f"{TOKEN}9") is None
    assert auth.match(f"{TOKEN}1 ") is None
    assert auth.match(None) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no token"),
        ("# only a comment\n", "holds no token"),
        ("short\n", "tokens:1: the token of 'token-1' must be at least 16"),
        (f"ci:{TOKEN}\nci:{TOKEN}x\n", "tokens:2: principal 'ci' is already named on line 1"),
        (f"a:{TOKEN}\nb:{TOKEN}\n", "tokens:2: the token of 'b' repeats the one on line 1"),
        (f"bad name:{TOKEN}\n", "tokens:1: principal name 'bad name' must be"),
        (f"ci:{TOKEN} {TOKEN}\n", "without spaces"),
    ],
)
def test_bad_token_files_are_refused_naming_the_line(text: str, problem: str) -> None:
    with pytest.raises(errors.DaemonStartupError) as caught:
        parse_tokens(text, "tokens")
    assert problem in str(caught.value)
    # The message never repeats a token.
    assert TOKEN not in str(caught.value)


def test_admins_must_be_known_principals() -> None:
    tokens = parse_tokens(f"ci:{TOKEN}\n", "tokens")
    with pytest.raises(errors.DaemonStartupError, match="'root' is not a principal"):
        Authenticator(tokens, admins=["root"])
    with pytest.raises(errors.DaemonStartupError, match="without --token-file"):
        Authenticator((), admins=["ci"])


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("authorization", f"Bearer {TOKEN}")], TOKEN),
        ([("authorization", f"bearer   {TOKEN}  ")], TOKEN),
        ([("user-agent", "x"), ("authorization", f"Bearer {TOKEN}")], TOKEN),
        ([("authorization", f"Basic {TOKEN}")], None),
        ([("authorization", "Bearer ")], None),
        ([], None),
        (None, None),
    ],
)
def test_bearer_token(metadata: list[tuple[str, str]] | None, expected: str | None) -> None:
    assert bearer_token(metadata) == expected


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("unix:", True),
        ("unix:/run/buildd.sock", True),
        ("ipv4:127.0.0.1:5000", True),
        ("ipv4:127.8.9.1:5000", True),
        ("ipv6:[::1]:5000", True),
        ("ipv6:[::ffff:127.0.0.1]:5000", True),
        ("ipv4:10.0.0.7:5000", False),
        ("ipv6:[2001:db8::1]:5000", False),
        ("unknown:thing", False),
    ],
)
def test_local_peers(peer: str, local: bool) -> None:
    assert is_local_peer(peer) is local


def test_principals_without_and_with_tokens() -> None:
    open_daemon = Authenticator()
    assert open_daemon.identify([], "unix:") == open_daemon.identify([], "ipv4:127.0.0.1:1")
    local = open_daemon.identify([], "unix:")
    assert local is not None and (local.name, local.remote, local.admin) == (LOCAL, False, True)
    stranger = open_daemon.identify([], "ipv4:10.1.1.1:9")
    assert stranger is not None
    assert (stranger.name, stranger.remote, stranger.admin) == (ANONYMOUS, True, False)

    tokens = parse_tokens(f"ci:{TOKEN}\nops:{TOKEN}x\n", "tokens")
    guarded = Authenticator(tokens, admins=["ops"])
    # With tokens even a local caller needs one, and counts as remote for paths.
    assert guarded.identify([], "unix:") is None
    ci = guarded.identify([("authorization", f"Bearer {TOKEN}")], "unix:")
    assert ci is not None and (ci.name, ci.remote, ci.admin) == ("ci", True, False)
    ops = guarded.identify([("authorization", f"Bearer {TOKEN}x")], "ipv4:10.0.0.1:1")
    assert ops is not None and ops.admin


def test_remote_principals_name_only_allowed_paths(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "proj").mkdir(parents=True)
    (tmp_path / "allowed-not").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "allowed-not")
    tokens = parse_tokens(f"ci:{TOKEN}\n", "tokens")
    auth = Authenticator(tokens, allow_paths=[allowed])
    ci = auth.identify([("authorization", f"Bearer {TOKEN}")], "unix:")
    assert ci is not None
    auth.check_path(ci, str(allowed), "f")
    auth.check_path(ci, str(allowed / "proj"), "f")
    auth.check_path(ci, str(allowed / "proj" / "new" / "dist"), "f")  # need not exist
    auth.check_path(ci, "", "f")  # nothing named, nothing checked
    for outside in (
        tmp_path / "allowed-not",  # a prefix of the name is not the folder
        allowed / "escape" / "x",  # a link inside that leads out
        allowed / ".." / "allowed-not",
        Path("/etc"),
    ):
        with pytest.raises(errors.PermissionDenied) as caught:
            auth.check_path(ci, str(outside), "context.source.path")
        assert str(outside) in caught.value.message
        assert caught.value.message.startswith("context.source.path: principal 'ci'")
    local = Authenticator(allow_paths=[allowed]).identify([], "unix:")
    assert local is not None
    Authenticator().check_path(local, "/etc", "f")  # a local principal names any path


def test_listening_policy() -> None:
    tokens = Authenticator(parse_tokens(f"ci:{TOKEN}\n", "tokens"))
    none = Authenticator()
    public = parse_address("0.0.0.0:7000")
    with pytest.raises(errors.DaemonStartupError, match="without TLS and tokens is refused"):
        check_listen(public, none, tls=False, insecure=False)
    with pytest.raises(errors.DaemonStartupError, match="without tokens is refused"):
        check_listen(public, none, tls=True, insecure=False)
    with pytest.raises(errors.DaemonStartupError, match="without TLS is refused"):
        check_listen(public, tokens, tls=False, insecure=False)
    check_listen(public, tokens, tls=True, insecure=False)
    check_listen(public, none, tls=False, insecure=True)
    check_listen(parse_address("127.0.0.1:7000"), none, tls=False, insecure=False)
    check_listen(parse_address("[::1]:7000"), none, tls=True, insecure=False)
    with pytest.raises(errors.DaemonStartupError, match="TLS is for TCP"):
        check_listen(parse_address("unix:///tmp/x.sock"), none, tls=True, insecure=False)


def test_client_token_sources(tmp_path: Path) -> None:
    file = tmp_path / "token"
    file.write_text(f"# mine\n\nci:{TOKEN}\n")
    assert read_token(file) == TOKEN
    file.write_text(f"{TOKEN}\n")
    assert Credentials.from_options(token_file=str(file), environ={}).token == TOKEN
    env = {"BUILDD_TOKEN": "from-env-0123456789"}
    assert Credentials.from_options(environ=env).token == "from-env-0123456789"
    # An explicit file wins over the variable.
    assert Credentials.from_options(token_file=str(file), environ=env).token == TOKEN
    assert Credentials.from_options(environ={}).token is None
    file.write_text("# none\n")
    with pytest.raises(ValueError, match="holds no token"):
        read_token(file)
    with pytest.raises(ValueError, match="go together"):
        Credentials.from_options(tls_cert=str(file), environ={})


def test_client_never_sends_a_token_in_clear_text_to_a_remote_address() -> None:
    creds = Credentials(token=TOKEN)
    with pytest.raises(ValueError, match="clear text"):
        creds.channel(parse_address("build-farm.example.org:7000"), [])
    # Local addresses carry it without TLS (the daemon there needs no TLS).
    creds.channel(parse_address("127.0.0.1:7000"), []).close()
    creds.channel(parse_address(f"unix://{os.getcwd()}/x.sock"), []).close()
    with pytest.raises(ValueError, match="TLS"):
        Credentials(tls_ca=b"x").channel(parse_address("unix:///tmp/x.sock"), [])
