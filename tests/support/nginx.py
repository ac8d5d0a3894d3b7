"""Run the reference nginx configuration (deploy/nginx/nginx.conf) on this machine.

``render`` replaces only the lines that name places (pid and log files, temp
folders, listen addresses, certificates, the resolver, the daemons) and fails
when one of them is no longer found exactly once, so the tests keep running
the very file operators deploy. Everything else (the hash, timeouts, next
upstream, the gRPC error for a lost upstream, the health listener) is as
shipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

REFERENCE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "nginx.conf"
_TEMPS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_binary() -> str | None:
    """The nginx executable, or None (also looked for in sbin folders off PATH)."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _once(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    if count != 1:
        raise AssertionError(f"deploy/nginx/nginx.conf: {pattern!r} matched {count} times, not 1")
    return new


@dataclass(frozen=True)
class Listen:
    """Where the rendered proxy listens and with what certificate."""

    tls: str  # HOST:PORT of the TLS listener (the one clients use)
    health: str  # HOST:PORT of the plain-text health listener
    cert: Path | None  # key and chain in one PEM file; None: plain text on ``tls`` too


def render(
    folder: Path, listen: Listen, upstreams: Sequence[str], *, keepalive: bool = False
) -> str:
    """deploy/nginx/nginx.conf for daemons at ``upstreams`` (HOST:PORT each)."""
    text = REFERENCE.read_text()
    text = _once(text, r"^pid /tmp/nginx\.pid;$", f"pid {folder}/nginx.pid;")
    text = _once(text, r"^error_log /dev/stderr warn;$", f"error_log {folder}/error.log warn;")
    text = _once(
        text, r"^    access_log /dev/stdout buildd;$", f"    access_log {folder}/access.log buildd;"
    )
    for name in _TEMPS:
        text = _once(
            text,
            rf"^    {name}_temp_path /tmp/nginx-{name.replace('_', '-')};$",
            f"    {name}_temp_path {folder}/temp-{name};",
        )
    # Kubernetes DNS is not here; the daemons are given by address.
    text = _once(text, r"^    resolver kube-dns\..*;\n", "")
    servers = "".join(
        f"        server {address} max_fails=1 fail_timeout=5s;\n" for address in upstreams
    )
    text = _once(
        text,
        r"^        # daemons: begin\n(?:.*\n)*?        # daemons: end\n",
        f"        # daemons: begin\n{servers}        # daemons: end\n",
    )
    if keepalive:
        # Measured by tools/proxy_latency.py: cached connections to the daemons.
        text = _once(
            text, r"^        # daemons: end\n", "        # daemons: end\n        keepalive 32;\n"
        )
    if listen.cert is None:
        text = _once(
            text, r"^        listen 8443 ssl http2;$", f"        listen {listen.tls} http2;"
        )
        text = _once(text, r"^        ssl_certificate /etc/nginx/tls/tls\.crt;\n", "")
        text = _once(text, r"^        ssl_certificate_key /etc/nginx/tls/tls\.key;\n", "")
        text = _once(text, r"^        ssl_protocols .*;\n", "")
        text = _once(text, r"^        ssl_session_cache .*;\n", "")
    else:
        text = _once(
            text, r"^        listen 8443 ssl http2;$", f"        listen {listen.tls} ssl http2;"
        )
        text = _once(
            text,
            r"^        ssl_certificate /etc/nginx/tls/tls\.crt;$",
            f"        ssl_certificate {listen.cert};",
        )
        text = _once(
            text,
            r"^        ssl_certificate_key /etc/nginx/tls/tls\.key;$",
            f"        ssl_certificate_key {listen.cert};",
        )
    return _once(text, r"^        listen 8081 http2;$", f"        listen {listen.health} http2;")


class Nginx:
    """One nginx master process on a rendered configuration."""

    def __init__(
        self, folder: Path, listen: Listen, upstreams: Sequence[str], *, keepalive: bool = False
    ) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.binary = binary
        self.folder = folder
        self.listen = listen
        self.keepalive = keepalive
        self.conf = folder / "nginx.conf"
        folder.mkdir(parents=True, exist_ok=True)
        self.write(upstreams)
        self.process: subprocess.Popen[bytes] | None = None

    def write(self, upstreams: Sequence[str]) -> None:
        self.conf.write_text(render(self.folder, self.listen, upstreams, keepalive=self.keepalive))

    def _command(self, *extra: str) -> list[str]:
        cmd = [self.binary, "-p", str(self.folder), "-c", str(self.conf), "-e", "stderr"]
        # As root, workers would switch to "nobody", who cannot enter the test's
        # private folder; elsewhere the directive is ignored anyway.
        if os.geteuid() == 0:
            cmd += ["-g", "daemon off; user root;"]
        else:
            cmd += ["-g", "daemon off;"]
        return cmd + list(extra)

    def check(self) -> None:
        """``nginx -t``: the configuration parses and every directive is known."""
        result = subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"nginx -t failed:\n{result.stderr}")

    def start(self, timeout: float = 20.0) -> Nginx:
        self.check()
        log = (self.folder / "nginx.out").open("ab")
        self.process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + timeout
        for address in (self.listen.tls, self.listen.health):
            host, port = address.rsplit(":", 1)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx exited:\n{self.errors()}")
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"nginx did not listen:\n{self.errors()}") from None
                    time.sleep(0.05)
        return self

    def workers(self) -> set[int]:
        """The pids of the master's worker processes (Linux /proc)."""
        assert self.process is not None
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                found.add(int(entry.name))
        return found

    def reload(self, upstreams: Sequence[str], timeout: float = 30.0) -> None:
        """New daemons: rewrite the configuration, send SIGHUP, and return once
        every old worker has exited (close client connections first: an old
        worker serves its open connections to the end, with the old servers)."""
        assert self.process is not None
        self.write(upstreams)
        self.check()
        old = self.workers()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while True:
            current = self.workers()
            if current and not current & old:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx kept its old workers {sorted(current & old)}")
            time.sleep(0.05)

    def errors(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            path = self.folder / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def access_log(self) -> list[dict[str, str]]:
        """The access log, one dict per call (``uri``, ``status``, ``grpc``, ``session``,
        ``upstream``, ``seconds``)."""
        path = self.folder / "access.log"
        if not path.exists():
            return []
        entries = []
        pattern = re.compile(
            r'^\S+ \[\S+\] "(?P<uri>[^"]*)" (?P<status>\d+) grpc=(?P<grpc>\S*) '
            r"session=(?P<session>\S+) upstream=(?P<upstream>.*) seconds=(?P<seconds>\S+)$"
        )
        for line in path.read_text().splitlines():
            match = pattern.match(line)
            if match is None:
                raise AssertionError(f"unexpected access log line: {line!r}")
            entries.append(match.groupdict())
        return entries

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # graceful: finish open calls
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
