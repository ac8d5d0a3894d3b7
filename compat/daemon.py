"""A private buildd daemon for the corpus: this checkout's, on a short Unix socket."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .corpus import REPO
from .frontends import IndexOptions, tail

DAEMON_READY_TIMEOUT = 60.0


class Daemon:
    """A private ``buildd-server`` on a short Unix socket path, stopped on exit."""

    def __init__(self, index: IndexOptions, extra_args: Sequence[str] = ()) -> None:
        self.index = index
        self.extra_args = list(extra_args)
        # Unix socket paths are limited to 107 bytes: keep it short.
        self.root = Path(tempfile.mkdtemp(prefix="bdc-", dir="/tmp"))
        self.address = f"unix://{self.root / 's.sock'}"
        self.log_path = self.root / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "buildd_server",
            "--address",
            self.address,
            "--state-dir",
            str(self.root / "state"),
            "--log-format",
            "json",
            *self.index.daemon_args(),
            *self.extra_args,
        ]

    def start(self) -> Daemon:
        import grpc

        # This checkout's daemon, whether or not (or however) it is installed.
        env = dict(os.environ)
        paths = [str(REPO / "proto"), str(REPO / "client"), str(REPO / "server")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + DAEMON_READY_TIMEOUT
        with grpc.insecure_channel(self.address) as channel:
            ready = grpc.channel_ready_future(channel)
            while True:
                try:
                    ready.result(timeout=1.0)
                    break
                except grpc.FutureTimeoutError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"the daemon did not start ({' '.join(self.command())}):\n"
                            f"{tail(self.log())}"
                        ) from None
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process is not None and self.exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.exit_code = self.process.wait()
        return self.exit_code

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# ----------------------------------------------------------------- check --
