"""Prometheus metrics of the operator (prometheus-client), served by ``modeldeploy run``."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from modeldeploy.api import PHASES

RECONCILES = Counter(
    "modeldeploy_reconcile",
    "Reconcile passes of ModelDeployments, by result.",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "modeldeploy_reconcile_duration_seconds",
    "Wall time of one reconcile pass.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODEL_DEPLOYMENTS = Gauge(
    "modeldeploy_model_deployments",
    "ModelDeployments known to this operator, by phase.",
    ["phase"],
)
LAST_ERROR = Gauge(
    "modeldeploy_last_error_timestamp_seconds",
    "Unix time of the last reconcile pass that ended in an error.",
)
API_WRITES = Counter(
    "modeldeploy_api_writes",
    "Write calls the operator made to the API server, by verb and kind.",
    ["verb", "kind"],
)
RESYNCS = Counter(
    "modeldeploy_resync_rounds",
    "Operator-wide drift-check rounds, by outcome (ran; paused by Kopf peering or standing "
    "by for the Lease).",
    ["outcome"],
)
LEADER = Gauge(
    "modeldeploy_leader",
    "1 while this operator process holds the leader Lease and acts, else 0 (a standby).",
)
HEALTHY = Gauge(
    "modeldeploy_healthy",
    "1 while GET /healthz answers 200 (the API server answers, every watch streams).",
)

AUTOSCALE_CHANGES = Counter(
    "modeldeploy_autoscale_changes",
    "Replica changes the operator-native autoscaler decided, by direction (up, down).",
    ["direction"],
)
AUTOSCALE_DESIRED = Gauge(
    "modeldeploy_autoscale_desired_replicas",
    "Replicas the operator-native autoscaler decided, per ModelDeployment.",
    ["namespace", "name"],
)
AUTOSCALE_LOAD = Gauge(
    "modeldeploy_autoscale_load_requests",
    "Requests in flight (running + waiting) over a ModelDeployment's scraped Ready pods.",
    ["namespace", "name"],
)
AUTOSCALE_SCRAPES = Counter(
    "modeldeploy_autoscale_scrapes",
    "Scrapes of model pods' metrics by the autoscaler, by result (ok, failed).",
    ["result"],
)


def set_phase_counts(phases: Iterable[str]) -> None:
    """Publish how many ModelDeployments are in each phase."""
    counts = dict.fromkeys(PHASES, 0)
    for phase in phases:
        counts[phase] = counts.get(phase, 0) + 1
    for phase, count in counts.items():
        MODEL_DEPLOYMENTS.labels(phase=phase).set(count)
