"""Fixtures for remote use: certificates, tokens, and daemons on TCP with TLS and tokens.

``remote`` is one daemon shared by the module's tests (they open their own
sessions); ``make_remote`` gives a test its own daemon when it must be
configured differently, killed or restarted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.daemon import short_tempdir
from support.remote import MakeRemote, Pki, RemoteDaemon, write_token_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def pki() -> Iterator[Pki]:
    folder = short_tempdir("bd-pki-")
    yield Pki.make(folder)


@pytest.fixture(scope="session")
def token_file(pki: Pki) -> Path:
    return write_token_file(pki.ca.parent / "tokens")


@pytest.fixture(scope="session")
def allowed_root() -> Path:
    """The one folder remote principals may name by path (--allow-path)."""
    return short_tempdir("bd-allowed-")


@pytest.fixture(scope="module")
def remote(
    wheelhouse: Path, pki: Pki, token_file: Path, allowed_root: Path
) -> Iterator[RemoteDaemon]:
    daemon = RemoteDaemon(
        wheelhouse,
        pki,
        token_file,
        args=["--admin", "ops", "--allow-path", str(allowed_root)],
    ).start()
    assert isinstance(daemon, RemoteDaemon)
    yield daemon
    daemon.cleanup()


@pytest.fixture
def make_remote(wheelhouse: Path, pki: Pki, token_file: Path) -> Iterator[MakeRemote]:
    started: list[RemoteDaemon] = []

    def make(args: tuple[str, ...] = (), *, start: bool = True, **kwargs: object) -> RemoteDaemon:
        tokens = kwargs.pop("tokens", token_file)
        daemon = RemoteDaemon(wheelhouse, pki, tokens, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        daemon.cleanup()
