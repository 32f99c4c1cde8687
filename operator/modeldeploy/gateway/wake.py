"""The wake signal: the gateway tells the operator at once that a model has demand, and how much.

The gateway never writes a ModelDeployment, and the autoscaler's scrape of the engines
sees nothing while no pod runs; so a request the gateway holds for a ModelDeployment with
no Ready pod is signalled with a Lease of its own. The contract (the operator's reading of
it is ``modeldeploy.demand``, whose names this module uses):

- a ``coordination.k8s.io/v1`` Lease named ``<ModelDeployment name>-demand`` in the
  ModelDeployment's namespace, labelled ``modeldeploy.io/model-deployment=<name>`` and
  ``modeldeploy.io/demand=true`` (the operator watches Leases with the second label);
- the annotation ``modeldeploy.io/held``: the requests the writing replica holds for that
  ModelDeployment (all its served names together), as a decimal; ``"0"`` once its last
  held request went to a pod, timed out or left (``holding.HoldQueue`` writes that once);
- ``spec.renewTime``: when that count was written (MicroTime, UTC); ``spec.holderIdentity``:
  the replica that wrote it (its pod name, ``POD_NAME``); ``spec.leaseDurationSeconds``:
  ``demand.DEMAND_FRESH_SECONDS``, how long the operator counts it after that renewal;
- written by create-or-patch (labels, the annotation and the spec together, in one
  request) whenever the gateway's hold queue wakes a model (its first held request, then
  every few seconds while any waits, each with the count of that moment), at most once
  every ``MIN_INTERVAL_S`` per ModelDeployment per gateway replica: a call inside the
  interval writes nothing, but its count is kept, and the next write that is due carries
  the latest count (a write waiting on this module's thread reads it when it goes). The
  gateway never reads, deletes or owns the Lease (no owner reference: the operator may
  delete it with the ModelDeployment).

Several gateway replicas write the same Lease, and the last writer's count stands: the
Lease says what one replica holds, not the sum. That is a deliberate under-count, bounded
by the number of replicas (the Service spreads requests over them, so each holds about
its share): any count wakes a model at zero at once, and the first step up from zero is
one replica whatever the count (``autoscale.decide``); the count only sizes the steps
taken while the first pod starts, and once a pod is Ready the requests go to it and the
engines' own metrics count them (for at most one wake interval they count twice, until
the replica writes ``"0"``). Per-replica annotations summed by the operator would be
exact, but a replica's name may not fit an annotation key and every replica that goes
(each rolling update) would leave a stale entry on a Lease that neither side prunes: the
gateway never reads it, the operator never writes it.

This module owns the Lease body and the rate limit (pure: ``demand_lease``, ``Limiter``)
and ``LeaseWaker``, the ``wake`` callback of ``gateway.server.Gateway``: it returns at
once and writes on its own thread, so no caller waits for the API server.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from modeldeploy.demand import (
    DEMAND_FRESH_SECONDS,
    DEMAND_LABEL,
    HELD_ANNOTATION,
    demand_lease_name,
)
from modeldeploy.gateway.routing import ModelTarget
from modeldeploy.render import LABEL_MODEL_DEPLOYMENT

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 3.0
REQUEST_TIMEOUT_S = 10.0

Key = tuple[str, str]  # (namespace, ModelDeployment)


def micro_time(now: datetime.datetime) -> str:
    """A Kubernetes MicroTime: UTC, microseconds, ``Z``."""
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def demand_lease(
    namespace: str, deployment: str, identity: str, now: datetime.datetime, held: int
) -> dict[str, Any]:
    """The Lease that says: at ``now``, ``identity`` holds ``held`` requests for ``deployment``."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": demand_lease_name(deployment),
            "namespace": namespace,
            "labels": {LABEL_MODEL_DEPLOYMENT: deployment, DEMAND_LABEL: "true"},
            "annotations": {HELD_ANNOTATION: str(max(0, held))},
        },
        "spec": {
            "holderIdentity": identity,
            "renewTime": micro_time(now),
            "leaseDurationSeconds": math.ceil(DEMAND_FRESH_SECONDS),
        },
    }


class Limiter:
    """At most one signal per key every ``interval`` seconds (not thread-safe)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Key, float] = {}

    def due(self, key: Key, now: float) -> bool:
        """Whether a signal for ``key`` may go now; if so, it counts as sent."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def forget(self, key: Key) -> None:
        """Let the next signal for ``key`` go at once (the last one failed)."""
        self._last.pop(key, None)


class LeaseWaker:
    """``wake(target, held)``: create or patch the target's demand Lease with the count
    ``held``, on a thread of its own."""

    def __init__(
        self,
        api: client.ApiClient,
        identity: str,
        *,
        interval: float = MIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self.leases = client.CoordinationV1Api(api)
        self.identity = identity
        self._limiter = Limiter(interval)
        self._clock, self._wall = clock, wall
        self._lock = threading.Lock()
        self._held: dict[Key, int] = {}  # the latest count per ModelDeployment
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wake")

    def __call__(self, target: ModelTarget, held: int) -> None:
        """Signal ``held`` requests for the target's ModelDeployment, unless signalled just
        now (then the count waits for the next write that is due)."""
        key = (target.namespace, target.deployment)
        with self._lock:
            self._held[key] = max(0, held)
            if not self._limiter.due(key, self._clock()):
                return
        try:
            self._executor.submit(self._signal, key)
        except RuntimeError:  # shut down
            return

    def _signal(self, key: Key) -> None:
        namespace, deployment = key
        with self._lock:
            held = self._held.get(key, 1)
        body = demand_lease(namespace, deployment, self.identity, self._wall(), held)
        name = demand_lease_name(deployment)
        try:
            try:
                self._patch(name, namespace, body)
            except client.ApiException as error:
                if error.status != 404:
                    raise
                try:
                    self.leases.create_namespaced_lease(
                        namespace, body, _request_timeout=REQUEST_TIMEOUT_S
                    )
                except client.ApiException as created:
                    if created.status != 409:  # another replica created it meanwhile
                        raise
                    self._patch(name, namespace, body)
        except Exception as error:
            with self._lock:
                self._limiter.forget(key)
            reason = error.reason if isinstance(error, client.ApiException) else error
            log.warning("cannot signal demand on Lease %s/%s: %s", namespace, name, reason)
        else:
            log.info(
                "signalled demand for %s/%s (Lease %s): %d held", namespace, deployment, name, held
            )

    def _patch(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        patch = {
            "metadata": {"labels": metadata["labels"], "annotations": metadata["annotations"]},
            "spec": body["spec"],
        }
        self.leases.patch_namespaced_lease(
            name, namespace, patch, _request_timeout=REQUEST_TIMEOUT_S
        )

    def close(self) -> None:
        """Stop signalling; a write under way finishes on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
