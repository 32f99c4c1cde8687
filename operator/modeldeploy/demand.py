"""The gateway's demand signal: a model at zero replicas was asked for, wake it now.

The gateway never writes a ModelDeployment. When it holds a request for a model that has no
Ready pod, it creates or renews a ``coordination.k8s.io/v1`` Lease named ``<name>-demand``
in the ModelDeployment's namespace (labels ``modeldeploy.io/model-deployment=<name>`` and
``modeldeploy.io/demand=true``, ``spec.renewTime`` now, the annotation
``modeldeploy.io/held`` the number of requests it holds for that ModelDeployment), at once
and then every few seconds while requests wait, each time with the count of that moment,
and once with ``"0"`` after the last one went to a pod, timed out or left
(``gateway/wake.py`` owns the writing and its rate limit). The operator watches those
Leases: an event runs an autoscaler round at once (no scrape interval to wait for), and a
Lease renewed within ``DEMAND_FRESH_SECONDS`` counts its held requests as load
(``autoscale.decide``'s ``held``), so a model at zero scales to one.

Several gateway replicas write the same Lease and the last writer's count stands (each
write replaces the annotation and ``holderIdentity`` together): the operator reads what
one replica holds, an under-count bounded by the number of replicas (``gateway/wake.py``
says why that is enough and why per-replica counts are not kept). Requests the gateway
has forwarded are not in this count once it writes again: they are in the engines'
running and waiting gauges, which the autoscaler scrapes, so each request counts once.

Reading is bounded: a missing or unreadable count is one request (a wake still means
demand), a negative one none, and none counts above ``MAX_HELD``.

Pure: no I/O; the caller passes the time.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

DEMAND_LABEL = "modeldeploy.io/demand"
HELD_ANNOTATION = "modeldeploy.io/held"
# A Lease older than this no longer counts: the gateway renews it every few seconds while
# it holds requests, so an older one means they were answered, timed out or the gateway went.
DEMAND_FRESH_SECONDS = 30.0
MAX_HELD = 1_000_000  # the annotation is the gateway's word: bound it


def demand_lease_name(model_deployment: str) -> str:
    """The name of a ModelDeployment's demand Lease."""
    return f"{model_deployment}-demand"


def held_requests(lease: Mapping[str, Any], now: datetime.datetime) -> float:
    """The requests a fresh demand Lease says the gateway holds (bounded), else 0."""
    renewed = _time((lease.get("spec") or {}).get("renewTime"))
    if renewed is None or (now - renewed).total_seconds() > DEMAND_FRESH_SECONDS:
        return 0.0
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    try:
        held = int(str(annotations.get(HELD_ANNOTATION, "1")))
    except ValueError:  # also past Python's 4300-digit limit on int()
        held = 1
    return float(min(max(held, 0), MAX_HELD))


def _time(text: object) -> datetime.datetime | None:
    """An RFC 3339 MicroTime (``2026-12-02T03:50:44.123456Z``), or None."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
