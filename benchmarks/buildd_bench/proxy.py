"""The cost of an nginx proxy in front of the daemon: figure P8.

A daemon on a loopback TCP port, and nginx (``grpc_pass``) on another in
front of it. The same warm calls go to both addresses, alternately, each on
its own open channel; the figure is the difference of the medians.

The nginx configuration is the repository's reference one
(``deploy/nginx/nginx.conf``) with only the lines that name places replaced
(pid and log files, temporary folders, listen addresses, the daemons, the
resolver) and its TLS listener served as plain HTTP/2: the figure is the
proxy's hop, not TLS. Without that file, a minimal configuration with the
same directives is used, and the report says so.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .context import Context
from .daemon import free_port
from .features import missing_nginx, reference_nginx_config
from .figure import Figure
from .settings import log, tail
from .stats import fmt_ms, fmt_ms_signed, median, pctl

if TYPE_CHECKING:
    from buildd_client import Client

# The directives of the reference configuration that matter on one machine.
MINIMAL_CONFIG = """\
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {root}/client-body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    access_log {root}/access.log;

    upstream buildd {{
        zone buildd 256k;
        hash $http_x_buildd_session consistent;
        server {upstream} max_fails=1 fail_timeout=5s;
    }}

    client_max_body_size 0;
    client_body_timeout 1h;
    grpc_read_timeout 1h;
    grpc_send_timeout 1h;
    grpc_connect_timeout 2s;
    grpc_socket_keepalive on;
    grpc_next_upstream error timeout;

    server {{
        listen {listen} http2;

        location / {{
            grpc_pass grpc://buildd;
        }}
    }}
}}
"""


def _placed(line: str, root: Path, listen: str, health: str) -> str | None:
    """One line of the reference configuration, pointed at this machine (None: drop it)."""
    stripped = line.strip()
    indent = line[: len(line) - len(line.lstrip())]
    if stripped.startswith("pid "):
        return f"{indent}pid {root}/nginx.pid;"
    if stripped.startswith("error_log "):
        return f"{indent}error_log {root}/error.log warn;"
    if stripped.startswith("access_log "):
        return re.sub(r"access_log\s+[^\s;]+", f"access_log {root}/access.log", line)
    if stripped.startswith(("resolver ", "ssl_")):
        # No names to resolve; the TLS listener is served as plain HTTP/2.
        return None
    if re.match(r"\w+_temp_path\s", stripped):
        name = stripped.split()[0]
        return f"{indent}{name} {root}/{name};"
    if stripped.startswith("listen "):
        return f"{indent}listen {listen if ' ssl' in stripped else health} http2;"
    return line


def render_reference(text: str, root: Path, upstream: str, listen: str, health: str) -> str:
    """The reference configuration with the lines that name places pointed at ``root``.

    The daemons between ``# daemons: begin`` and ``# daemons: end`` become
    ``upstream``; the TLS listener becomes plain HTTP/2 on ``listen``, the
    health listener ``health``.
    """
    out: list[str] = []
    in_daemons = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# daemons: begin"):
            in_daemons = True
            indent = line[: len(line) - len(line.lstrip())]
            out += [line, f"{indent}server {upstream} max_fails=1 fail_timeout=5s;"]
        elif stripped.startswith("# daemons: end"):
            in_daemons = False
            out.append(line)
        elif not in_daemons:
            placed = _placed(line, root, listen, health)
            if placed is not None:
                out.append(placed)
    return "\n".join(out) + "\n"


@dataclass
class Nginx:
    """nginx started in the foreground by the harness, with a configuration of its own."""

    root: Path
    listen: str
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self, config: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(config, encoding="utf-8")
        nginx = shutil.which("nginx") or "nginx"
        base = [nginx, "-p", str(self.root), "-c", str(conf), "-e", str(self.root / "error.log")]
        checked = subprocess.run(
            [*base, "-t", "-q"], capture_output=True, text=True, check=False, timeout=60
        )
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{checked.stderr}")
        self._log = (self.root / "stdout.log").open("wb")
        self.process = subprocess.Popen(
            [*base, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _wait_ready(client: Client, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.status()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {timeout:.0f}s: {exc}") from exc
            time.sleep(0.1)


def _alternate(direct: Any, proxied: Any, calls: int) -> tuple[list[float], list[float]]:
    """Time ``calls`` of each, alternating (and the first of each pair alternating too)."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(calls):
        pair = ((0, direct), (1, proxied)) if i % 2 == 0 else ((1, proxied), (0, direct))
        for which, call in pair:
            start = time.perf_counter()
            call()
            times[which].append(time.perf_counter() - start)
    return times


