"""What operators need to keep the service standing: rate limits, bounded engine work, metrics.

- A token bucket per subject: a caller who sends faster than the limit gets 429 (audited)
  instead of crowding out everyone else.
- Engine slots: at most ``max_concurrent_queries`` queries run in DuckDB at once (request
  handlers run in worker threads, never on the event loop); a query that cannot get a slot
  within ``queue_timeout_s`` gets 503 (audited) instead of queueing without end.
- Prometheus metrics in a registry of the app's own (several apps can live in one process):
  requests, latency per pipeline stage, cells suppressed, budget spent, audit write latency.
  Labels carry routes, stages, decisions and projects, never SQL or row data.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.errors import GatewayError


class RateLimited(GatewayError):
    status, code, decision = 429, "rate_limited", "refused"


class Busy(GatewayError):
    status, code, decision = 503, "engine_busy", "failed"


@dataclass
class RateLimiter:
    """Token buckets by subject: ``per_minute`` sustained, ``burst`` at once."""

    per_minute: int
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, subject: str) -> None:
        if self.per_minute <= 0:
            return
        now = time.monotonic()
        rate = self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(subject, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[subject] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(
                    f"more than {self.per_minute} requests a minute from {subject}",
                    reasons=[{"retry_after_s": round(wait, 2)}],
                    hint=f"retry in {wait:.1f} s")
            self._buckets[subject] = (tokens - 1.0, now)


class EngineSlots:
    """A bounded number of queries in the engine at once; a wait with a deadline for the rest."""

    def __init__(self, slots: int, queue_timeout_s: float, metrics: Metrics) -> None:
        self._sem = threading.BoundedSemaphore(slots)
        self.slots = slots
        self.queue_timeout_s = queue_timeout_s
        self.metrics = metrics

    def acquire(self) -> None:
        """Take a slot, waiting at most queue_timeout_s; Busy (503) if none came free."""
        started = time.perf_counter()
        if not self._sem.acquire(timeout=self.queue_timeout_s):
            self.metrics.busy.inc()
            raise Busy(f"all {self.slots} engine slots are busy; nothing ran",
                       hint="retry shortly")
        self.metrics.queue_wait.observe(time.perf_counter() - started)
        self.metrics.in_engine.inc()

    def release(self) -> None:
        self.metrics.in_engine.dec()
        self._sem.release()

    @contextmanager
    def slot(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


class Metrics:
    """The app's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("sde_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("sde_http_request_seconds", "HTTP request latency by route",
                                 ["route"], registry=r)
        self.stage = Histogram("sde_pipeline_stage_seconds", "Time in each pipeline stage",
                               ["stage"], registry=r,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                        1, 2.5, 5, 10, 30))
        self.outcomes = Counter("sde_queries", "Queries by regime and outcome",
                                ["regime", "decision"], registry=r)
        self.suppressed = Counter("sde_cells_suppressed", "Cells suppressed, by regime",
                                  ["regime"], registry=r)
        self.epsilon = Counter("sde_epsilon_spent", "Privacy budget spent, by project",
                               ["project"], registry=r)
        self.audit_write = Histogram("sde_audit_write_seconds",
                                     "Audit entry append latency (with fsync)", registry=r,
                                     buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .5))
        self.queue_wait = Histogram("sde_engine_queue_wait_seconds",
                                    "Wait for an engine slot", registry=r)
        self.in_engine = Gauge("sde_engine_queries_running", "Queries in the engine now",
                               registry=r)
        self.busy = Counter("sde_engine_busy", "Queries refused: no engine slot in time",
                            registry=r)
        self.rate_limited = Counter("sde_rate_limited", "Requests refused by the rate limit",
                                    registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StageTimer:
    """Times consecutive pipeline stages: ``enter(name)`` closes the previous one."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.name: str | None = None
        self.started = time.perf_counter()

    def enter(self, name: str) -> str:
        now = time.perf_counter()
        if self.name is not None:
            self.metrics.stage.labels(self.name).observe(now - self.started)
        self.name, self.started = name, now
        return name

    def close(self) -> None:
        self.enter("")
        self.name = None
