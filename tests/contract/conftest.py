"""Fixtures of the contract tests: real daemons, as a client in any language sees them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from buildd_client import Client
from support.daemon import DaemonProcess

pytestmark = pytest.mark.integration

MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture(scope="module")
def daemon(wheelhouse: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(wheelhouse).start()
    yield process
    process.cleanup()


@pytest.fixture
def make_daemon(wheelhouse: Path) -> Iterator[MakeDaemon]:
    started: list[DaemonProcess] = []

    def make(args: Sequence[str] = (), *, start: bool = True, **kwargs: object) -> DaemonProcess:
        process = DaemonProcess(wheelhouse, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process.start() if start else process

    yield make
    for process in started:
        process.cleanup()


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[Client]:
    with Client(daemon.address, autostart=False) as value:
        yield value
