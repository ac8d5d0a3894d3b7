"""Fixtures of the contract tests: real daemons, as a client in any language sees them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from buildd_client import Client
from support.daemon import DaemonProcess

pytestmark = pytest.mark.integration

# make_daemon: tests/conftest.py.
MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse).start()
    yield process
    process.cleanup()


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.address, autostart=False) as value:
        yield value
