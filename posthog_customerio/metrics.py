"""Prometheus metrics, named ``posthog_customerio_<name>_<unit>[_total]`` (DESIGN.md §8).

One ``Metrics`` object per process, on its own registry, so tests can build several apps in
one interpreter. A retried failure is never counted as dropped or dead-lettered.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

NS = "posthog_customerio"


class Metrics:
    """Every metric the connector exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, str], Counter] = {}
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.events_received = Counter(
            "events_received",
            "PostHog events received, by source.",
            ["source"],
            namespace=NS,
            registry=r,
        )
        self.events_dropped = Counter(
            "events_dropped",
            "Events not sent, by reason (filters, duplicates, limits).",
            ["reason"],
            namespace=NS,
            registry=r,
        )
        self.event_field_notes = Counter(
            "event_field_notes",
            "Fields of received events the source could not use as sent, by field: replaced "
            "(uuid derived, timestamp fallback, lone surrogates) or dropped ($set, properties, "
            "person...). The event itself went on.",
            ["field"],
            namespace=NS,
            registry=r,
        )
        self.operations_enqueued = Counter(
            "operations_enqueued",
            "Customer.io operations committed to the queue, by action.",
            ["action"],
            namespace=NS,
            registry=r,
        )
        self.operations_delivered = Counter(
            "operations_delivered",
            "Operations Customer.io accepted, by action.",
            ["action"],
            namespace=NS,
            registry=r,
        )
        self.operations_dead_lettered = Counter(
            "operations_dead_lettered",
            "Operations moved to dead letters, by reason.",
            ["reason"],
            namespace=NS,
            registry=r,
        )
        self.operations_retried = Counter(
            "operations_retried",
            "Operations scheduled for another attempt, by reason.",
            ["reason"],
            namespace=NS,
            registry=r,
        )
        self.mapping_truncations = Counter(
            "mapping_truncations",
            "Values changed to fit Customer.io's limits or dropped by its rules "
            "(illegal ids, identifiers in $set, invalid emails), by kind.",
            ["kind"],
            namespace=NS,
            registry=r,
        )
        self.requests = Counter(
            "requests",
            "HTTP requests sent to Customer.io, by endpoint and status.",
            ["endpoint", "status"],
            namespace=NS,
            registry=r,
        )
        self.request_duration = Histogram(
            "request_duration_seconds",
            "Duration of requests to Customer.io.",
            ["endpoint"],
            namespace=NS,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.queue_depth = Gauge(
            "queue_depth_operations",
            "Operations waiting for delivery.",
            namespace=NS,
            registry=r,
        )
        self.queue_oldest_age = Gauge(
            "queue_oldest_age_seconds",
            "Age of the oldest waiting operation.",
            namespace=NS,
            registry=r,
        )
        self.dead_letters = Gauge(
            "dead_letters_operations",
            "Operations currently in the dead-letter table.",
            namespace=NS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "delivery_latency_seconds",
            "From ingest to accepted by Customer.io.",
            namespace=NS,
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
        )
        self.batch_operations = Histogram(
            "batch_size_operations",
            "Operations per /api/v2/batch request.",
            namespace=NS,
            registry=r,
            buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800, 1600),
        )
        self.rate_limit = Gauge(
            "rate_limit_requests_per_second",
            "Current request rate allowed by the limiter.",
            namespace=NS,
            registry=r,
        )
        self.anonymous_fallback = Counter(
            "anonymous_fallback",
            "Anonymous operations Customer.io refused in a batch for their anonymous_id, "
            "re-sent through POST /api/v1/events (later ones go there directly).",
            namespace=NS,
            registry=r,
        )
        self.credentials_ok = Gauge(
            "credentials_ok",
            "1 while Customer.io accepts the credentials, 0 when rejected.",
            namespace=NS,
            registry=r,
        )

        # The reverse path: Customer.io's reporting webhooks (requests to PostHog's capture
        # API are in requests_total{endpoint="capture"} and request_duration_seconds).
        self.reporting_received = Counter(
            "reporting_received",
            "Correctly signed Customer.io reporting webhooks, by object_type and metric.",
            ["object_type", "metric"],
            namespace=NS,
            registry=r,
        )
        self.reporting_rejected = Counter(
            "reporting_rejected",
            "Customer.io reporting webhooks refused (401) for their signature, by reason.",
            ["reason"],
            namespace=NS,
            registry=r,
        )

    def count(self, counter: Counter, label: str, amount: float = 1) -> None:
        """``counter.labels(label).inc(amount)`` with the child cached: ``labels()`` costs
        about as much as the rest of the increment, and the webhook path counts per request."""
        key = (id(counter), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        child.inc(amount)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
