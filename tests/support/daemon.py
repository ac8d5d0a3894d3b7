"""Start and stop a real ``buildd-server`` process for integration tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from collections.abc import Sequence

READY_TIMEOUT = 60.0


def short_tempdir(prefix: str = "bd-") -> Path:
    """A folder with a short path: unix socket paths are limited to 107 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class DaemonProcess:
    """One daemon on a private socket and state folder, fed from the test wheelhouse."""

    def __init__(
        self,
        wheelhouse: Path | None,
        *,
        args: Sequence[str] = (),
        root: Path | None = None,
        env: dict[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.root = root or short_tempdir()
        self.socket = self.root / "buildd.sock"
        self.state_dir = self.root / "state"
        self.log_path = self.root / "daemon.log"
        self.address = f"unix://{self.socket}"
        self.args = list(args)
        self.wheelhouse = wheelhouse
        self.env = env
        # A command prefix the daemon runs under (it must exec, keeping the pid).
        self.wrapper = list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            *self.wrapper,
            sys.executable,
            "-m",
            "buildd_server",
            "--address",
            self.address,
            "--state-dir",
            str(self.state_dir),
            "--log-format",
            "json",
        ]
        if self.wheelhouse is not None:
            cmd += ["--no-index", "--find-links", str(self.wheelhouse)]
        return cmd + self.args

    def environment(self) -> dict[str, str]:
        """The daemon's variables: ``env`` (or the test's), running this checkout's code."""
        env = dict(os.environ if self.env is None else self.env)
        # Tests run the daemon from this checkout whether or not it is installed.
        repo = Path(__file__).resolve().parents[2]
        paths = [str(repo / "proto"), str(repo / "client"), str(repo / "server")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.environment(),
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            ready = grpc.channel_ready_future(channel)
            try:
                ready.result(timeout=READY_TIMEOUT)
            except grpc.FutureTimeoutError as exc:
                raise RuntimeError(f"daemon did not start:\n{self.log()}") from exc

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the daemon and wait for it; return its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
