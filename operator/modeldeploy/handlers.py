"""Kopf wiring only: watches, in-memory indexes, start-up and clean-up, and triggers that
all end in ``passes.reconcile_key``.

Every trigger — a ModelDeployment created, changed or resumed, a Node change, a change of a
child Deployment, Service, PVC or pod — ends in the same level-triggered ``reconcile`` for
the ModelDeployment concerned (``passes``: serialised and coalesced per object). The
cluster state a pass needs comes from Kopf indexes (kept current by watches), so a pass
reads nothing from the API server, and a pass with nothing to change writes nothing. What
the indexes keep of each object is ``observed``; the connections are ``clients``.

No handler needs a finalizer, so a ModelDeployment can be deleted while no operator runs
(its children are owned, and garbage-collected): watches (``on.event``) and indexes add
none, and the drift check and the native autoscaler are tasks of the operator, started at
start-up and stopped at clean-up (``passes``) — not Kopf timers, for which Kopf puts a
finalizer on every object it runs for. A finalizer an earlier operator left is released
on first sight.

``run_operator`` runs beside Kopf what must not depend on it: the health endpoints
(``health``) and, with several replicas, leader election (``election``): every replica
runs these handlers, and only the holder of the Lease runs passes (``passes.acting``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from kubernetes import client
from prometheus_client import start_http_server

from modeldeploy.api import API_GROUP, API_VERSION, PLURAL
from modeldeploy.apply import Writer
from modeldeploy.autoscaler import Autoscaler
from modeldeploy.clients import (
    PASS_THREADS,
    api_client,
    identity,
    own_namespace,
    peering_reader,
    probe_client,
    secret_reader,
)
from modeldeploy.demand import DEMAND_LABEL
from modeldeploy.election import KubernetesLeases, Leadership
from modeldeploy.health import KOPF_BACKOFFS, Health, KopfMonitor, probe_forever, serve
from modeldeploy.metrics import set_phase_counts
from modeldeploy.observed import node_facts, owner_key, pod_facts, policy_facts, snapshot
from modeldeploy.observed import pod_usage as bound_pod_usage
from modeldeploy.passes import (
    ALL_NODES,
    State,
    autoscale_forever,
    elected_round,
    indexes_of,
    key_of,
    reconcile_key,
    resync_forever,
    wake,
)
from modeldeploy.render import LABEL_MANAGED_BY, LABEL_MODEL_DEPLOYMENT, MANAGED_BY
from modeldeploy.resolver import ArtifactResolver
from modeldeploy.settings import OperatorSettings

MD = (API_GROUP, API_VERSION, PLURAL)
POLICIES = (API_GROUP, API_VERSION, "modelpolicies")
CHILD_LABELS = {LABEL_MANAGED_BY: MANAGED_BY}
# Kopf's finalizer, should a handler ever need one (none does): not one of the legacy
# names, which this operator releases itself (Kopf would race it for its own name).
KOPF_FINALIZER = f"{API_GROUP}/kopf-finalizer"
log = logging.getLogger("modeldeploy.operator")

# -- start-up --------------------------------------------------------------------------


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base for an operator without change handlers: none is built or kept.

    Only ``on.create``/``update``/``resume``/``delete``/``field`` handlers read the diff
    base (what changed since the last handled version), and this operator has none (see
    ``test_no_handler_needs_a_finalizer``). Kopf builds the base of every event it
    receives before it asks whether a handler wants it, a deep copy of the whole object,
    which was the largest part of handling a pod's or a Deployment's event.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


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
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.enabled = False  # our own Events, for decisions and failures only
    settings.watching.server_timeout = 300
    # A failed list or watch is retried at most 5 s apart (health.py), for about a minute
    # before Kopf gives up; a connection that cannot be made fails in 10 s.
    settings.networking.error_backoffs = KOPF_BACKOFFS
    settings.networking.connect_timeout = 10
    webhook = state.settings.admission
    if webhook.enabled:
        # The chart registers the ValidatingWebhookConfiguration (and its CA bundle); this
        # process only serves it, on every replica, leader or not.
        settings.admission.server = kopf.WebhookServer(
            addr=state.settings.bind_address,
            port=webhook.port,
            certfile=str(webhook.cert_file),
            pkeyfile=str(webhook.key_file),
        )
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(PASS_THREADS, thread_name_prefix="pass")
    )
    api = api_client(state.identity)
    state.writer = Writer(api)
    state.resolver = ArtifactResolver(
        secret_reader(client.CoreV1Api(api)), dict(state.settings.planning.source_settings)
    )
    state.read_peerings = peering_reader(client.CustomObjectsApi(api), state.settings)
    if state.settings.metrics_port:
        start_http_server(state.settings.metrics_port, addr=state.settings.bind_address)
    # The indexes handed to start-up handlers are the live ones (empty until listed).
    state.resync = asyncio.create_task(resync_forever(state, indexes_of(kwargs)), name="resync")
    settings_ = state.settings
    state.autoscaler = Autoscaler(
        settings_.planning, settings_.scrape_timeout_seconds, settings_.max_scale_up_step
    )
    state.autoscale = asyncio.create_task(
        autoscale_forever(state, indexes_of(kwargs)), name="autoscale"
    )
    log.info(
        "modeldeploy operator starting: namespaces=%s resync=%ss coordination=%s",
        state.settings.namespaces or "all",
        state.settings.resync_seconds,
        _coordination(state.settings),
    )
    if state.leader is not None:
        # On taking the Lease: a pass for every ModelDeployment (a standby ran none).
        live = indexes_of(kwargs)
        state.leader.attach(
            lambda: elected_round(state, live),
            busy=lambda: any(lock.locked() for lock in list(state.locks.values())),
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


# -- indexes ---------------------------------------------------------------------------
# Coroutines, though they await nothing: Kopf runs a plain function in its thread pool,
# one hand-over per watch event and index, and these are pure projections that need none.


@kopf.index(*MD)
async def model_deployments(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    """Every ModelDeployment, by (namespace, name)."""
    return {(namespace, name): snapshot(body)}


@kopf.index("nodes")
async def nodes(body: kopf.Body, **_: Any) -> dict[str, Any]:
    """The node pool as planning sees it."""
    return {ALL_NODES: node_facts(body)}


@kopf.index("apps", "v1", "deployments", labels=CHILD_LABELS, id="child_deployments")
@kopf.index("v1", "services", labels=CHILD_LABELS, id="child_services")
@kopf.index("v1", "persistentvolumeclaims", labels=CHILD_LABELS, id="child_claims")
async def child_objects(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> Any:
    """Deployments, Services and cache PVCs the operator manages, by owning ModelDeployment
    (one index per kind, named by the handler id)."""
    key = owner_key(namespace, labels)
    return {key: snapshot(body)} if key else None


@kopf.index(*POLICIES)
async def model_policies(body: kopf.Body, name: str, **_: Any) -> Any:
    """Every valid ModelPolicy, by name (an invalid one is logged and applies nothing)."""
    policy = policy_facts(body)
    if policy is None:
        log.warning("ignoring invalid ModelPolicy %s", name)
        return None
    return {name: policy}


@kopf.index("v1", "namespaces")
async def namespace_labels(body: kopf.Body, name: str, **_: Any) -> Any:
    """The labels of every namespace, by name (policies select namespaces by label)."""
    return {name: dict(body.get("metadata", {}).get("labels") or {})}


@kopf.index("v1", "pods")
async def pod_usage(body: kopf.Body, **_: Any) -> Any:
    """Every bound, unfinished pod's node and requests (free capacity for placement)."""
    usage = bound_pod_usage(body)
    return {ALL_NODES: usage} if usage is not None else None


