"""The operator-native autoscaler: scrape the Ready pods, decide, hand the count to a pass.

Every ``autoscaleIntervalSeconds`` (one task of the operator, off the reconcile path), for
each ModelDeployment with ``autoscaling.enabled`` in ``native`` mode and a decision, it
reads each Ready pod's metrics (``http://POD_IP:PORT`` plus the engine's metrics path, at
most ``scrapeTimeoutSeconds`` each, all pods at once), reads the engine's load gauges
(``Runtime.load_gauges``), asks ``autoscale.decide`` and keeps the result as a
``scaling.ScalingRecord``. A record that changed is handed to the reconcile pass, which
renders the Deployment with that count (server-side apply, the one writer), records
``status.autoscaling`` and posts the Event. A slow or failing pod costs its own scrape
only: its sample counts as missing, which never scales down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from modeldeploy.api import ModelDeployment, SpecError, parse_model_deployment
from modeldeploy.autoscale import AutoscalePolicy, PodSample, Recommendation, decide
from modeldeploy.clock import utc_now
from modeldeploy.config import OperatorConfig
from modeldeploy.metrics import (
    AUTOSCALE_CHANGES,
    AUTOSCALE_DESIRED,
    AUTOSCALE_LOAD,
    AUTOSCALE_SCRAPES,
)
from modeldeploy.observed import Key
from modeldeploy.runtimes import Runtime, runtime_for
from modeldeploy.scaling import ScalingRecord, deployment_replicas, initial_record, record_decision
from modeldeploy.scrape import parse_load

log = logging.getLogger(__name__)
# A metrics page is bounded in size before it is parsed (scrape.MAX_METRICS_CHARS).
MAX_METRICS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """One ModelDeployment the autoscaler scales, with what it needs to scrape and decide."""

    key: Key
    uid: str
    md: ModelDeployment
    runtime: Runtime
    pods: Sequence[Mapping[str, Any]]
    children: Sequence[Mapping[str, Any]]
    previous: Mapping[str, Any] | None  # status.autoscaling as last written
    held: float = 0.0  # requests the gateway holds for it, waiting for a pod (demand.py)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether a pod (as ``observed.pod_facts`` keeps it) is Ready and has an IP."""
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready and bool(status.get("podIP"))


def target_of(
    key: Key,
    body: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    children: Sequence[Mapping[str, Any]],
    held: float = 0.0,
) -> Target | None:
    """The autoscaling target a ModelDeployment makes, or None (not native, not planned)."""
    status = body.get("status") or {}
    engine = (status.get("decision") or {}).get("engine")
    if engine is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    try:
        md = parse_model_deployment(body)
    except SpecError:
        return None
    autoscaling = md.spec.autoscaling
    if not autoscaling.enabled or autoscaling.mode != "native":
        return None
    return Target(
        key=key,
        uid=str(body["metadata"].get("uid", "")),
        md=md,
        runtime=runtime_for(engine),
        pods=pods,
        children=children,
        previous=status.get("autoscaling"),
        held=held,
    )


@dataclass
class Autoscaler:
    """The native autoscaler's memory: a record and a stabilisation window per object uid."""

    config: OperatorConfig
    timeout: float
    max_scale_up_step: int
    records: dict[str, ScalingRecord] = field(default_factory=dict)
    windows: dict[str, tuple[Recommendation, ...]] = field(default_factory=dict)

    def record_for(self, uid: str) -> ScalingRecord | None:
        """The current record of an object, if the autoscaler has decided for it."""
        return self.records.get(uid)

    def forget(self, uid: str) -> None:
        """Drop what is kept for a deleted object."""
        self.records.pop(uid, None)
        self.windows.pop(uid, None)

    async def round(self, client: httpx.AsyncClient, targets: Sequence[Target]) -> list[Key]:
        """Scrape and decide for every target at once; the keys whose record changed."""
        changed = await asyncio.gather(*(self._one(client, target) for target in targets))
        return [target.key for target, moved in zip(targets, changed, strict=True) if moved]

    async def _one(self, client: httpx.AsyncClient, target: Target) -> bool:
        autoscaling = target.md.spec.autoscaling
        record = self.records.get(target.uid) or initial_record(
            autoscaling,
            target.md.spec.replicas,
            target.previous,
            deployment_replicas(target.children),
            self.config.scale_to_zero,
        )
        samples = await asyncio.gather(
            *(self._sample(client, target.runtime, pod) for pod in target.pods)
        )
        policy = AutoscalePolicy(
            min_replicas=autoscaling.min_replicas,
            max_replicas=autoscaling.max_replicas,
            target_queue_depth=autoscaling.target_queue_depth,
            scale_down_delay_seconds=autoscaling.scale_down_delay_seconds,
            max_scale_up_step=self.max_scale_up_step,
            zero_allowed=self.config.scale_to_zero,
        )
        window = self.windows.get(target.uid, ())
        decision = decide(
            samples, record.desired, policy, window, time.monotonic(), held=target.held
        )
        self.windows[target.uid] = decision.window
        updated = record_decision(record, decision, utc_now())
        namespace, name = target.key
        AUTOSCALE_DESIRED.labels(namespace=namespace, name=name).set(updated.desired)
        AUTOSCALE_LOAD.labels(namespace=namespace, name=name).set(decision.load)
        if updated.desired != record.desired:
            direction = "up" if updated.desired > record.desired else "down"
            AUTOSCALE_CHANGES.labels(direction=direction).inc()
            log.info("autoscaling %s/%s: %s", namespace, name, decision.reason)
        self.records[target.uid] = updated
        return updated != record

    async def _sample(
        self, client: httpx.AsyncClient, runtime: Runtime, pod: Mapping[str, Any]
    ) -> PodSample:
        name = str(pod.get("metadata", {}).get("name", ""))
        if not pod_ready(pod):
            return PodSample(name, ready=False, load=None)
        address = pod["status"]["podIP"]
        host = f"[{address}]" if ":" in address else address
        url = f"http://{host}:{self.config.port}{runtime.metrics_path}"
        text = await self._get(client, url)
        gauges = runtime.load_gauges
        load = None
        if text is not None:
            load = parse_load(text, gauges.running, gauges.waiting, gauges.kv_cache_usage)
        AUTOSCALE_SCRAPES.labels(result="ok" if load is not None else "failed").inc()
        return PodSample(name, ready=True, load=load)

    async def _get(self, client: httpx.AsyncClient, url: str) -> str | None:
        """The metrics page, bounded in time and size; None on any failure."""
        try:
            async with asyncio.timeout(self.timeout):
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        return None
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > MAX_METRICS_BYTES:
                            return None
            return body.decode("utf-8", errors="replace")
        except (httpx.HTTPError, TimeoutError, OSError) as error:
            log.debug("scrape of %s failed: %s", url, error)
            return None
