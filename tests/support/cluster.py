"""Three daemons on loopback behind the reference nginx (deploy/nginx/nginx.conf).

The daemons listen on fixed ports of 127.77.0.1, below the kernel's
ephemeral range, so that no port-0 socket of another test can take them. The
addresses are fixed because nginx builds its hash ring from the servers'
names (``HOST:PORT``): with fixed names and the fixed, seeded session ids of
the tests, which daemon each session lands on is the same on every run, and
the spread the tests assert cannot fail by chance. Runs of these tests on one
machine take turns through a file lock.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from buildd_client import Client
from buildd_client.credentials import Credentials
from support.daemon import DaemonProcess
from support.ketama import Ring
from support.nginx import Nginx
from support.remote import TOKENS, free_port

HOST = "127.77.0.1"
PROXY = f"{HOST}:29100"
HEALTH = f"{HOST}:29109"
DAEMON_PORTS = (29101, 29102, 29103)
SPARE_PORT = 29104
SESSIONS = 60
SEED = 20261201
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
LOCK = Path("/tmp/buildd-scaleout-tests.lock")


def seeded_session_ids(count: int = SESSIONS, seed: int = SEED) -> list[str]:
    """``count`` well-formed session ids, the same on every run (not secret: tests only)."""
    rng = random.Random(seed)
    ids: list[str] = []
    while len(ids) < count:
        candidate = "".join(rng.choice(_ALPHABET) for _ in range(32))
        if candidate[0].isalnum():
            ids.append(candidate)
    return ids


class ScaleDaemon(DaemonProcess):
    """A daemon on a fixed loopback port with tokens, a daemon id and metrics."""

    def __init__(self, wheelhouse: Path, name: str, port: int, tokens: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        super().__init__(
            wheelhouse,
            args=[
                "--daemon-id",
                name,
                "--token-file",
                str(tokens),
                "--metrics-address",
                f"127.0.0.1:{self.metrics_port}",
                # These daemons prove routing, not sandboxing: the probe
                # backends must write their evidence to the test's own folder,
                # which a sandboxed (remote) principal's hook cannot reach
                # (tests/security proves that).
                "--containment",
                "pid",
            ],
        )
        self.address = f"{HOST}:{port}"

    def client(self, principal: str = "alice") -> Client:
        """A direct connection, around the proxy (for checking where things are)."""
        return Client(
            self.address, autostart=False, credentials=Credentials(token=TOKENS[principal])
        )

    def launch(self) -> None:
        env = dict(os.environ)
        repo = Path(__file__).resolve().parents[2]
        paths = [str(repo / "proto"), str(repo / "client"), str(repo / "server")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )


@dataclass
class Cluster:
    daemons: list[ScaleDaemon]
    nginx: Nginx
    ca: Path
    tokens: Path
    folder: Path
    # session id -> daemon name, as the proxy's OpenSession answers said.
    placement: dict[str, str] = field(default_factory=dict)

    def by_name(self, name: str) -> ScaleDaemon:
        return next(d for d in self.daemons if d.name == name)

    def by_address(self) -> dict[str, str]:
        return {d.address: d.name for d in self.daemons}

    def ring(self) -> Ring:
        return Ring([d.address for d in self.daemons])

    def credentials(self, principal: str = "alice") -> Credentials:
        return Credentials(tls_ca=self.ca.read_bytes(), token=TOKENS[principal])

    def client(self, principal: str = "alice") -> Client:
        """A client of the proxy, with TLS as the deployment has it."""
        return Client(PROXY, autostart=False, credentials=self.credentials(principal))


def kill(daemon: ScaleDaemon) -> None:
    """SIGKILL, as a lost machine or an OOM kill would."""
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(timeout=30)