@kopf.index("v1", "pods", labels=CHILD_LABELS)
async def child_pods(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
    """Pods of managed Deployments, by owning ModelDeployment (status facts only)."""
    key = owner_key(namespace, labels)
    return {key: pod_facts(body)} if key else None


# -- triggers --------------------------------------------------------------------------


@kopf.index("coordination.k8s.io", "v1", "leases", labels={DEMAND_LABEL: "true"})
async def demand_leases(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> Any:
    """The gateway's demand Leases (demand.py), by the ModelDeployment they wake."""
    name = labels.get(LABEL_MODEL_DEPLOYMENT)
    if not name:
        return None
    annotations = dict(body.get("metadata", {}).get("annotations") or {})
    return {(namespace, name): {"metadata": {"annotations": annotations}, "spec": dict(body.spec)}}


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels={DEMAND_LABEL: "true"})
async def demand_signalled(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
) -> None:
    """The gateway holds requests for a model with no pod: decide its count at once."""
    name = labels.get(LABEL_MODEL_DEPLOYMENT)
    if namespace and name:
        await wake((namespace, name), memo.state, indexes_of(kwargs))


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
    key = key_of(meta)
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
        with state.reservations.planning() as book:
            book.forget(key)
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


@kopf.on.event(*POLICIES)
async def policy_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    """A ModelPolicy appeared, changed or went away: judge every ModelDeployment again."""
    keys = list(kwargs["model_deployments"].keys())
    await asyncio.gather(*(reconcile_key(key, memo.state, kwargs) for key in keys))


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
    """Run the operator until it is stopped (SIGTERM/SIGINT).

    Health (``health``) and leader election (``election``) run beside Kopf, not inside it:
    every replica serves health, and the Lease is released only once Kopf, and every pass,
    has stopped.
    """
    if settings.admission.enabled:
        # Registers the validating webhook's handler with Kopf (see admission.py).
        from modeldeploy import admission  # noqa: F401
    state = State(settings, identity=identity())
    memo = kopf.Memo(state=state)
    probes = probe_client(state.identity)
    leader = state.leader = _leadership(settings, state.identity, probes)
    health = Health(
        identity=state.identity, leader=lambda: None if leader is None else leader.leading
    )
    monitor = KopfMonitor(health)
    logging.getLogger("kopf").addHandler(monitor)
    _quiet_handler_runs()
    runner = None
    if settings.health_port:
        runner = await serve(health, settings.bind_address, settings.health_port)
    tasks = [asyncio.create_task(probe_forever(health, probes), name="API server probe")]
    if leader is not None:
        tasks.append(asyncio.create_task(leader.run(), name="leader election"))
    try:
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            standalone=settings.peering is None,
            peering_name=settings.peering,
            identity=cast(Any, state.identity),  # kopf's Identity is a NewType of str
            memo=memo,
        )
    except BaseException as error:
        health.kopf_stopped = health.kopf_stopped or f"{type(error).__name__}: {error}"
        raise
    finally:
        health.kopf_stopped = health.kopf_stopped or "the operator is stopping"
        if leader is not None:
            if await _passes_ended(RELEASE_GRACE_S):
                await leader.release(grace=RELEASE_GRACE_S)
            else:
                log.warning("passes still run: the Lease is left to expire")
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runner is not None:
            await runner.cleanup()
        logging.getLogger("kopf").removeHandler(monitor)


