"""Metrics: names and types per Prometheus conventions; cluster-wide families on their own path."""

from __future__ import annotations

import httpx2
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.messages import QUEUES
from service.metrics import ClusterCollector
from service.store.keys import Keys

CLUSTER_FAMILIES = {
    "masking_queue_depth": "gauge",
    "masking_queue_oldest_age_seconds": "gauge",
    "masking_dead_letters": "gauge",
    "masking_webhooks": "counter",
    "masking_events": "counter",
    "masking_reconciliation_drift": "counter",
    "masking_notifications_oldest_pending_seconds": "gauge",
    "masking_notification_endpoints_disabled": "gauge",
}


def _families(text: str) -> dict[str, tuple[str, dict[tuple[str, str], float]]]:
    """``{family: (type, {(sample name, label values joined): value})}``."""
    return {
        family.name: (
            family.type,
            {(s.name, ",".join(s.labels.values())): s.value for s in family.samples},
        )
        for family in text_string_to_metric_families(text)
    }


def test_cluster_families_are_described_without_redis() -> None:
    """The collector names its families without a Redis round trip (registration uses it)."""
    collector = ClusterCollector(redis.Redis(port=1), QUEUES)
    assert {f.name: f.type for f in collector.describe()} == CLUSTER_FAMILIES


def test_cluster_path_serves_redis_totals_as_counters(
    admin_url: str, redis_client: redis.Redis
) -> None:
    """/metrics/cluster has the totals as ``_total`` counters and the retry queues' depth."""
    redis_client.hincrby(Keys.webhook_stats(), "accepted", 3)
    redis_client.hincrby(Keys.event_stats(), "orphaned", 1)
    redis_client.rpush(Keys.queue("events.DQ"), "m1", "m2")
    families = _families(httpx2.get(admin_url + "/metrics/cluster").text)
    assert {name: kind for name, (kind, _) in families.items()} == CLUSTER_FAMILIES
    assert families["masking_webhooks"][1][("masking_webhooks_total", "accepted")] == 3
    assert families["masking_events"][1][("masking_events_total", "orphaned")] == 1
    depth = families["masking_queue_depth"][1]
    assert depth[("masking_queue_depth", "events.DQ")] == 2
    assert {labels for _, labels in depth} == {
        q for queue in QUEUES for q in (queue, f"{queue}.DQ")
    }


def test_process_path_leaves_the_cluster_families_out(web_url: str, admin_url: str) -> None:
    """/metrics is this process only, so that summing it over replicas counts nothing twice."""
    httpx2.get(web_url + "/healthz")
    families = _families(httpx2.get(admin_url + "/metrics").text)
    assert not families.keys() & CLUSTER_FAMILIES.keys()
    assert families["masking_http_requests"][0] == "counter"
