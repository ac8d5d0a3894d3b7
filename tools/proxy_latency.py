"""What nginx adds to one call: JoinSession direct to a daemon, and through the proxy.

Usage: ``python tools/proxy_latency.py [--calls 2000] [--rounds 10]`` (needs nginx
and the dev extra). Starts one daemon on 127.0.0.1 and nginx on the reference
configuration (deploy/nginx/nginx.conf, via tests/support/nginx.py) four ways:
plain text or TLS towards the client, with or without kept-alive connections
to the daemon. Each variant makes ``calls`` JoinSession calls (with the
x-buildd-session header, as the client always sends it), in ``rounds``
interleaved rounds so that a busy moment of the machine hits every variant
alike, and the script prints the median, p90 and p99 per call and what the
proxy adds at the median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import trustme  # noqa: E402

from buildd_client import Client  # noqa: E402
from buildd_client.credentials import Credentials  # noqa: E402
from support.daemon import DaemonProcess  # noqa: E402
from support.nginx import Listen, Nginx  # noqa: E402
from support.remote import free_port  # noqa: E402


def _time_calls(client: Client, session_id: str, calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        client.join_session(session_id)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant (2000)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (10)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bd-latency-", dir="/tmp"))
    (folder / "daemon").mkdir()
    daemon = DaemonProcess(None, root=folder / "daemon")
    daemon.address = f"127.0.0.1:{free_port()}"
    proxies: list[Nginx] = []
    try:
        daemon.start()
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(folder / "proxy.pem")
        )
        trust = ca.cert_pem.bytes()
        variants: dict[str, Client] = {"direct": Client(daemon.address, autostart=False)}
        for tls in (False, True):
            for keepalive in (True, False):
                wire, kept = "TLS" if tls else "h2c", "on" if keepalive else "off"
                name = f"nginx {wire}, upstream keepalive {kept}"
                listen = Listen(
                    tls=f"127.0.0.1:{free_port()}",
                    health=f"127.0.0.1:{free_port()}",
                    cert=folder / "proxy.pem" if tls else None,
                )
                sub = folder / f"nginx-{len(proxies)}"
                proxy = Nginx(sub, listen, [daemon.address], keepalive=keepalive).start()
                proxies.append(proxy)
                credentials = Credentials(tls_ca=trust) if tls else Credentials()
                variants[name] = Client(listen.tls, autostart=False, credentials=credentials)
        session_id = variants["direct"].open_session("latency").id
        per_round = max(1, args.calls // args.rounds)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for client in variants.values():
            _time_calls(client, session_id, 50)  # connections up, code warm
        for _ in range(args.rounds):
            for name, client in variants.items():
                samples[name] += _time_calls(client, session_id, per_round)
        base = statistics.median(samples["direct"])
        print(f"JoinSession, {per_round * args.rounds} calls per variant, {os.cpu_count()} CPUs")
        print(f"{'variant':<44} {'median':>9} {'p90':>9} {'p99':>9} {'added':>9}")
        for name, values in samples.items():
            values.sort()
            median = statistics.median(values)
            p90 = values[int(0.9 * (len(values) - 1))]
            p99 = values[int(0.99 * (len(values) - 1))]
            added = "" if name == "direct" else f"{(median - base) * 1e3:+.3f}"
            print(
                f"{name:<44} {median * 1e3:>7.3f}ms {p90 * 1e3:>7.3f}ms {p99 * 1e3:>7.3f}ms "
                f"{added:>7}{'ms' if added else ''}"
            )
        for client in variants.values():
            client.close()
    finally:
        for proxy in proxies:
            proxy.stop()
        daemon.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
