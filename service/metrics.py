"""Prometheus metrics: what each process counts, and what Redis knows for everyone.

Counters live where the work happens: the web process (``/metrics``) and each worker
process (prometheus-client's multi-process mode, served by the ``masking worker`` parent
on ``METRICS_PORT``). What all processes share (queue depths, the oldest message's age,
dead letters, callback, event and reconciliation totals) is read from Redis by the web on
another path, ``/metrics/cluster``: every web replica could answer it, so it is scraped
once, through the Service, and sums over pods never count it twice. Labels are routes,
actors, queues and outcomes: never a phone number or a session id.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer, make_server

import redis
from dramatiq.common import dq_name
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from service.store import deadletters, endpoints, events, notifications, queue, sessions

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Metrics:
    http_requests: Counter
    http_seconds: Histogram
    webhook_signature_failures: Counter
    messages: Counter
    message_seconds: Histogram
    vts_calls: Counter
    vts_seconds: Histogram
    rate_limit_waits: Counter
    rate_limit_wait_seconds: Counter
    recordings: Counter
    recording_bytes: Counter
    unreadable_records: Counter
    timers_repaired: Counter
    storage_failures: Counter
    notification_attempts: Counter
    notifications_given_up: Counter
    notification_endpoints_disabled: Counter


_made: list[Metrics] = []
_making = threading.Lock()


def metrics() -> Metrics:
    """The process's metrics, made on first use (so importing this module does nothing).

    Made once under a lock: worker threads start together, and registering a metric
    twice is an error.
    """
    if not _made:
        with _making:
            if not _made:
                _made.append(_create())
    return _made[0]


def _create() -> Metrics:
    # The web serves the default registry at /metrics: only what the web counts is
    # registered there (the workers' families would be series that stay zero). The
    # workers' are made unregistered: prometheus-client's multi-process mode writes
    # them to files, which the worker parent's collector reads whatever the registry.
    web = REGISTRY
    worker = None
    return Metrics(
        http_requests=Counter(
            "masking_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=web,
        ),
        http_seconds=Histogram(
            "masking_http_request_seconds", "HTTP request latency", ["method", "route"],
            buckets=LATENCY_BUCKETS, registry=web,
        ),
        webhook_signature_failures=Counter(
            "masking_webhook_signature_failures", "Callbacks with a bad signature", ["kind"],
            registry=web,
        ),
        messages=Counter(
            "masking_messages", "Messages processed by outcome", ["actor", "outcome"],
            registry=worker,
        ),
        message_seconds=Histogram(
            "masking_message_seconds", "Time to process a message", ["actor"],
            buckets=LATENCY_BUCKETS, registry=worker,
        ),
        vts_calls=Counter(
            "masking_vts_calls", "VTS API calls", ["action", "outcome"], registry=worker
        ),
        vts_seconds=Histogram(
            "masking_vts_call_seconds", "VTS API latency", ["action"], buckets=LATENCY_BUCKETS,
            registry=worker,
        ),
        rate_limit_waits=Counter(
            "masking_vts_rate_limit_waits", "Waits for a VTS slot", registry=worker
        ),
        rate_limit_wait_seconds=Counter(
            "masking_vts_rate_limit_wait_seconds", "Time spent waiting for a VTS slot",
            registry=worker,
        ),
        recordings=Counter(
            "masking_recordings", "Recording downloads", ["outcome"], registry=worker
        ),
        recording_bytes=Counter(
            "masking_recording_bytes", "Recording bytes stored", registry=worker
        ),
        unreadable_records=Counter(
            "masking_unreadable_records", "Stored records skipped as unreadable", ["kind"],
            registry=web,
        ),
        timers_repaired=Counter(
            "masking_timers_repaired",
            "Live sessions found without a timer they must have, and given it back",
            ["task"], registry=worker,
        ),
        # reason: an errno name (ENOSPC) or an S3 error code (SlowDown), never a path.
        # Counted by both: workers write recordings, the web reads them.
        storage_failures=Counter(
            "masking_storage_failures", "Recording storage operations that failed",
            ["backend", "reason"], registry=web,
        ),
        notification_attempts=Counter(
            "masking_notification_attempts", "Attempts to notify apps, by outcome and "
            "status class (2xx..5xx, or error)", ["outcome", "status_class"], registry=worker,
        ),
        notifications_given_up=Counter(
            "masking_notifications_given_up", "Notifications left failed, by reason "
            "(exhausted, endpoint_disabled, refused)", ["reason"], registry=worker,
        ),
        notification_endpoints_disabled=Counter(
            "masking_notification_endpoint_disablings", "App endpoints disabled",
            registry=worker,
        ),
    )  # fmt: skip


# How to read a family of totals (label -> total) from Redis.
_Totals = Callable[[redis.Redis], dict[str, int]]


class ClusterCollector(Collector):
    """What every process shares, read from Redis at scrape time: served on its own path
    (``/metrics/cluster``) so that it can be scraped once for the whole cluster, not once
    per web replica.

    Queue depths count each queue's retry and delay queue (``<queue>.DQ``, where dramatiq
    keeps messages whose ``eta`` has not come) as a queue of its own. The totals are
    counters: Redis only ever adds to them (``HINCRBY``); a Redis that loses its data
    starts them again from zero, which ``rate()`` reads as a counter reset.
    """

    def __init__(self, client: redis.Redis, queues: Sequence[str]) -> None:
        self._client = client
        self._queues = queues

    def describe(self) -> Iterator[Metric]:
        yield from self._queue_families()
        yield from self._notification_families(empty=True)
        yield from (family for family, _ in self._total_families())

    def collect(self) -> Iterator[Metric]:
        depth, age, dead = self._queue_families()
        for name in self._queues:
            delayed: str = dq_name(name)
            depth.add_metric([name], queue.depth(self._client, name))
            depth.add_metric([delayed], queue.depth(self._client, delayed))
            age.add_metric([name], queue.oldest_age(self._client, name))
            dead.add_metric([name], deadletters.dead_letter_count(self._client, name))
        yield from (depth, age, dead)
        yield from self._notification_families()
        for family, totals in self._total_families():
            for label, value in sorted(totals(self._client).items()):
                family.add_metric([label], float(value))
            yield family

    @staticmethod
    def _queue_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "masking_queue_depth", "Messages waiting, by queue (<queue>.DQ: retries and "
                "delayed messages not yet due)", labels=["queue"],
            ),
            GaugeMetricFamily(
                "masking_queue_oldest_age_seconds", "Age of the oldest waiting message",
                labels=["queue"],
            ),
            GaugeMetricFamily(
                "masking_dead_letters", "Messages in the dead-letter queue", labels=["queue"]
            ),
        )  # fmt: skip

    def _notification_families(self, *, empty: bool = False) -> Iterator[GaugeMetricFamily]:
        pending = GaugeMetricFamily(
            "masking_notifications_oldest_pending_seconds",
            "How long the longest-pending app notification has been pending",
        )
        disabled = GaugeMetricFamily(
            "masking_notification_endpoints_disabled", "App endpoints disabled now"
        )
        if not empty:
            pending.add_metric([], notifications.oldest_pending_age(self._client))
            disabled.add_metric([], float(endpoints.disabled_count(self._client)))
        yield from (pending, disabled)

    @staticmethod
    def _total_families() -> list[tuple[CounterMetricFamily, _Totals]]:
        """Each counter family with how to read its totals by label."""
        return [
            (CounterMetricFamily("masking_webhooks", "VTS callbacks by outcome",
                                 labels=["outcome"]), events.webhook_totals),
            (CounterMetricFamily("masking_events", "VTS events by outcome",
                                 labels=["outcome"]), events.event_totals),
            (CounterMetricFamily("masking_reconciliation_drift",
                                 "Differences VTS corrected: sessions, and amounts by counter",
                                 labels=["outcome"]), sessions.drift_totals),
        ]  # fmt: skip


class _Handler(WSGIRequestHandler):
    """wsgiref's handler without its ``Server`` header (it names the Python version) and
    without a stderr line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # As WSGIRequestHandler.handle, with a ServerHandler that names no software.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        stdout: Any = self.wfile
        handler = _AnonymousHandler(
            self.rfile, stdout, self.get_stderr(), self.get_environ(), multithread=False
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]


class _AnonymousHandler(ServerHandler):
    server_software = ""


def metrics_server(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """A server of ``registry`` at ``http://host:port/metrics``, bound and listening; the
    caller runs ``serve_forever``. Raises OSError when the port cannot be had."""

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return make_server(host, port, make_wsgi_app(registry), Server, handler_class=_Handler)
