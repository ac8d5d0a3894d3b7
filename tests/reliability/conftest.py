"""Fixtures of the reliability tests: real daemons, each test its own when it hurts one."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import pytest

from support.daemon import DaemonProcess

if TYPE_CHECKING:
    from pathlib import Path

MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(wheelhouse: Path) -> Iterator[MakeDaemon]:
    """Start a daemon of the test's own (killed and removed at the end of the test)."""
    started: list[DaemonProcess] = []

    def make(args: Sequence[str] = (), *, start: bool = True, **kwargs: object) -> DaemonProcess:
        process = DaemonProcess(wheelhouse, args=args, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process.start() if start else process

    yield make
    for process in started:
        process.cleanup()
