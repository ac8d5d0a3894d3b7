"""Daemon addresses, the per-user default, and the socket's private folder."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from buildd_client.addresses import (
    Address,
    default_address,
    default_socket_path,
    ensure_private_dir,
    parse_address,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize(
    ("text", "expected", "target"),
    [
        ("unix:/run/b.sock", Address("unix", path="/run/b.sock"), "unix:///run/b.sock"),
        ("unix:///run/b.sock", Address("unix", path="/run/b.sock"), "unix:///run/b.sock"),
        ("/run/b.sock", Address("unix", path="/run/b.sock"), "unix:///run/b.sock"),
        ("/run/../run/b.sock", Address("unix", path="/run/b.sock"), "unix:///run/b.sock"),
        ("127.0.0.1:50051", Address("tcp", host="127.0.0.1", port=50051), "127.0.0.1:50051"),
        ("build-host:7000", Address("tcp", host="build-host", port=7000), "build-host:7000"),
        ("[::1]:50051", Address("tcp", host="::1", port=50051), "[::1]:50051"),
        ("localhost:0", Address("tcp", host="localhost", port=0), "localhost:0"),
    ],
)
def test_parse_address(text: str, expected: Address, target: str) -> None:
    parsed = parse_address(text)
    assert parsed == expected
    assert parsed.target == target
    assert str(parsed) == target
    # The target parses back to the same address.
    assert parse_address(parsed.target) == parsed


def test_relative_unix_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_address("unix:b.sock").path == str(tmp_path / "b.sock")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected"),
        ("unix:", "empty"),
        ("unix://relative/b.sock", "must be absolute"),
        ("build-host", "expected"),
        (":50051", "expected"),
        ("host:port", "not a number"),
        ("host:70000", "not a number"),
        ("host:-1", "not a number"),
        ("::1:50051", "brackets"),
        ("[::1]", "IPV6"),
        ("[not-v6]:80", "not an IPv6"),
        ("bad host:80", "not a host name"),
        ("/" + "x" * 200, "longer than"),
    ],
)
def test_invalid_address_names_the_value(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_address(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "local"),
    [
        ("/run/b.sock", True),
        ("127.0.0.1:1", True),
        ("127.1.2.3:1", True),
        ("[::1]:1", True),
        ("localhost:1", True),
        ("10.0.0.5:1", False),
        ("build-host:1", False),
    ],
)
def test_is_local(text: str, local: bool) -> None:
    assert parse_address(text).is_local is local


def test_default_address_uses_the_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_address() == f"unix://{tmp_path}/buildd/buildd.sock"
    assert parse_address(default_address()).path == default_socket_path()


@pytest.mark.parametrize("value", [None, "", "relative/run", "/does/not/exist"])
def test_default_address_falls_back_to_tmp(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", value)
    assert default_address() == f"unix:///tmp/buildd-{os.getuid()}/buildd.sock"


def test_private_dir_is_created_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        folder = ensure_private_dir(tmp_path / "run" / "buildd")
    finally:
        os.umask(old)
    assert folder.is_dir()
    assert folder.stat().st_mode & 0o777 == 0o700
    # Idempotent.
    assert ensure_private_dir(folder) == folder


def test_private_dir_with_open_permissions_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "buildd"
    folder.mkdir()
    folder.chmod(0o755)
    with pytest.raises(PermissionError, match=r"mode is 0755.*chmod 700") as info:
        ensure_private_dir(folder)
    assert str(folder) in str(info.value)


def test_private_dir_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "buildd"
    folder.mkdir(mode=0o700)
    owner = folder.stat().st_uid
    monkeypatch.setattr(os, "getuid", lambda: owner + 1)
    with pytest.raises(PermissionError, match=f"belongs to uid {owner}"):
        ensure_private_dir(folder)


def test_private_dir_as_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "buildd"
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="symbolic link"):
        ensure_private_dir(link)


def test_private_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buildd"
    path.write_text("")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        ensure_private_dir(path)
