"""Kopf wiring only: watches, in-memory indexes, the drift check, and handlers that all call
``reconcile``.

Every trigger — a ModelDeployment created, changed or resumed, the periodic drift check,
a Node change, a change of a child Deployment, Service, PVC or pod — ends in the same
level-triggered ``reconcile`` for the ModelDeployment concerned. The cluster state it
needs comes from Kopf indexes (kept current by watches), so a pass reads nothing from the
API server, and a pass with nothing to change writes nothing. Passes for one object are
serialised and coalesced: while one waits, further triggers for that object are dropped,
since the waiting pass will see the newest state. What the indexes keep of each object,
and every rule read from watched objects alone, is ``observed``; every status is built by
``status``; every write goes through ``apply.Writer``.

No handler needs a finalizer, so a ModelDeployment can be deleted while no operator runs
(its children are owned, and garbage-collected): watches (``on.event``) and indexes add
none, and the drift check is one task of the operator, started at start-up and stopped at
clean-up, that walks the ModelDeployment index — not a Kopf timer, for which Kopf puts a
finalizer on every object it runs for. A finalizer an earlier operator left is released
on first sight. While Kopf peering pauses this operator, the drift check pauses too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import getpass
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import kopf
from kubernetes import client
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from modeldeploy import __version__
from modeldeploy.api import API_GROUP, API_VERSION, PLURAL
from modeldeploy.apply import Writer
from modeldeploy.autoscaler import Autoscaler, target_of
from modeldeploy.clock import utc_now
from modeldeploy.metrics import (
    LAST_ERROR,
    RECONCILE_SECONDS,
    RECONCILES,
    RESYNCS,
    set_phase_counts,
)
from modeldeploy.observed import (
    Key,
    finalizers_to_keep,
    node_facts,
    owner_key,
    peering_paused,
    pod_facts,
    snapshot,
)
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.render import LABEL_MANAGED_BY, MANAGED_BY
from modeldeploy.resolver import ArtifactResolver
from modeldeploy.settings import OperatorSettings
from modeldeploy.status import forbidden_status

MD = (API_GROUP, API_VERSION, PLURAL)
CHILD_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}
ALL_NODES = "all"
# Kopf's finalizer, should a handler ever need one (none does): not one of the legacy
# names, which this operator releases itself (Kopf would race it for its own name).
KOPF_FINALIZER = f"{API_GROUP}/kopf-finalizer"
PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"
log = logging.getLogger("modeldeploy.operator")

PeeringReader = Callable[[], list[Mapping[str, Any] | None]]


@dataclass
class State:
    """Per-process state shared by the handlers (Kopf's memo)."""

    settings: OperatorSettings
    identity: str = ""  # this process in Kopf's peering objects
    writer: Writer | None = None
    resolver: ArtifactResolver | None = None
    read_peerings: PeeringReader | None = None  # None: standalone
    resync: asyncio.Task[None] | None = None
    autoscaler: Autoscaler | None = None
    autoscale: asyncio.Task[None] | None = None
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


# -- start-up --------------------------------------------------------------------------


def _api_client() -> client.ApiClient:
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        kube_config.load_kube_config()
    api = client.ApiClient()
    api.user_agent = f"modeldeploy/{__version__}"  # tells our calls apart in audit logs
    return api


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, the kubeconfig."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Configure Kopf's storage under our group, the writer, the metrics, the drift check."""
    state: State = memo.state
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.enabled = False  # our own Events, for decisions and failures only
    settings.watching.server_timeout = 300
    api = _api_client()
    state.writer = Writer(api)
    state.resolver = ArtifactResolver(
        _secret_reader(client.CoreV1Api(api)), dict(state.settings.planning.source_settings)
    )
    state.read_peerings = _peering_reader(client.CustomObjectsApi(api), state.settings)
    if state.settings.metrics_port:
        start_http_server(state.settings.metrics_port, addr=state.settings.bind_address)
    # The indexes handed to start-up handlers are the live ones (empty until listed).
    state.resync = asyncio.create_task(resync_forever(state, _indexes(kwargs)), name="resync")
    settings_ = state.settings
    state.autoscaler = Autoscaler(
        settings_.planning, settings_.scrape_timeout_seconds, settings_.max_scale_up_step
    )
    state.autoscale = asyncio.create_task(
        autoscale_forever(state, _indexes(kwargs)), name="autoscale"
    )
    log.info(
        "modeldeploy operator starting: namespaces=%s resync=%ss peering=%s",
        state.settings.namespaces or "all",
        state.settings.resync_seconds,
        state.settings.peering or "standalone",
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the drift check and the autoscaler."""
    state: State = memo.state
    tasks = [state.resync, state.autoscale]
    state.resync = state.autoscale = None
    for task in tasks:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _secret_reader(core: client.CoreV1Api) -> Any:
    """Read one Secret's data (decoded) by name, None when it does not exist. Only ``get``:
    the operator never lists or watches Secrets, and keeps none of their values."""

    def read(namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        return {
            key: base64.b64decode(value).decode(errors="replace")
            for key, value in (secret.data or {}).items()
        }

    return read


def _peering_reader(
    custom: client.CustomObjectsApi, settings: OperatorSettings
) -> PeeringReader | None:
    """Read the Kopf peering objects this operator announces itself in; None: standalone.

    The ClusterKopfPeering when cluster-wide, else the KopfPeering of each namespace
    served; a missing one reads as None (``list`` by name, which Kopf's peering needs too).
    """
    name = settings.peering
    if name is None:
        return None
    by_name = {"field_selector": f"metadata.name={name}"}

    def first(found: Mapping[str, Any]) -> Mapping[str, Any] | None:
        items = found.get("items") or []
        return cast("Mapping[str, Any]", items[0]) if items else None

    def read() -> list[Mapping[str, Any] | None]:
        try:
            if not settings.namespaces:
                found = [
                    custom.list_cluster_custom_object(
                        PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", **by_name
                    )
                ]
            else:
                found = [
                    custom.list_namespaced_custom_object(
                        PEERING_GROUP, PEERING_VERSION, ns, "kopfpeerings", **by_name
                    )
                    for ns in settings.namespaces
                ]
        except client.ApiException as error:
            if error.status == 404:  # the peering CRD is not served: Kopf pauses
                return [None]
            raise
        return [first(listed) for listed in found]

    return read


def _identity() -> str:
    """This process's name in the peering objects, in Kopf's form: the pod (``POD_ID``),
    else ``user@host/started/random``."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (a container)
        user = str(os.getuid())
    started = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d%H%M%S")
    return f"{user}@{socket.gethostname()}/{started}/{secrets.token_hex(2)}"


# -- indexes ---------------------------------------------------------------------------


@kopf.index(*MD)
def model_deployments(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """Every ModelDeployment, by (namespace, name)."""
    return {(namespace, name): snapshot(body)}


@kopf.index("nodes")
def nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    """The node pool as planning sees it."""
    return {ALL_NODES: node_facts(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
def child_deployments(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Deployments the operator manages, by owning ModelDeployment."""
    key = owner_key(namespace, labels)
    return {key: snapshot(body)} if key else None


@kopf.index("v1", "services", labels=CHILD_LABELS)
def child_services(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Services the operator manages, by owning ModelDeployment."""
    key = owner_key(namespace, labels)
    return {key: snapshot(body)} if key else None


@kopf.index("v1", "persistentvolumeclaims", labels=CHILD_LABELS)
def child_claims(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Cache PVCs the operator manages, by owning ModelDeployment."""
    key = owner_key(namespace, labels)
    return {key: snapshot(body)} if key else None


@kopf.index("v1", "pods", labels=CHILD_LABELS)
def child_pods(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Pods of managed Deployments, by owning ModelDeployment (status facts only)."""
    key = owner_key(namespace, labels)
    return {key: pod_facts(body)} if key else None


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
    )


INDEXES = (
    "model_deployments",
    "nodes",
    "child_deployments",
    "child_services",
    "child_claims",
    "child_pods",
)


def _indexes(kwargs: Mapping[str, Any]) -> dict[str, kopf.Index[Any, Any]]:
    return {name: kwargs[name] for name in INDEXES}


async def reconcile_key(key: Key, state: State, kwargs: Mapping[str, Any]) -> None:
    """Run one coalesced, serialised reconcile pass for one ModelDeployment."""
    if key in state.pending:
        return  # a queued pass will read the newest state
    state.pending.add(key)
    lock = state.locks.setdefault(key, asyncio.Lock())
    async with lock:
        state.pending.discard(key)
        indexes = _indexes(kwargs)
        found = list(indexes["model_deployments"].get(key, []))
        if not found:
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


def _pass(md: Mapping[str, Any], view: ClusterView, state: State) -> Any:
    """Resolve the artifact (cached per spec.model), then reconcile. Runs in a thread."""
    assert state.writer is not None and state.resolver is not None
    artifact = state.resolver.state_for(md)
    uid = str(md["metadata"].get("uid", ""))
    scaling = state.autoscaler.record_for(uid) if state.autoscaler is not None else None
    return reconcile(
        md, view, state.writer, state.settings.planning, artifact=artifact, scaling=scaling
    )


def _release_finalizers(md: Mapping[str, Any], keep: list[str], state: State) -> None:
    """Release the finalizers an earlier operator left (``keep`` the others). A thread."""
    assert state.writer is not None
    meta = md["metadata"]
    state.writer.set_finalizers(meta["namespace"], meta["name"], keep, meta.get("resourceVersion"))
    log.info("released the finalizers of an earlier operator from %s/%s", *_key(meta))


def _key(meta: Mapping[str, Any]) -> Key:
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
    """Whether Kopf peering pauses this operator now (never when standalone)."""
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


# -- triggers --------------------------------------------------------------------------


@kopf.on.event(*MD)
async def model_deployment_event(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A ModelDeployment appeared, changed or went away.

    Level-triggered on ``metadata.generation``: a pass runs when the spec is newer than the
    status says it has observed, or the first time this process sees the object (resume);
    the events our own status writes cause are skipped. Labels and annotations carry no
    planning input, so their changes wait for the next drift check.
    """
    state: State = memo.state
    meta = body["metadata"]
    key = _key(meta)
    if event["type"] == "DELETED":
        state.statuses.pop(meta.get("uid", ""), None)
        state.released.pop(meta.get("uid", ""), None)
        if state.resolver is not None:
            state.resolver.forget(meta.get("uid", ""))
        if state.autoscaler is not None:
            state.autoscaler.forget(meta.get("uid", ""))
        state.phases.pop(key, None)
        state.locks.pop(key, None)
        state.seen.discard(key)
        set_phase_counts(state.phases.values())
        return
    observed = (body.get("status") or {}).get("observedGeneration")
    if key in state.seen and observed == meta.get("generation"):
        return
    state.seen.add(key)
    try:
        await reconcile_key(key, state, kwargs)
    except Exception:
        state.seen.discard(key)  # the next event of this object retries the pass
        raise


@kopf.on.event("nodes")
async def node_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Re-plan every ModelDeployment when the pool's planning facts change."""
    state: State = memo.state
    name = body["metadata"]["name"]
    facts = None if event["type"] == "DELETED" else node_facts(body)
    if state.node_facts.get(name) == facts:
        return
    if facts is None:
        state.node_facts.pop(name, None)
    else:
        state.node_facts[name] = facts
    keys = list(kwargs["model_deployments"].keys())
    await asyncio.gather(*(reconcile_key(key, state, kwargs) for key in keys))


async def _child_changed(
    namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo, kwargs: Mapping[str, Any]
) -> None:
    key = owner_key(namespace, labels)
    if key is not None:
        await reconcile_key(key, memo.state, kwargs)


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS)
@kopf.on.event("v1", "services", labels=CHILD_LABELS)
@kopf.on.event("v1", "persistentvolumeclaims", labels=CHILD_LABELS)
@kopf.on.event("v1", "pods", labels=CHILD_LABELS)
async def child_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A child changed (status, drift, deletion): reconcile its owner."""
    await _child_changed(namespace, labels, memo, kwargs)


async def run_operator(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT)."""
    state = State(settings, identity=_identity())
    memo = kopf.Memo(state=state)
    endpoint = None
    if settings.health_port:
        endpoint = f"http://{settings.bind_address}:{settings.health_port}/healthz"
    await kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        identity=cast(Any, state.identity),  # kopf's Identity is a NewType of str
        liveness_endpoint=endpoint,
        memo=memo,
    )
