"""One reconcile pass per ModelDeployment, serialised and coalesced, and the operator-wide
rounds that trigger them: the drift check and the native autoscaler.

``reconcile_key`` is what every trigger of ``handlers`` ends in: it releases finalizers an
earlier operator left, builds the ``ClusterView`` from the Kopf indexes, runs the pure
``reconcile`` in a thread with the one ``apply.Writer``, and classifies API errors. At most
``PASS_THREADS`` passes run at once, those for a spec not yet acted on first (its workload,
then the rest of it), the follow-ups of children's changes last (``PassSlots``). The
drift check and the autoscaler are each one task of the operator (not Kopf timers, which
would put a finalizer on every object), paused while Kopf peering pauses this operator.
With leader election (``election``) only the holder of the Lease runs passes and rounds; a
standby's triggers end at ``acting``, and taking the Lease starts a round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import heapq
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from kubernetes import client

from modeldeploy.apply import Writer
from modeldeploy.autoscaler import Autoscaler, Target, target_of
from modeldeploy.capacity import ReservationBook
from modeldeploy.clients import PASS_THREADS, PeeringReader
from modeldeploy.clock import utc_now
from modeldeploy.compliance import source_allowed
from modeldeploy.demand import held_requests
from modeldeploy.election import Leadership
from modeldeploy.fetch.sources.base import tls_context
from modeldeploy.metrics import (
    LAST_ERROR,
    RECONCILE_SECONDS,
    RECONCILES,
    RESYNCS,
    set_phase_counts,
)
from modeldeploy.observed import Key, finalizers_to_keep, labels_of, peering_paused, policies_of
from modeldeploy.reconcile import ClusterView, PassResult, reconcile
from modeldeploy.resolver import ArtifactResolver
from modeldeploy.settings import OperatorSettings
from modeldeploy.status import forbidden_status

ALL_NODES = "all"
log = logging.getLogger("modeldeploy.operator")

FOLLOW_UP_DELAY_S = 0.5


# The order in which waiting passes take a slot (``PassSlots``), each rank in arrival order.
NEW_WORKLOAD = 0  # a spec this process has not acted on: its workload (reconcile.WORKLOAD_KINDS)
NEW_REST = 1  # the rest of such a pass: Service, ML-BOM, status, Events
FOLLOW_UP = 2  # a pass on the children's changes (status)


class PassSlots:
    """How many passes run at once (one per pass thread), and which waiting one goes next:
    by rank (``NEW_WORKLOAD``, ``NEW_REST``, ``FOLLOW_UP``), each rank in arrival order. In a
    burst of creates every new spec's Deployment is written before the rest of any pass,
    and the follow-ups wait, each absorbing every trigger of its object meanwhile."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, rank: int) -> AsyncIterator[None]:
        """Hold one slot for the block; ``rank``: which waiting passes it goes before."""
        if self.free > 0:
            self.free -= 1
        else:
            turn = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (rank, next(self._arrivals), turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._hand_on()  # the slot came as the wait was cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        """Give a freed slot to the next waiting pass (one cancelled meanwhile is skipped)."""
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


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
    slots: PassSlots = field(default_factory=lambda: PassSlots(PASS_THREADS))
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
    "demand_leases",
)


def indexes_of(kwargs: Mapping[str, Any]) -> dict[str, kopf.Index[Any, Any]]:
    """The operator's Kopf indexes among a handler's keyword arguments."""
    return {name: kwargs[name] for name in INDEXES}


async def reconcile_key(
    key: Key, state: State, kwargs: Mapping[str, Any], *, at_once: bool = False
) -> None:
    """Run one coalesced, serialised reconcile pass for one ModelDeployment.

    Triggers coalesce: while a pass of the object waits (``FOLLOW_UP_DELAY_S`` when its spec
    was acted on already, for the one under way to end, or for a pass thread), later
    triggers add nothing, since it reads the newest state once it starts; a trigger during
    a pass under way makes one more pass after it. Passes for a spec this process has not
    acted on go first and at once, in two parts: the workload, then, after the other new
    specs' workloads, the rest (``PassSlots``); ``at_once``: the autoscaler moved the
    count (a model at zero is woken), which waits for no follow-up delay either.
    """
    if key in state.pending:
        return  # a waiting pass will read the newest state
    state.pending.add(key)
    waiting = True
    try:
        indexes = indexes_of(kwargs)
        found = list(indexes["model_deployments"].get(key, []))
        if not at_once and not (found and _unobserved(found[0], state)):
            # A follow-up waits a moment first: a child's changes come in runs (a pod is
            # created, bound, started and Ready within a second), and one pass reads them all.
            await asyncio.sleep(FOLLOW_UP_DELAY_S)
        async with state.locks.setdefault(key, asyncio.Lock()):
            if not acting(state):
                return  # a standby: the holder of the Lease runs the passes
            found = list(indexes["model_deployments"].get(key, []))
            first = bool(found) and _unobserved(found[0], state)
            async with state.slots.slot(NEW_WORKLOAD if first else FOLLOW_UP):
                state.pending.discard(key)
                waiting = False
                done = await _run_pass(key, state, indexes, workload_first=first)
            if done is not None and done.deferred:
                # Held as JSON while the second part waits (in a burst, every new spec's
                # waits at once): a fraction of the memory of the rendered dicts.
                written, done = json.dumps(done.written, separators=(",", ":")), None
                async with state.slots.slot(NEW_REST):
                    await _run_pass(key, state, indexes, known=json.loads(written))
    finally:
        if waiting:
            state.pending.discard(key)


