"""Fixtures for the security suite: daemons, hostile projects, and the escapees' listener.

The tests here try, from the inside (a hostile build backend) and from the
outside (another local user, hostile archives), to reach what a request must
not reach; each asserts on the evidence of what was reached. Tests that need
bubblewrap skip, saying so, only where ``bwrap`` is not installed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.daemon import DaemonProcess, short_tempdir
from support.hostile import Escapees
from support.remote import Pki, RemoteDaemon, write_token_file

pytestmark = pytest.mark.integration

# make_daemon: tests/conftest.py.
MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def escapees() -> Iterator[Escapees]:
    # Not under /tmp: a sandboxed hook has a private /tmp, but sees the rest
    # of the system read-only, and connecting to a socket needs no write.
    folder = Path(tempfile.mkdtemp(prefix="bd-esc-", dir="/var/tmp"))
    folder.chmod(0o755)
    listener = Escapees(folder)
    yield listener
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki.make(short_tempdir("bd-pki-"))


@pytest.fixture(scope="session")
def token_file(pki: Pki) -> Path:
    return write_token_file(pki.ca.parent / "tokens")


@pytest.fixture
def allowed_root() -> Iterator[Path]:
    """A folder remote principals may name by path (--allow-path); not under /tmp."""
    folder = Path(tempfile.mkdtemp(prefix="bd-allowed-", dir="/var/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def farm(
    wheelhouse: Path, pki: Pki, token_file: Path, allowed_root: Path
) -> Iterator[RemoteDaemon]:
    """A shared daemon: TLS, the test tokens (ops is the admin), one allowed folder."""
    daemon = RemoteDaemon(
        wheelhouse,
        pki,
        token_file,
        args=["--admin", "ops", "--allow-path", str(allowed_root)],
        metrics=False,
    )
    daemon.start()
    yield daemon
    daemon.cleanup()
