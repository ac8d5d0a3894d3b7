"""Daemons on TCP with TLS and tokens, certificates made on the spot, and probes.

Certificates come from ``trustme``: a throwaway CA per test session, a server
certificate for ``localhost`` and ``127.0.0.1``, and a client certificate for
mutual TLS. Nothing here touches the machine's trust store.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import trustme

from buildd_client import Client
from buildd_client.credentials import Credentials
from support.daemon import READY_TIMEOUT, DaemonProcess

if TYPE_CHECKING:
    from collections.abc import Sequence

# Principals of the shared token file: name -> token.
TOKENS = {
    "alice": "alice-token-0123456789abcdef",
    "bob": "bob-token-0123456789abcdef0",
    "ops": "ops-token-0123456789abcdef0",
}
UNNAMED = "unnamed-token-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    """PEM files of one throwaway CA, a server and a client certificate."""

    ca: Path
    server: Path  # key and chain in one file
    client: Path  # key and chain in one file
    other_ca: Path  # a CA that signed nothing here

    @classmethod
    def make(cls, folder: Path) -> Pki:
        folder.mkdir(parents=True, exist_ok=True)
        ca, other = trustme.CA(), trustme.CA()
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        other.cert_pem.write_to_path(str(folder / "other-ca.pem"))
        server = ca.issue_cert("localhost", "127.0.0.1")
        server.private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
        client = ca.issue_cert("ci-agent@example.org")
        client.private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))
        return cls(
            folder / "ca.pem", folder / "server.pem", folder / "client.pem", folder / "other-ca.pem"
        )


def write_token_file(path: Path) -> Path:
    """The token file every remote test daemon uses (``TOKENS`` plus ``UNNAMED``)."""
    lines = ["# principals of the remote tests", ""]
    lines += [f"{name}:{token}" for name, token in TOKENS.items()]
    lines.append(UNNAMED)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RemoteDaemon(DaemonProcess):
    """A daemon on 127.0.0.1 with TLS (the test CA) and the test tokens."""

    def __init__(
        self,
        wheelhouse: Path | None,
        pki: Pki,
        token_file: Path | None,
        *,
        args: Sequence[str] = (),
        client_ca: bool = False,
        metrics: bool = True,
        root: Path | None = None,
    ) -> None:
        self.pki = pki
        self.client_ca = client_ca
        self.metrics_port = free_port() if metrics else 0
        extra = ["--tls-cert", str(pki.server), "--tls-key", str(pki.server)]
        if token_file is not None:
            extra += ["--token-file", str(token_file)]
        if client_ca:
            extra += ["--tls-client-ca", str(pki.ca)]
        if metrics:
            extra += ["--metrics-address", f"127.0.0.1:{self.metrics_port}"]
        super().__init__(wheelhouse, args=[*extra, *args], root=root)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def credentials(self, principal: str | None = "alice", *, cert: bool = False) -> Credentials:
        return Credentials(
            tls_ca=self.pki.ca.read_bytes(),
            tls_cert=self.pki.client.read_bytes() if cert or self.client_ca else None,
            tls_key=self.pki.client.read_bytes() if cert or self.client_ca else None,
            token=TOKENS[principal] if principal else None,
        )

    def client(self, principal: str | None = "alice") -> Client:
        return Client(self.address, autostart=False, credentials=self.credentials(principal))

    def channel(self) -> grpc.Channel:
        """A TLS channel without a token (a raw stub test adds its own metadata)."""
        creds = self.credentials(None)
        return grpc.secure_channel(
            self.address,
            grpc.ssl_channel_credentials(creds.tls_ca, creds.tls_key, creds.tls_cert),
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            with self.channel() as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    return
                except grpc.FutureTimeoutError:
                    continue
        raise RuntimeError(f"daemon did not start:\n{self.log()}")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of the daemon's Prometheus metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
        match = re.search("^" + pattern + "$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` size field (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


MakeRemote = Callable[..., RemoteDaemon]