def figure_p8(ctx: Context) -> Figure:
    figure = (
        "added latency of an nginx proxy (`grpc_pass`) per call on loopback: warm status and "
        "warm metadata calls through nginx vs direct (difference of the medians)"
    )
    goal = "under 2 ms at the median"
    no_nginx = missing_nginx()
    if no_nginx:
        return Figure.not_measured("P8", figure, goal, no_nginx)
    from buildd_client import Client
    from buildd_client.addresses import local_token_path
    from buildd_client.credentials import Credentials, read_token

    calls = ctx.args.p8_calls
    daemon = ctx.start_daemon("p8", tcp=True)
    listen = f"127.0.0.1:{free_port()}"
    nginx = Nginx(ctx.ws.root / "nginx", listen)
    reference = reference_nginx_config()
    if reference:
        config = render_reference(
            Path(reference).read_text(encoding="utf-8"),
            nginx.root,
            daemon.address,
            listen,
            f"127.0.0.1:{free_port()}",
        )
        source = "`deploy/nginx/nginx.conf`, places replaced, TLS listener as plain HTTP/2"
    else:
        config = MINIMAL_CONFIG.format(root=nginx.root, upstream=daemon.address, listen=listen)
        source = (
            "a minimal configuration with the reference's directives (`deploy/nginx/` is not "
            "in this checkout): upstream hashed on `x-buildd-session`, no upstream keepalive"
        )
    project = next((p for p in ctx.projects if p.name == "tomli"), ctx.projects[0])
    try:
        nginx.start(config)
        with (
            Client(daemon.address, autostart=False) as direct,
            # A loopback daemon without a token file admits only holders of
            # the token it wrote for its user, which the client finds by the
            # daemon's port: through the proxy's port it must be sent as such.
            Client(
                listen,
                autostart=False,
                credentials=Credentials(
                    token=read_token(local_token_path(int(daemon.address.rsplit(":", 1)[1])))
                ),
            ) as proxied,
        ):
            _wait_ready(direct, "the daemon")
            _wait_ready(proxied, "nginx")
            for _ in range(20):  # warm both channels and both nginx workers
                direct.status()
                proxied.status()
            status = _alternate(direct.status, proxied.status, calls)
            session = proxied.open_session("buildd-bench/p8")
            src = ctx.ws.fresh_tree(project, copy="p8")
            on_direct = direct.join_session(session.id)
            on_direct.metadata(src).result()
            session.metadata(src).result()
            metadata = _alternate(
                lambda: on_direct.metadata(src).result(),
                lambda: session.metadata(src).result(),
                max(1, calls // 4),
            )
            session.close()
    except Exception as exc:
        ctx.fail("P8", f"{exc!r}\n{tail(nginx.root / 'error.log')}")
        return Figure.failed("P8", figure, goal, repr(exc))
    finally:
        nginx.stop()
    added = {
        "status": median(status[1]) - median(status[0]),
        "metadata": median(metadata[1]) - median(metadata[0]),
    }
    rows = []
    for name, (direct_times, proxy_times) in (("status", status), ("metadata", metadata)):
        rows.append(
            f"| {name} | {len(direct_times)} | {fmt_ms(median(direct_times))} "
            f"| {fmt_ms(median(proxy_times))} | {fmt_ms(pctl(direct_times, 0.9))} "
            f"| {fmt_ms(pctl(proxy_times, 0.9))} | {fmt_ms_signed(added[name])} |"
        )
    ctx.raw["P8"] = {"status": status, "metadata": metadata, "config": config}
    details = "\n".join(
        [
            f"nginx {_nginx_version()} on 127.0.0.1 in front of a daemon on another loopback "
            f"port; configuration: {source}. Client library, one open channel to each "
            "address, 20 untimed status calls on each first; calls alternate between the two "
            f"addresses. Metadata: `{project.id}` in a session opened through the proxy.",
            "",
            "| call | calls each | direct median | via nginx median | direct p90 | via nginx p90 "
            "| added (median) |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    worst = max(added.values())
    log(f"P8: status {fmt_ms_signed(added['status'])}, metadata {fmt_ms_signed(added['metadata'])}")
    return Figure(
        "P8",
        figure,
        goal,
        f"status {fmt_ms_signed(added['status'])}, metadata {fmt_ms_signed(added['metadata'])}",
        None if math.isnan(worst) else worst < 0.002,
        details,
    )


def _nginx_version() -> str:
    done = subprocess.run(
        [shutil.which("nginx") or "nginx", "-v"], capture_output=True, text=True, check=False
    )
    return (done.stderr or done.stdout).strip().rsplit("/", 1)[-1]