RELEASE_GRACE_S = 10.0  # how long a stopping leader waits for passes before it releases


def _quiet_handler_runs() -> None:
    """Leave out Kopf's line per handler run ("Handler 'child_changed' succeeded.", at INFO:
    one per watch event of every child, and the log's largest cost), unless debugging.
    What a pass did is logged by the pass; Kopf's warnings and errors still show."""
    objects = logging.getLogger("kopf.objects")
    if objects.getEffectiveLevel() == logging.INFO:
        objects.setLevel(logging.WARNING)


def _leadership(settings: OperatorSettings, who: str, api: client.ApiClient) -> Leadership | None:
    """The Lease this process competes for (None: leader election off)."""
    election = settings.leader_election
    if not election.enabled:
        return None
    namespace = election.namespace or own_namespace()
    if not namespace:
        raise RuntimeError(
            "leaderElection.namespace is needed outside a cluster (no POD_NAMESPACE, no "
            "service account namespace): --lease-namespace NAMESPACE"
        )
    timeout = max(1.0, min(2 * election.retry_period_seconds, election.renew_deadline_seconds / 2))
    leases = KubernetesLeases(api, namespace, election.lease_name, timeout)
    return Leadership(election, who, namespace, leases)


async def _passes_ended(grace: float) -> bool:
    """Wait up to ``grace`` seconds for the passes' threads (Kopf has stopped: no new one
    starts); False when one still runs."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(asyncio.shield(loop.shutdown_default_executor()), grace)
    except TimeoutError:
        return False
    return True


def _coordination(settings: OperatorSettings) -> str:
    """How this process coordinates with other replicas, for the start-up line."""
    if settings.leader_election.enabled:
        return f"lease {settings.leader_election.lease_name}"
    return f"peering {settings.peering}" if settings.peering else "standalone"
