"""Prometheus metrics: counters the service updates, gauges read at scrape time.

Gauges (sessions, environments by state, active calls) are computed from the
live objects when Prometheus scrapes, so they can never drift from the truth;
only events (leases, creations, hook calls, errors, bytes) are counted as
they happen. Everything lives in one private registry per daemon.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterator

    from prometheus_client.core import Metric

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class Metrics:
    """The daemon's metrics; ``registry`` is what the HTTP endpoint serves."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.leases = Counter("buildd_leases", "Environment leases granted", registry=self.registry)
        self.lease_wait = Histogram(
            "buildd_lease_wait_seconds",
            "Time a request waited for its environment lease (creation included)",
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.creation = Histogram(
            "buildd_environment_creation_seconds",
            "Time to create an environment and install its static requirements",
            ["outcome"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.hooks = Histogram(
            "buildd_hook_duration_seconds",
            "PEP 517 hook calls by hook and outcome",
            ["hook", "outcome"],
            buckets=_SECONDS,
            registry=self.registry,
        )
        self.errors = Counter(
            "buildd_errors",
            "Requests that ended with an error, by gRPC status code",
            ["code"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "buildd_bytes",
            "Bytes of sources uploaded to and artifacts downloaded from the daemon",
            ["direction"],
            registry=self.registry,
        )
        for direction in ("uploaded", "downloaded"):
            self.bytes.labels(direction=direction)
        self.store_adoptions = Counter(
            "buildd_store_adoptions",
            "Store instances taken over: by a later session of their principal (session), "
            "or from disk at daemon start (restart)",
            ["when"],
            registry=self.registry,
        )
        self.store_evictions = Counter(
            "buildd_store_evictions",
            "Idle store instances deleted, by reason (ttl, size, prune)",
            ["reason"],
            registry=self.registry,
        )
        self.store_validation_failures = Counter(
            "buildd_store_validation_failures",
            "Instances found changed and discarded, by when (borrow, adoption, session_end)",
            ["when"],
            registry=self.registry,
        )
        for when in ("session", "restart"):
            self.store_adoptions.labels(when=when)
        for reason in ("ttl", "size", "prune"):
            self.store_evictions.labels(reason=reason)
        for when in ("borrow", "adoption", "session_end"):
            self.store_validation_failures.labels(when=when)
        self._server: object | None = None
        self._thread: threading.Thread | None = None

    def watch(
        self,
        sessions: Callable[[], int],
        environments: Callable[[], dict[str, int]],
        active_calls: Callable[[], int],
        held: Callable[[], dict[str, int]] | None = None,
        store_bytes: Callable[[], int] | None = None,
    ) -> None:
        """Register the scrape-time gauges."""
        self.registry.register(_Live(sessions, environments, active_calls, held, store_bytes))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the bound port (useful with port 0)."""
        from prometheus_client import start_http_server

        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_port)

    def stop(self) -> None:
        server = self._server
        if server is not None:
            server.shutdown()  # type: ignore[attr-defined]
            server.server_close()  # type: ignore[attr-defined]
            self._server = None


class _Live(Collector):
    def __init__(
        self,
        sessions: Callable[[], int],
        environments: Callable[[], dict[str, int]],
        active_calls: Callable[[], int],
        held: Callable[[], dict[str, int]] | None,
        store_bytes: Callable[[], int] | None,
    ) -> None:
        self._sessions = sessions
        self._environments = environments
        self._active_calls = active_calls
        self._store_bytes = store_bytes
        self._held = held

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("buildd_sessions", "Live sessions", value=self._sessions())
        by_state = GaugeMetricFamily(
            "buildd_environments", "Environment instances by state", labels=["state"]
        )
        for state, count in sorted(self._environments().items()):
            by_state.add_metric([state], count)
        yield by_state
        yield GaugeMetricFamily(
            "buildd_active_calls", "Long calls running now", value=self._active_calls()
        )
        if self._store_bytes is not None:
            yield GaugeMetricFamily(
                "buildd_store_bytes",
                "Bytes on disk of the store: instances in full, plus the installer caches' "
                "files no instance links",
                value=self._store_bytes(),
            )
        if self._held is not None:
            held = GaugeMetricFamily(
                "buildd_held",
                "What all principals hold now against the per-principal caps, by cap",
                labels=["cap"],
            )
            for cap, count in sorted(self._held().items()):
                held.add_metric([cap], count)
            yield held
