"""The cluster of the scale-out tests: three daemons behind the reference nginx.

See support/cluster.py for why the addresses are fixed.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from support.cluster import (
    DAEMON_PORTS,
    HEALTH,
    HOST,
    LOCK,
    PROXY,
    Cluster,
    ScaleDaemon,
)
from support.daemon import short_tempdir
from support.nginx import Listen, Nginx, nginx_binary
from support.remote import write_token_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(wheelhouse: Path) -> Iterator[Cluster]:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx; .ci/run installs it)")
    LOCK.touch(exist_ok=True)
    with LOCK.open() as lock, contextlib.ExitStack() as stack:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folder = short_tempdir("bd-scale-")
        stack.callback(shutil.rmtree, folder, True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(folder / "ca.pem"))
        ca.issue_cert(HOST, "localhost").private_key_and_cert_chain_pem.write_to_path(
            str(folder / "proxy.pem")
        )
        tokens = write_token_file(folder / "tokens")
        daemons = [
            ScaleDaemon(wheelhouse, f"d{i}", port, tokens) for i, port in enumerate(DAEMON_PORTS)
        ]
        for daemon in daemons:
            stack.callback(daemon.cleanup)
            daemon.launch()
        for daemon in daemons:
            daemon.wait_ready()
        nginx = Nginx(
            folder / "nginx",
            Listen(tls=PROXY, health=HEALTH, cert=folder / "proxy.pem"),
            [d.address for d in daemons],
        )
        stack.callback(nginx.stop)
        nginx.start()
        yield Cluster(daemons, nginx, folder / "ca.pem", tokens, folder)
