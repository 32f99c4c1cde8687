"""One reconcile pass per ModelDeployment, serialised and coalesced, and the operator-wide
rounds that trigger them: the drift check and the native autoscaler.

``reconcile_key`` is what every trigger of ``handlers`` ends in: it releases finalizers an
earlier operator left, builds the ``ClusterView`` from the Kopf indexes, runs the pure
``reconcile`` in a thread with the one ``apply.Writer``, and classifies API errors. The
drift check and the autoscaler are each one task of the operator (not Kopf timers, which
would put a finalizer on every object), paused while Kopf peering pauses this operator.
With leader election (``election``) only the holder of the Lease runs passes and rounds; a
standby's triggers end at ``acting``, and taking the Lease starts a round.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from kubernetes import client

from modeldeploy.apply import Writer
from modeldeploy.autoscaler import Autoscaler, target_of
from modeldeploy.capacity import ReservationBook
from modeldeploy.clients import PeeringReader
from modeldeploy.clock import utc_now
from modeldeploy.compliance import source_allowed
from modeldeploy.election import Leadership
from modeldeploy.metrics import (
    LAST_ERROR,
    RECONCILE_SECONDS,
    RECONCILES,
    RESYNCS,
    set_phase_counts,
)
from modeldeploy.observed import Key, finalizers_to_keep, labels_of, peering_paused, policies_of
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.resolver import ArtifactResolver
from modeldeploy.settings import OperatorSettings
from modeldeploy.status import forbidden_status

ALL_NODES = "all"
log = logging.getLogger("modeldeploy.operator")


@dataclass
class State:
    """Per-process state shared by the handlers (Kopf's memo)."""

    settings: OperatorSettings
    identity: str = ""  # this process in Kopf's peering objects
    writer: Writer | None = None
    resolver: ArtifactResolver | None = None
    read_peerings: PeeringReader | None = None  # None: standalone
    leader: Leadership | None = None  # None: no leader election (always acts)
    resync: asyncio.Task[None] | None = None
    autoscaler: Autoscaler | None = None
    autoscale: asyncio.Task[None] | None = None
    # The plans this process made, until their pods are bound (free capacity, capacity.py).
    reservations: ReservationBook = field(default_factory=ReservationBook)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    phases: dict[Key, str] = field(default_factory=dict)
    node_facts: dict[str, Any] = field(default_factory=dict)
    seen: set[Key] = field(default_factory=set)
    # The status this process last computed per object uid: the watch may not have
    # delivered our own write yet when the next pass starts, and only we write status.
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The resourceVersion per uid whose legacy finalizers were released (the watch may
    # still deliver that version after the write).
    released: dict[str, str | None] = field(default_factory=dict)


# -- the one reconcile entry -----------------------------------------------------------


def _view(key: Key, indexes: Mapping[str, kopf.Index[Any, Any]]) -> ClusterView:
    children = [
        *indexes["child_deployments"].get(key, []),
        *indexes["child_services"].get(key, []),
        *indexes["child_claims"].get(key, []),
    ]
    return ClusterView(
        nodes=list(indexes["nodes"].get(ALL_NODES, [])),
        children=children,
        pods=list(indexes["child_pods"].get(key, [])),
        policies=policies_of(indexes["model_policies"]),
        namespace_labels=labels_of(indexes["namespace_labels"], key[0]),
        usage=list(indexes["pod_usage"].get(ALL_NODES, [])),
    )


INDEXES = (
    "model_deployments",
    "nodes",
    "child_deployments",
    "child_services",
    "child_claims",
    "child_pods",
    "pod_usage",
    "model_policies",
    "namespace_labels",
)


def indexes_of(kwargs: Mapping[str, Any]) -> dict[str, kopf.Index[Any, Any]]:
    """The operator's Kopf indexes among a handler's keyword arguments."""
    return {name: kwargs[name] for name in INDEXES}


async def reconcile_key(key: Key, state: State, kwargs: Mapping[str, Any]) -> None:
    """Run one coalesced, serialised reconcile pass for one ModelDeployment."""
    if key in state.pending:
        return  # a queued pass will read the newest state
    state.pending.add(key)
    lock = state.locks.setdefault(key, asyncio.Lock())
    async with lock:
        state.pending.discard(key)
        if not acting(state):
            return  # a standby: the holder of the Lease runs the passes
        indexes = indexes_of(kwargs)
        found = list(indexes["model_deployments"].get(key, []))
        if not found:
            with state.reservations.planning() as book:
                book.forget(key)
            return
        md = found[0]
        uid, version = md["metadata"].get("uid", ""), md["metadata"].get("resourceVersion")
        keep = finalizers_to_keep(md)
        # Checked and claimed before any await: the watch may deliver the object's
        # deletion (which forgets the claim) while the write is under way.
        if keep is not None and (uid not in state.released or state.released[uid] != version):
            state.released[uid] = version
            try:
                await asyncio.to_thread(_release_finalizers, md, keep, state)
            except client.ApiException as error:
                state.released.pop(uid, None)
                await _api_error(error, md, state)
        if md["metadata"].get("deletionTimestamp"):
            return
        view = _view(key, indexes)
        if uid in state.statuses:
            md = {**md, "status": state.statuses[uid]}
        started = time.monotonic()
        try:
            result = await asyncio.to_thread(_pass, md, view, state)
        except client.ApiException as error:
            RECONCILES.labels(result="error").inc()
            LAST_ERROR.set_to_current_time()
            await _api_error(error, md, state)
        except Exception:
            RECONCILES.labels(result="error").inc()
            LAST_ERROR.set_to_current_time()
            raise
        else:
            RECONCILES.labels(result=result.result).inc()
            state.statuses[uid] = result.status
            state.phases[key] = result.phase
            set_phase_counts(state.phases.values())
            if result.writes:
                log.info(
                    "reconciled %s/%s: phase=%s applied=%s pruned=%s writes=%d",
                    *key, result.phase, result.applied, result.pruned, result.writes,
                )  # fmt: skip
        finally:
            RECONCILE_SECONDS.observe(time.monotonic() - started)


def acting(state: State) -> bool:
    """Whether this process runs passes: always, unless it stands by for the Lease."""
    return state.leader is None or state.leader.leading


def _pass(md: Mapping[str, Any], view: ClusterView, state: State) -> Any:
    """Resolve the artifact (cached per spec.model), then reconcile. Runs in a thread."""
    assert state.writer is not None and state.resolver is not None
    source = str(((md.get("spec") or {}).get("model") or {}).get("source", ""))
    refused = source_allowed(view.policies, view.namespace_labels, source)
    # A source no policy allows is never contacted (the operator must not be a probe of
    # internal addresses): no resolution; the pass judges and blocks the object.
    artifact = None if refused is not None else state.resolver.state_for(md)
    uid = str(md["metadata"].get("uid", ""))
    scaling = state.autoscaler.record_for(uid) if state.autoscaler is not None else None
    return reconcile(
        md,
        view,
        state.writer,
        state.settings.planning,
        artifact=artifact,
        scaling=scaling,
        reservations=state.reservations,
    )


def _release_finalizers(md: Mapping[str, Any], keep: list[str], state: State) -> None:
    """Release the finalizers an earlier operator left (``keep`` the others). A thread."""
    assert state.writer is not None
    meta = md["metadata"]
    state.writer.set_finalizers(meta["namespace"], meta["name"], keep, meta.get("resourceVersion"))
    log.info("released the finalizers of an earlier operator from %s/%s", *key_of(meta))


def key_of(meta: Mapping[str, Any]) -> Key:
    """(namespace, name) of an object's metadata."""
    return meta.get("namespace") or "", meta["name"]


async def resync_forever(state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """The drift check: every ``resyncSeconds``, a pass for every indexed ModelDeployment.

    One task for the whole operator (a Kopf timer would need a finalizer on every object).
    A round is skipped while Kopf peering pauses this operator, or when the peering cannot
    be read; a pass that fails is logged and tried again in the next round.
    """
    while True:
        await asyncio.sleep(state.settings.resync_seconds)
        try:
            await _resync_round(state, indexes)
        except Exception:  # the task must outlive any one round
            log.exception("a drift-check round failed")


async def elected_round(state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """On taking the Lease: a pass for every ModelDeployment (the events a standby saw ran
    none), as a drift-check round.

    What this process remembers of its own writes (statuses, released finalizers, the
    autoscaler's records) held only while it was the one writer: another leader may have
    written since it last led, so it starts from what the cluster says, as a new process.
    """
    state.statuses.clear()
    state.released.clear()
    if state.autoscaler is not None:
        for uid in list(state.autoscaler.records):
            state.autoscaler.forget(uid)
    log.info("leading: a pass for each of %d ModelDeployments", len(indexes["model_deployments"]))
    await _resync_round(state, indexes)


async def _resync_round(state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """One round of the drift check: all passes at once, each coalesced and serialised."""
    if await _paused(state):
        RESYNCS.labels(outcome="paused").inc()
        return
    RESYNCS.labels(outcome="ran").inc()
    keys = list(indexes["model_deployments"].keys())
    results = await asyncio.gather(
        *(reconcile_key(key, state, indexes) for key in keys), return_exceptions=True
    )
    for key, outcome in zip(keys, results, strict=True):
        if isinstance(outcome, kopf.TemporaryError):
            log.warning("drift check of %s/%s: %s", *key, outcome)
        elif isinstance(outcome, Exception):
            log.error("drift check of %s/%s failed", *key, exc_info=outcome)


async def autoscale_forever(state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """The operator-native autoscaler: every ``autoscaleIntervalSeconds``, scrape and decide
    for every native-mode ModelDeployment, then a pass for each whose count or load moved.

    Its own task, so a slow pod never delays a reconcile pass; paused with the drift check.
    """
    async with httpx.AsyncClient(trust_env=False) as http:
        while True:
            await asyncio.sleep(state.settings.autoscale_interval_seconds)
            try:
                if state.autoscaler is None or await _paused(state):
                    continue
                targets = []
                for key, found in list(indexes["model_deployments"].items()):
                    body = next(iter(found), None)
                    if body is None:
                        continue
                    uid = str(body["metadata"].get("uid", ""))
                    if uid in state.statuses:
                        body = {**body, "status": state.statuses[uid]}
                    view = _view(key, indexes)
                    target = target_of(key, body, view.pods, view.children)
                    if target is not None:
                        targets.append(target)
                for key in await state.autoscaler.round(http, targets):
                    await reconcile_key(key, state, indexes)
            except Exception:  # the task must outlive any one round
                log.exception("an autoscaling round failed")


async def _paused(state: State) -> bool:
    """Whether this operator stands by for the Lease, or Kopf peering pauses it now (never
    when standalone)."""
    if not acting(state):
        return True
    if state.read_peerings is None:
        return False
    try:
        peerings = await asyncio.to_thread(state.read_peerings)
    except Exception as error:  # the API server, or the connection to it
        log.warning("skipping a drift check: cannot read the peering: %s", error)
        return True
    return peering_paused(peerings, state.identity, datetime.datetime.now(datetime.UTC))


# Retry delays for transient API errors: conflicts, throttling, server errors.
_TRANSIENT_STATUS = {409, 429, 500, 502, 503, 504}


async def _api_error(error: client.ApiException, md: Mapping[str, Any], state: State) -> None:
    """Classify an API error: retry transient ones, report a missing permission."""
    status = int(error.status or 0)
    if status in _TRANSIENT_STATUS or status == 0:
        raise kopf.TemporaryError(f"API server answered {status}: {error.reason}", delay=5)
    if status == 403:
        message = f"the operator lacks a permission: {_api_message(error)}"
        await asyncio.to_thread(_report_forbidden, md, message, state)
        raise kopf.TemporaryError(message, delay=60)
    raise error


def _api_message(error: client.ApiException) -> str:
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except ValueError:
        return str(error.reason)


def _report_forbidden(md: Mapping[str, Any], message: str, state: State) -> None:
    """Put the missing permission into the Degraded condition (status kept otherwise)."""
    assert state.writer is not None
    meta = md["metadata"]
    generation = int(meta.get("generation") or 1)
    status = forbidden_status(md.get("status") or {}, message, generation=generation, now=utc_now())
    try:
        state.writer.apply_status(meta["namespace"], meta["name"], status)
        state.writer.event(md, "Warning", "Forbidden", message, "Reconcile")
    except client.ApiException as error:
        log.error("cannot report the missing permission on %s: %s", meta["name"], error)
