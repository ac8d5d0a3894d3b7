"""Fixtures that start real daemons.

``daemon`` is one daemon shared by the whole test session (tests that use it
open their own sessions, so they cannot see each other's environments);
``make_daemon`` gives a test its own daemon when it needs to stop, kill or
misconfigure it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from buildd_client import Client
from support.daemon import DaemonProcess

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.integration

# make_daemon: tests/conftest.py.
MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture(scope="session")
def daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse, args=["--max-envs-per-key", "2"]).start()
    yield process
    process.cleanup()


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.address, autostart=False) as value:
        yield value
