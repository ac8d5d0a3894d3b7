"""Shared pytest setup for every test directory."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

# ----------------------------------------------------------------- imports --
# tests/ goes on sys.path so that tests import their helpers as ``support.*``.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from support.daemon import DaemonProcess  # noqa: E402
from support.wheelhouse import ensure_wheelhouse  # noqa: E402

MakeDaemon = Callable[..., DaemonProcess]

# ---------------------------------------------------------------- fixtures --


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """Local wheels (setuptools, hatchling, flit_core...) to install with --no-index."""
    return ensure_wheelhouse()


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
