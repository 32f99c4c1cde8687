"""The gateway's Prometheus metrics, in a registry of its own per Gateway (served at /metrics).

Labels are bounded: ``model`` is a name the routing table serves (requests for anything
else count under ``model=""``), and in-flight counts are read per backend at scrape time,
so pods that have left the table and finished their requests leave no series behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FIRST_BYTE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
HOLD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
WAKE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)


class _InFlight(Collector):
    def __init__(self, read: Callable[[], Mapping[str, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "modeldeploy_gateway_inflight_requests",
            "Requests the gateway has in flight to each backend (namespace/pod).",
            labels=["backend"],
        )
        for backend, count in sorted(self._read().items()):
            family.add_metric([backend], count)
        yield family


class GatewayMetrics:
    """The gateway's metrics; ``inflight`` reads the in-flight count per backend."""

    def __init__(self, inflight: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modeldeploy_gateway_requests",
            "Inference requests, by model (empty: none the key may reach) and HTTP status"
            " (aborted: the answer was cut off).",
            ["model", "code"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "modeldeploy_gateway_upstream_errors",
            "Failed attempts at a backend, by model and kind (connect, status, stream).",
            ["model", "kind"],
            registry=self.registry,
        )
        self.time_to_first_byte = Histogram(
            "modeldeploy_gateway_time_to_first_byte_seconds",
            "From a request's arrival (holding included) to its first response byte.",
            ["model"],
            buckets=FIRST_BYTE_BUCKETS,
            registry=self.registry,
        )
        self.held = Gauge(
            "modeldeploy_gateway_held_requests",
            "Requests held while their model has no Ready pod (scale from zero).",
            ["model"],
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "modeldeploy_gateway_hold_seconds",
            "How long each held request waited, whether a pod came or not.",
            ["model"],
            buckets=HOLD_BUCKETS,
            registry=self.registry,
        )
        self.wake_seconds = Histogram(
            "modeldeploy_gateway_wake_seconds",
            "From the first held request of a model at zero to its first Ready pod.",
            ["model"],
            buckets=WAKE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_InFlight(inflight))

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
