"""Kopf wiring only: watches, in-memory indexes, and handlers that all call ``reconcile``.

Every trigger — a ModelDeployment created, changed or resumed, the periodic drift check,
a Node change, a change of a child Deployment, Service, PVC or pod — ends in the same
level-triggered ``reconcile`` for the ModelDeployment concerned. The cluster state it
needs comes from Kopf indexes (kept current by watches), so a pass reads nothing from the
API server, and a pass with nothing to change writes nothing. Passes for one object are
serialised and coalesced: while one waits, further triggers for that object are dropped,
since the waiting pass will see the newest state.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes import client
from kubernetes import config as kube_config
from prometheus_client import start_http_server

from modeldeploy import __version__
from modeldeploy.api import API_GROUP, API_VERSION, PLURAL
from modeldeploy.apply import Writer
from modeldeploy.metrics import LAST_ERROR, RECONCILE_SECONDS, RECONCILES, set_phase_counts
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.render import LABEL_MANAGED_BY, LABEL_MODEL_DEPLOYMENT, MANAGED_BY
from modeldeploy.resolver import ArtifactResolver
from modeldeploy.settings import OperatorSettings
from modeldeploy.status import condition, utc_now

MD = (API_GROUP, API_VERSION, PLURAL)
CHILD_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}
ALL_NODES = "all"
log = logging.getLogger("modeldeploy.operator")

Key = tuple[str, str]


@dataclass
class State:
    """Per-process state shared by the handlers (Kopf's memo)."""

    settings: OperatorSettings
    writer: Writer | None = None
    resolver: ArtifactResolver | None = None
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    phases: dict[Key, str] = field(default_factory=dict)
    node_facts: dict[str, Any] = field(default_factory=dict)
    seen: set[Key] = field(default_factory=set)
    # The status this process last computed per object uid: the watch may not have
    # delivered our own write yet when the next pass starts, and only we write status.
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


# Taints the node lifecycle controller and kubelet set for passing conditions (NotReady,
# unreachable, pressure): scheduling and eviction deal with those; placement must not
# move a workload to another hardware class because a node missed a heartbeat.
_TRANSIENT_TAINT_PREFIX = "node.kubernetes.io/"


def _node_facts(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a Node that planning reads: hardware, deliberate taints, cordon.

    Readiness is left out on purpose (a node that stops reporting keeps its class until it
    is deleted or relabelled), and so are heartbeats, so they trigger no re-plan.
    """
    status = body.get("status", {})
    taints = [
        copy.deepcopy(t)
        for t in body.get("spec", {}).get("taints") or []
        if not str(t.get("key", "")).startswith(_TRANSIENT_TAINT_PREFIX)
    ]
    return {
        "metadata": {
            "name": body["metadata"]["name"],
            "labels": dict(body["metadata"].get("labels") or {}),
        },
        "spec": {
            "taints": taints,
            "unschedulable": bool(body.get("spec", {}).get("unschedulable")),
        },
        "status": {
            "allocatable": dict(status.get("allocatable") or {}),
            "capacity": dict(status.get("capacity") or {}),
        },
    }


def _pod_facts(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status", {})
    return {
        "metadata": {"name": body["metadata"]["name"]},
        "spec": {"nodeName": body.get("spec", {}).get("nodeName")},
        "status": {
            "phase": status.get("phase"),
            "podIP": status.get("podIP"),
            "conditions": copy.deepcopy(status.get("conditions") or []),
            "containerStatuses": copy.deepcopy(status.get("containerStatuses") or []),
            "initContainerStatuses": copy.deepcopy(status.get("initContainerStatuses") or []),
        },
    }


def _owner_key(namespace: str | None, labels: Mapping[str, str]) -> Key | None:
    owner = labels.get(LABEL_MODEL_DEPLOYMENT)
    return (namespace, owner) if namespace and owner else None


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
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure Kopf's identity under our group, the writer and the metrics endpoint."""
    state: State = memo.state
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
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
    if state.settings.metrics_port:
        start_http_server(state.settings.metrics_port, addr=state.settings.bind_address)
    log.info(
        "modeldeploy operator starting: namespaces=%s resync=%ss peering=%s",
        state.settings.namespaces or "all",
        state.settings.resync_seconds,
        state.settings.peering or "standalone",
    )


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


# -- indexes ---------------------------------------------------------------------------


@kopf.index(*MD)
def model_deployments(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """Every ModelDeployment, by (namespace, name)."""
    return {(namespace, name): _snapshot(body)}


@kopf.index("nodes")
def nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    """The node pool as planning sees it."""
    return {ALL_NODES: _node_facts(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS)
def child_deployments(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Deployments the operator manages, by owning ModelDeployment."""
    key = _owner_key(namespace, labels)
    return {key: _snapshot(body)} if key else None


@kopf.index("v1", "services", labels=CHILD_LABELS)
def child_services(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Services the operator manages, by owning ModelDeployment."""
    key = _owner_key(namespace, labels)
    return {key: _snapshot(body)} if key else None


@kopf.index("v1", "persistentvolumeclaims", labels=CHILD_LABELS)
def child_claims(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Cache PVCs the operator manages, by owning ModelDeployment."""
    key = _owner_key(namespace, labels)
    return {key: _snapshot(body)} if key else None


@kopf.index("v1", "pods", labels=CHILD_LABELS)
def child_pods(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Pods of managed Deployments, by owning ModelDeployment (status facts only)."""
    key = _owner_key(namespace, labels)
    return {key: _pod_facts(body)} if key else None


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
        if not found or found[0]["metadata"].get("deletionTimestamp"):
            return
        md, view = found[0], _view(key, indexes)
        uid = md["metadata"].get("uid", "")
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
    return reconcile(md, view, state.writer, state.settings.planning, artifact=artifact)


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
    status = copy.deepcopy(dict(md.get("status") or {}))
    generation = int(meta.get("generation") or 1)
    now = utc_now()
    degraded = condition("Degraded", True, "Forbidden", message, generation=generation, now=now)
    others = [c for c in status.get("conditions") or [] if c.get("type") != "Degraded"]
    status["conditions"] = [*others, degraded]
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
    planning input, so their changes wait for the next resync.
    """
    state: State = memo.state
    meta = body["metadata"]
    key = (meta.get("namespace") or "", meta["name"])
    if event["type"] == "DELETED":
        state.statuses.pop(meta.get("uid", ""), None)
        if state.resolver is not None:
            state.resolver.forget(meta.get("uid", ""))
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


async def resync(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """The periodic drift check (registered as a timer by ``register_resync``)."""
    await reconcile_key((namespace or "", name), memo.state, kwargs)


@kopf.on.event("nodes")
async def node_changed(
    event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Re-plan every ModelDeployment when the pool's planning facts change."""
    state: State = memo.state
    name = body["metadata"]["name"]
    facts = None if event["type"] == "DELETED" else _node_facts(body)
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
    key = _owner_key(namespace, labels)
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


def register_resync(interval: float) -> None:
    """Register the drift-check timer with the configured period."""
    kopf.timer(*MD, interval=interval, initial_delay=interval, id="resync")(resync)


async def run_operator(settings: OperatorSettings) -> None:
    """Run the operator until it is stopped (SIGTERM/SIGINT)."""
    register_resync(settings.resync_seconds)
    memo = kopf.Memo(state=State(settings))
    endpoint = None
    if settings.health_port:
        endpoint = f"http://{settings.bind_address}:{settings.health_port}/healthz"
    await kopf.operator(
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=endpoint,
        memo=memo,
    )
