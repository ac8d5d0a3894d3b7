"""Fixtures of the reliability tests: real daemons, each test its own when it hurts one."""

from __future__ import annotations

from collections.abc import Callable

from support.daemon import DaemonProcess

# make_daemon: tests/conftest.py.
MakeDaemon = Callable[..., DaemonProcess]