def _unobserved(md: Mapping[str, Any], state: State) -> bool:
    """Whether no pass of this process has acted on the object's spec yet (a create, an
    update, or the first sight after start-up of one no operator has acted on)."""
    status = state.statuses.get(str(md["metadata"].get("uid", ""))) or md.get("status") or {}
    return bool(status.get("observedGeneration") != md["metadata"].get("generation"))


async def _run_pass(
    key: Key,
    state: State,
    indexes: Mapping[str, kopf.Index[Any, Any]],
    *,
    workload_first: bool = False,
    known: Sequence[Mapping[str, Any]] = (),
) -> PassResult | None:
    """One pass on the newest state of the indexes (its slot taken); ``known``: children
    this process wrote (as rendered) that the watch may not have delivered yet. None: no
    pass ran."""
    if not acting(state):
        return None  # the Lease was lost while the pass waited
    found = list(indexes["model_deployments"].get(key, []))
    if not found:
        with state.reservations.planning() as book:
            book.forget(key)
        return None
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
        return None
    view = _view(key, indexes)
    if known:
        seen = {(c["kind"], c["metadata"]["name"]) for c in view.children}
        missing = [c for c in known if (c["kind"], c["metadata"]["name"]) not in seen]
        view = dataclasses.replace(view, children=[*view.children, *missing])
    if uid in state.statuses:
        md = {**md, "status": state.statuses[uid]}
    started = time.monotonic()
    try:
        result: PassResult = await asyncio.to_thread(_pass, md, view, state, workload_first)
    except client.ApiException as error:
        RECONCILES.labels(result="error").inc()
        LAST_ERROR.set_to_current_time()
        await _api_error(error, md, state)
        return None
    except Exception:
        RECONCILES.labels(result="error").inc()
        LAST_ERROR.set_to_current_time()
        raise
    else:
        RECONCILES.labels(result="workload" if result.deferred else result.result).inc()
        if result.deferred:
            log.info("reconciled %s/%s: workload first: applied=%s", *key, result.applied)
            return result
        state.statuses[uid] = result.status
        state.phases[key] = result.phase
        set_phase_counts(state.phases.values())
        if result.writes:
            log.info(
                "reconciled %s/%s: phase=%s applied=%s pruned=%s writes=%d",
                *key, result.phase, result.applied, result.pruned, result.writes,
            )  # fmt: skip
        return result
    finally:
        RECONCILE_SECONDS.observe(time.monotonic() - started)


def acting(state: State) -> bool:
    """Whether this process runs passes: always, unless it stands by for the Lease."""
    return state.leader is None or state.leader.leading


def _pass(
    md: Mapping[str, Any], view: ClusterView, state: State, workload_first: bool
) -> PassResult:
    """Resolve the artifact (cached per spec.model), then reconcile. Runs in a thread."""
    assert state.writer is not None and state.resolver is not None
    spec = md.get("spec") or {}
    adapters = [a for a in spec.get("adapters") or [] if isinstance(a, Mapping)]
    sources = [str((spec.get("model") or {}).get("source", ""))]
    sources += [str(adapter.get("source", "")) for adapter in adapters]
    refused = next(
        (v for s in sources if (v := source_allowed(view.policies, view.namespace_labels, s))),
        None,
    )
    # A source no policy allows (the model's or an adapter's) is never contacted (the
    # operator must not be a probe of internal addresses): no resolution; the pass judges
    # and blocks the object.
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
        workload_first=workload_first,
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
    async with httpx.AsyncClient(trust_env=False, verify=tls_context()) as http:
        while True:
            await asyncio.sleep(state.settings.autoscale_interval_seconds)
            try:
                if state.autoscaler is None or await _paused(state):
                    continue
                keys = list(indexes["model_deployments"].keys())
                targets = [t for key in keys if (t := _target(key, state, indexes)) is not None]
                for key in await state.autoscaler.round(http, targets):
                    await reconcile_key(key, state, indexes, at_once=True)
            except Exception:  # the task must outlive any one round
                log.exception("an autoscaling round failed")


def _target(key: Key, state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> Target | None:
    """The autoscaling target of one ModelDeployment (None: not native), with the requests
    the gateway holds for it (its demand Lease, ``demand.py``)."""
    body = next(iter(indexes["model_deployments"].get(key, [])), None)
    if body is None:
        return None
    uid = str(body["metadata"].get("uid", ""))
    if uid in state.statuses:
        body = {**body, "status": state.statuses[uid]}
    view = _view(key, indexes)
    now = datetime.datetime.now(datetime.UTC)
    leases = indexes["demand_leases"].get(key, [])
    held = max((held_requests(lease, now) for lease in leases), default=0.0)
    return target_of(key, body, view.pods, view.children, held)


async def wake(key: Key, state: State, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """A demand Lease changed: an autoscaler round for that ModelDeployment now, not at the
    next interval, and a pass if its count moved (a model at zero scales to one)."""
    if state.autoscaler is None or await _paused(state):
        return
    target = _target(key, state, indexes)
    if target is None or target.held <= 0:
        return
    async with httpx.AsyncClient(trust_env=False, verify=tls_context()) as http:
        changed = await state.autoscaler.round(http, [target])
    for moved in changed:
        await reconcile_key(moved, state, indexes, at_once=True)


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
