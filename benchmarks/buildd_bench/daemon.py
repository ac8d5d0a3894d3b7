"""A buildd-server started by the harness, on a private socket with its own state folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from .settings import INDEX_URL, console_script, log, tail, tool_environ

if TYPE_CHECKING:
    from buildd_client import Client


class Daemon:
    """A buildd-server started by the harness on a private socket with its own state folder."""

    def __init__(
        self,
        folder: Path,
        name: str = "daemon",
        *,
        tcp: bool = False,
        extra_args: Sequence[str] = (),
        state_dir: Path | None = None,
    ) -> None:
        self.folder = folder
        self.name = name
        self.socket = folder / f"{name}.sock"
        self.state_dir = state_dir or folder / f"{name}-state"
        self.log_path = folder / f"{name}.log"
        self.tcp_port = free_port() if tcp else 0
        self.address = f"127.0.0.1:{self.tcp_port}" if tcp else f"unix://{self.socket}"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> None:
        command = [
            console_script("buildd-server"),
            "--address",
            self.address,
            "--state-dir",
            str(self.state_dir),
            "--index-url",
            INDEX_URL,
            # Longer than any benchmark: the warm session must not expire
            # between two rounds on a slow machine.
            "--session-ttl",
            "86400",
            *self.extra_args,
        ]
        # A restart on the same state folder appends to the same log.
        self._log = self.log_path.open("ab" if self._starts else "wb")
        self._starts += 1
        self.process = subprocess.Popen(
            command,
            env=tool_environ(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"buildd-server exited with {self.process.returncode}:\n{tail(self.log_path)}"
                )
            if self.tcp_port or self.socket.exists():
                try:
                    with self.client() as client:
                        client.status()
                    return
                except Exception as exc:
                    last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        raise SystemExit(
            f"buildd-server did not answer at {self.address} within {timeout:.0f}s "
            f"({last_error}):\n{tail(self.log_path)}"
        )

    def client(self) -> Client:
        from buildd_client import Client

        return Client(self.address, autostart=False)

    def rss_kib(self) -> int:
        """VmRSS of the daemon process, from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS in /proc/{self.pid}/status")

    def cpu_seconds(self) -> float:
        """utime + stime + cutime + cstime of the daemon: itself and its reaped children."""
        raw = Path(f"/proc/{self.pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2 :].split()
        # Fields 14-17 of proc(5); ``fields`` starts at field 3.
        ticks = sum(int(value) for value in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log(f"buildd-server {self.pid} ignored SIGTERM for 60s; killing it")
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
