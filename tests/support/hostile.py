"""Hostile projects, the evidence they leave, and a listener their escapees report to."""

from __future__ import annotations

import json
import select
import shutil
import socket
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterable

    from buildd.v1 import buildd_pb2 as pb

HOSTILE_SOURCE = Path(__file__).with_name("hostile_backend.py")
PREFIX = "HOSTILE "

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None,
    reason="bubblewrap (bwrap) is not installed: apt-get install bubblewrap",
)

# A setup.py for setuptools (a backend the fork server serves): the hostile
# probes of hostile.json run wherever setup.py runs, in the hook's process.
HOSTILE_SETUP_PY = """\
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "_hostile"))
import hostile_backend
hostile_backend._probe("setup.py")
import setuptools
setuptools.setup()
"""


def hostile_project(root: Path, name: str = "hostile-demo", **config: Any) -> Path:
    """A project whose in-tree backend runs the probes of ``config`` in every hook."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "_hostile").mkdir(exist_ok=True)
    shutil.copy(HOSTILE_SOURCE, root / "_hostile" / "hostile_backend.py")
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = []
            build-backend = "hostile_backend"
            backend-path = ["_hostile"]
            """
        )
    )
    configure(root, name=name, **config)
    return root


def hostile_setuptools_project(root: Path, name: str = "hostile-setuptools", **config: Any) -> Path:
    """A setuptools project (forked from the fork server when warm) running the probes."""
    hostile_project(root, name=name, **config)
    (root / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "1.0"

            [tool.setuptools]
            py-modules = []
            """
        )
    )
    (root / "setup.py").write_text(HOSTILE_SETUP_PY)
    return root


def configure(root: Path, **config: Any) -> None:
    (root / "hostile.json").write_text(json.dumps(config))


def records(events: Iterable[pb.Event]) -> list[dict[str, Any]]:
    """The probe records a call's log lines carried, in order."""
    found = []
    for event in events:
        if event.HasField("log") and event.log.text.startswith(PREFIX):
            found.append(json.loads(event.log.text[len(PREFIX) :]))
    return found


def reached(record: dict[str, Any], probe: str) -> dict[str, str]:
    """The targets of ``probe`` (write, read, list) that the hook did reach."""
    return {path: what for path, what in record[probe].items() if what.startswith("ok")}


class Escapees:
    """A Unix socket that hostile grandchildren connect to and hold while they live.

    A process's sockets close when it dies, so an end of file on a
    connection proves that the grandchild holding it is gone.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "escapees.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        self.path.chmod(0o777)
        self._server.listen(16)
        self.connections: list[tuple[socket.socket, str]] = []

    def accept(self, timeout: float = 30.0) -> str:
        """The next grandchild's greeting ("alive PID"); it has connected already."""
        self._server.settimeout(timeout)
        conn, _ = self._server.accept()
        conn.settimeout(timeout)
        greeting = b""
        while not greeting.endswith(b"\n"):
            chunk = conn.recv(64)
            if not chunk:
                break
            greeting += chunk
        self.connections.append((conn, greeting.decode().strip()))
        return greeting.decode().strip()

    def gone_now(self, index: int = -1) -> bool:
        """Whether that grandchild is dead at this very moment (no waiting)."""
        return self._eof(self.connections[index][0], 0.0)

    def gone_within(self, seconds: float, index: int = -1) -> bool:
        """Whether it dies within ``seconds`` (an event, bounded: no polling)."""
        return self._eof(self.connections[index][0], seconds)

    @staticmethod
    def _eof(conn: socket.socket, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            readable, _, _ = select.select([conn], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                return False
            try:
                data = conn.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                return True
            if not data:
                return True

    def close(self) -> None:
        for conn, _ in self.connections:
            conn.close()
        self._server.close()
