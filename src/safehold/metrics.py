"""Prometheus metrics of one server (its own registry, so several can live in one process).  A server with
several workers keeps them in files that every worker's /metrics sums (prometheus_client's multiprocess mode,
set up by the supervisor)."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "safehold_http_requests", "HTTP requests handled", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "safehold_http_request_seconds", "HTTP request latency", ["method", "route"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.retrievals = Counter(
            "safehold_password_retrievals", "Audited password retrievals", ["result"], registry=r
        )
        self.audit_records = Counter("safehold_audit_records", "Audit records written", registry=r)
        self.audit_batches = Counter("safehold_audit_commits", "Audit group commits", registry=r)
        self.audit_failures = Counter(
            "safehold_audit_failures", "Audit writes that failed (actions refused)", registry=r
        )
        self.logins = Counter("safehold_logins", "Login attempts", ["result"], registry=r)
        self.pool_size = Gauge("safehold_db_pool_size", "Database connections in the pool", registry=r,
                               multiprocess_mode="livesum")
        self.pool_checked_out = Gauge(
            "safehold_db_pool_checked_out", "Database connections in use", registry=r, multiprocess_mode="livesum"
        )
        self.pool_overflow = Gauge("safehold_db_pool_overflow", "Overflow connections open", registry=r,
                                   multiprocess_mode="livesum")
        self.info = Gauge("safehold_server_info", "This server", ["server_id", "name", "role", "version"],
                          registry=r, multiprocess_mode="livemax")

    def collected(self) -> CollectorRegistry:
        """What /metrics shows: this registry, or the sum over the workers when there are several."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not directory:
            return self.registry
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
        return registry
