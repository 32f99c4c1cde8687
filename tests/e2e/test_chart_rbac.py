"""Least privilege, proven: without any one rule of the chart's RBAC, the operator fails at
part of its job.

The chart writes one rule per purpose (watch deployments; apply them; prune them; ...).
For each rule, an operator runs as a ServiceAccount bound to every other rule, in a
namespace of its own, through one scenario that uses everything the operator does; one
more runs with all rules as the control. The control must finish the whole scenario;
every other operator must fail some step of it, and its log must show the API server
refusing a verb of exactly the removed rule. Rules that this cluster cannot show to be
needed are listed in ``KEPT`` with the reason they stay.

All operators run at once, each serving only its own namespace (with every permission
granted cluster-wide, as the ClusterRole does), so none can finish another's work and the
whole proof takes one scenario's time. That is the chart's namespaced mode: its Role plus
its small ClusterRole hold the cluster-wide ClusterRole's permissions with the namespaced
peering kind (KopfPeering for ClusterKopfPeering: the same verbs on the same protocol)
and, for serving a list of namespaces, namespaces list/watch.

The scenario, per namespace:

- before the operators start: a ModelDeployment ``early`` (read by the initial listing),
  carrying the finalizer earlier operators had Kopf put on every object (released);
- once they run, and after a refused watch has been given up (Kopf retries a refused
  request for about a minute, re-listing meanwhile, then stops that watch): ``a`` (model
  cache on: Deployment, Service and PVC are created; its source is private, so the
  operator reads the Secret it names to resolve it), ``b`` (cache off) with three stale
  children owned by it (pruned), ``d`` (0 replicas, so its PVC is unused), ``e`` (two
  replicas of 100Gi: one cannot be scheduled), and ``c``, which asks for a GPU product
  that only a node created at that moment has;
- then ``a``'s Service and ``d``'s PVC are deleted (the operator restores them);
- at last a peer of higher priority appears in the namespace's KopfPeering object (the
  operator pauses).

The rules only the chart's default mode, leader election, adds (the Lease's) are proven
apart, the same way: an operator in that mode without one of them, beside one with them
all, each competing for a Lease of its own namespace with one ModelDeployment to
reconcile. The control takes its Lease and reconciles; without a Lease rule the operator
never leads, acts on nothing, and logs the API server refusing that rule's verb.
"""

from __future__ import annotations

import datetime
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.chart import ChartOperator, helm_template, service_account_kubeconfig
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, wait_until
from kubernetes import client

pytestmark = pytest.mark.timeout(900)  # the module fixture runs the whole scenario once

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
Rule = tuple[str, str, tuple[str, ...], tuple[str, ...]]  # group, resource, verbs, names
RUN_LABEL = "modeldeploy.io/e2e-rbac"
OWNER_LABEL = "modeldeploy.io/model-deployment"
MANAGED = {"app.kubernetes.io/managed-by": "modeldeploy"}
FINALIZER = "modeldeploy.io/finalizer"  # what earlier operators left; this one releases it
HUB_SECRET = "hub-token"  # a's spec.model.credentialsSecret: the operator reads it to resolve
HUB_TOKEN = "hf_rbacTestTokenNeverLogged"

# Rules that stay although removing one does not break this scenario on this cluster.
KEPT: dict[tuple[str, str, tuple[str, ...]], str] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch")): (
        "Kopf watches CRDs to serve a CRD created after the operator started (a first "
        "install, where the pod can start before the API server serves the new CRDs, or the "
        "peering CRDs installed later); without it, only a restart picks them up, and Kopf "
        "logs a warning. The CRDs exist before this test starts."
    ),
    ("modeldeploy.io", "modelpolicies", ("list", "watch")): (
        "the operator judges ModelDeployments by the ModelPolicies it watches; this "
        "scenario creates none, so without the rule it does the same job (tests/e2e/"
        "test_compliance.py runs policies against the operator)"
    ),
    ("coordination.k8s.io", "leases", ("list", "watch")): (
        "the gateway's demand Leases wake a model at zero at once; this scenario runs no "
        "gateway and no model at zero (tests/e2e/test_gateway_scale_from_zero.py does)"
    ),
    ("networking.k8s.io", "networkpolicies", ("create", "patch", "delete")): (
        "with the gateway (planning.modelIngressFrom) the operator puts a NetworkPolicy in "
        "front of each ModelDeployment's pods, and deletes it when the gateway is turned "
        "off; this scenario runs without the gateway (tests/unit/test_operator_core.py "
        "covers the apply on change and the deletion)"
    ),
    ("modeldeploy.io", "modeldeployments/finalizers", ("update",)): (
        "children carry a controller ownerReference with blockOwnerDeletion, which the "
        "OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened "
        "clusters) allows only with update on the owner's finalizers; the local cluster "
        "does not run that plugin"
    ),
}


def rules_of(rules: list[dict[str, Any]]) -> list[Rule]:
    """Each rule as (apiGroup, resource, verbs, resourceNames), one resource per rule."""
    found = []
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                names = tuple(rule.get("resourceNames", ()))
                found.append((group, resource, tuple(rule["verbs"]), names))
    return found


# The chart's peering mode (one replica, Kopf peering, no Lease) for the whole scenario:
# each case serves a namespace of its own, and peering objects are per namespace. The
# rules only its default mode, leader election, has (the Lease's: get and update of one
# Lease by name, create) are proven apart (``lease_run``), each case with a Lease of its own.
MODE = {"replicaCount": 1, "leaderElection": {"enabled": False}, "peering": {"enabled": True}}
LEADER_ELECTION: dict[str, Any] = {}  # the chart's default


def chart_rules(mode: dict[str, Any]) -> tuple[list[Rule], str]:
    """The chart's namespaced-mode rules (Role and ClusterRole) and its settings file."""
    objects = helm_template({"watchNamespaces": ["placeholder"], **mode})
    rules = [r for o in objects if o["kind"] in ("Role", "ClusterRole") for r in o["rules"]]
    settings = next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    return sorted(rules_of(rules)), settings


RULES, _ = chart_rules(MODE)
REMOVABLE = [rule for rule in RULES if rule[:3] not in KEPT]
LEADER_RULES, LEADER_SETTINGS = chart_rules(LEADER_ELECTION)
LEASE_RULES = [rule for rule in LEADER_RULES if rule not in RULES]


def rule_id(rule: Rule | None) -> str:
    """A readable test id: group/resource:verb,verb."""
    if rule is None:
        return "control"
    group, resource, verbs, _ = rule
    return f"{group or 'core'}/{resource}:{','.join(verbs)}"


def model(name: str, **spec: Any) -> dict[str, Any]:
    """The small CPU example with tiny requests (dozens run at once), plus ``spec``."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name, "labels": {RUN_LABEL: "true"}}
    tiny = {"cpu": "10m", "memory": "64Mi"}
    md["spec"]["serving"]["resources"] = {"requests": tiny, "limits": tiny}
    md["spec"].update(spec)
    return md


@dataclass
class Case:
    """One operator of the run: all permissions but ``removed`` (None: the control)."""

    removed: Rule | None
    namespace: str
    operator: ChartOperator | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def refusals(self) -> list[str]:
        """How the API server words a refusal of the removed rule's verbs."""
        assert self.removed is not None
        _, resource, verbs, _ = self.removed
        return [f'cannot {verb} resource "{resource}"' for verb in verbs]

    def refused(self) -> bool:
        """True once the operator's log shows a verb of the removed rule being refused."""
        assert self.operator is not None
        log = self.operator.log()
        return any(r in log or r.replace('"', '\\"') in log for r in self.refusals)

    def alive(self) -> bool:
        """The operator process is still running (Kopf stops it when a watch stays refused)."""
        assert self.operator is not None and self.operator.process is not None
        return self.operator.process.poll() is None


def grant(rbac: client.RbacAuthorizationV1Api, namespace: str, tag: str, rules: list[Rule]) -> None:
    """Bind the ServiceAccount ``operator`` of ``namespace`` to ``rules``, cluster-wide (a
    ClusterRole and its binding named after the namespace, labelled with the run's tag)."""
    role = [
        {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
        | ({"resourceNames": list(names)} if names else {})
        for group, resource, verbs, names in rules
    ]
    labels = {RUN_LABEL: tag}
    rbac.create_cluster_role({"metadata": {"name": namespace, "labels": labels}, "rules": role})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": namespace, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": namespace,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}],
        }
    )


class Run:
    """Every case's namespace, ServiceAccount, ClusterRole, binding and operator."""

    def __init__(self, cluster: ClusterHandle, tmp: Path) -> None:
        self.cluster = cluster
        self.tmp = tmp
        self.tag = secrets.token_hex(3)
        self.began = time.monotonic()
        api = cluster.api_client()
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.rules, self.settings = chart_rules(MODE)
        self.peering = yaml.safe_load(self.settings)["peering"]
        self.product = f"NVIDIA-RBAC-{self.tag.upper()}"
        self.node = f"gpu-rbac-{self.tag}"
        self.cases = [
            Case(removed, f"rbac-{self.tag}-{i}") for i, removed in enumerate([None, *REMOVABLE])
        ]

    # -- set-up and tear-down ------------------------------------------------------------

    def prepare(self, case: Case) -> None:
        """Namespace, peering object, ServiceAccount and its (reduced) permissions."""
        ns = case.namespace
        self.core.create_namespace({"metadata": {"name": ns, "labels": {RUN_LABEL: self.tag}}})
        self.custom.create_namespaced_custom_object(
            "kopf.dev",
            "v1",
            ns,
            "kopfpeerings",
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "KopfPeering",
                "metadata": {"name": self.peering},
            },
        )
        self.core.create_namespaced_service_account(ns, {"metadata": {"name": "operator"}})
        self.core.create_namespaced_secret(
            ns, {"metadata": {"name": HUB_SECRET}, "stringData": {"HF_TOKEN": HUB_TOKEN}}
        )
        grant(self.rbac, ns, self.tag, [rule for rule in self.rules if rule != case.removed])
        early = model("early")
        early["metadata"]["finalizers"] = [FINALIZER]
        self.create(ns, early)
        kubeconfig = service_account_kubeconfig(
            self.cluster, ns, "operator", self.tmp / f"{ns}.kubeconfig"
        )
        case.operator = ChartOperator(kubeconfig, self.settings, "--namespace", ns)

    def cleanup(self) -> None:
        """Stop every operator, then remove everything the run created."""
        for case in self.cases:  # all at once: each takes a few seconds to leave
            if case.operator is not None and case.operator.process is not None:
                case.operator.process.terminate()
        for case in self.cases:
            if case.operator is not None:
                case.operator.stop()
        progress("operators stopped", self.began)
        for case in self.cases:
            try:
                found = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, case.namespace, PLURAL
                )
            except client.ApiException:
                continue
            for md in found["items"]:
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, case.namespace, PLURAL, md["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )  # fmt: skip
        selector = f"{RUN_LABEL}={self.tag}"
        for ns in self.core.list_namespace(label_selector=selector).items:
            self.core.delete_namespace(ns.metadata.name)
        self.rbac.delete_collection_cluster_role_binding(label_selector=selector)
        self.rbac.delete_collection_cluster_role(label_selector=selector)
        try:
            self.core.delete_node(self.node)
        except client.ApiException as error:
            if error.status != 404:
                raise

    # -- the scenario ------------------------------------------------------------------

    def create(self, namespace: str, md: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, md
        )
        return created

    def create_models(self, namespace: str) -> None:
        """a (private source), b with stale children, c (needs the new node), d (scaled to
        zero), e."""
        a = model("a")
        a["spec"]["model"]["credentialsSecret"] = HUB_SECRET
        self.create(namespace, a)
        b = self.create(namespace, model("b", cache={"enabled": False}))
        self.create(namespace, model("c", hardware={"gpu": {"products": [self.product]}}))
        self.create(namespace, model("d", replicas=0))
        big = {"cpu": "10m", "memory": "100Gi"}
        e = model("e", replicas=2)
        e["spec"]["serving"]["resources"] = {"requests": big, "limits": big}
        self.create(namespace, e)
        owner = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "name": "b",
            "uid": b["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
        }  # fmt: skip

        def meta(name: str) -> dict[str, Any]:
            labels = {**MANAGED, OWNER_LABEL: "b"}
            return {"name": name, "labels": labels, "ownerReferences": [owner]}

        template = {
            "metadata": {"labels": {"app": "stale"}},
            "spec": {"containers": [{"name": "c", "image": "stale"}]},
        }
        self.apps.create_namespaced_deployment(
            namespace,
            {
                "metadata": meta("b-stale"),
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "stale"}},
                    "template": template,
                },
            },
        )
        self.core.create_namespaced_service(
            namespace, {"metadata": meta("b-stale"), "spec": {"ports": [{"port": 80}]}}
        )
        self.core.create_namespaced_persistent_volume_claim(
            namespace,
            {
                "metadata": meta("b-model-cache"),
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            },
        )

    def create_node(self) -> None:
        """A GPU node whose product only ``c`` asks for (as test_operator's node-pool test)."""
        labels = {
            "type": "kwok", "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": self.node, "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.product, "nvidia.com/gpu.memory": "46068",
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.compute.major": "8", "nvidia.com/gpu.compute.minor": "9",
        }  # fmt: skip
        resources = {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"}
        self.core.create_node(
            {
                "metadata": {
                    "name": self.node,
                    "labels": labels,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                },
                "spec": {
                    "taints": [
                        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
                    ]
                },
                "status": {"allocatable": resources, "capacity": resources},
            }
        )

    def inject_peer(self, namespace: str) -> None:
        """Another operator of higher priority, alive: a correct operator pauses for it."""
        now = datetime.datetime.now(datetime.UTC).isoformat()
        peer = {"priority": 100, "lifetime": 600, "lastseen": now}
        self.custom.patch_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", self.peering,
            {"status": {f"rbac-test-peer-{self.tag}": peer}},
        )  # fmt: skip

    def _children(self) -> list[tuple[str, str, Any, Any]]:
        return [
            ("svc", "a", self.core.read_namespaced_service, self.core.delete_namespaced_service),
            ("pvc", "d-model-cache", self.core.read_namespaced_persistent_volume_claim,
             self.core.delete_namespaced_persistent_volume_claim),
        ]  # fmt: skip

    def delete_children(self, namespace: str) -> dict[tuple[str, str], str]:
        """Delete a's Service and d's (unused) PVC; return their uids."""
        deleted = {}
        for kind, name, read, delete in self._children():
            try:
                uid = read(name, namespace).metadata.uid
                delete(name, namespace)
            except client.ApiException:
                continue  # this case's operator never created it
            deleted[(kind, namespace)] = uid
        return deleted

    def restored(self, namespace: str, before: dict[tuple[str, str], str]) -> list[str]:
        """a's Service and d's PVC, deleted by the test, are back (with a new uid)."""
        failures = []
        for kind, name, read, _ in self._children():
            if (kind, namespace) not in before:
                continue  # never created: another check reports that
            try:
                obj = read(name, namespace)
            except client.ApiException:
                failures.append(f"{kind}/{name}: not restored")
                continue
            if obj.metadata.uid == before[(kind, namespace)] or obj.metadata.deletion_timestamp:
                failures.append(f"{kind}/{name}: not restored")
        return failures

    # -- what a case has achieved --------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything the checks read, with a handful of cluster-wide list calls."""
        selector = f"{RUN_LABEL}=true"
        mds = self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, label_selector=selector
        )
        owned = f"{OWNER_LABEL}"
        return {
            "mds": {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in mds["items"]},
            "services": self.core.list_service_for_all_namespaces(label_selector=owned).items,
            "claims": self.core.list_persistent_volume_claim_for_all_namespaces(
                label_selector=owned
            ).items,
            "deployments": self.apps.list_deployment_for_all_namespaces(label_selector=owned).items,
            "events": self.core.list_event_for_all_namespaces(
                field_selector="reason=Planned"
            ).items,
            "peerings": {
                p["metadata"]["namespace"]: p
                for p in self.custom.list_cluster_custom_object("kopf.dev", "v1", "kopfpeerings")[
                    "items"
                ]
            },
        }


def condition(md: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """A condition of a ModelDeployment ({} when absent)."""
    conditions = ((md or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def unhealthy(name: str, md: dict[str, Any] | None) -> list[str]:
    """Why ``md`` is not Ready for its generation, not Degraded, or still holds the finalizer
    an earlier operator left."""
    if md is None:
        return [f"{name}: missing"]
    ready, degraded = condition(md, "Ready"), condition(md, "Degraded")
    problems = []
    if ready.get("status") != "True":
        problems.append(f"{name}: Ready={ready.get('status')} {ready.get('reason')}")
    if degraded.get("status") == "True":
        problems.append(f"{name}: Degraded {degraded.get('reason')}: {degraded.get('message')}")
    if (md.get("status") or {}).get("observedGeneration") != md["metadata"]["generation"]:
        problems.append(f"{name}: generation {md['metadata']['generation']} not observed")
    if FINALIZER in (md["metadata"].get("finalizers") or []):
        problems.append(f"{name}: the earlier operator's finalizer is not released")
    return problems


def early_failures(snap: dict[str, Any], ns: str) -> list[str]:
    """What the operator must have done with what existed when it started."""
    return [f"in time: {p}" for p in unhealthy("early", snap["mds"].get((ns, "early")))]


def late_failures(snap: dict[str, Any], ns: str) -> list[str]:
    """What the operator must have done with what appeared while it ran."""
    mds = snap["mds"]
    failures = [p for name in ("a", "b", "d") for p in unhealthy(name, mds.get((ns, name)))]
    if condition(mds.get((ns, "c")), "Scheduled").get("status") != "True":
        failures.append("c: not planned onto the node that appeared")
    if condition(mds.get((ns, "e")), "Degraded").get("reason") != "PodUnschedulable":
        failures.append("e: its unschedulable pod is not reported")
    kinds = (("svc", "services"), ("pvc", "claims"), ("deploy", "deployments"))
    live = {
        (kind, o.metadata.name)
        for kind, key in kinds
        for o in snap[key]
        if o.metadata.namespace == ns and o.metadata.deletion_timestamp is None
    }
    stale = {("deploy", "b-stale"), ("svc", "b-stale"), ("pvc", "b-model-cache")} & live
    if stale:
        failures.append(f"b: stale children not pruned: {sorted(stale)}")
    if not any(
        e.involved_object.name == "a" and e.metadata.namespace == ns for e in snap["events"]
    ):
        failures.append("a: no Planned event")
    peering = snap["peerings"].get(ns, {})
    if not [p for p in (peering.get("status") or {}) if not p.startswith("rbac-test-peer")]:
        failures.append("the operator is not announced in the peering object")
    return failures


def progress(message: str, since: float) -> None:
    """A line per phase on stderr (pytest -s shows it), with the seconds it took."""
    print(f"[rbac] {time.monotonic() - since:6.1f}s {message}", file=sys.stderr, flush=True)


def observe_for(seconds: float) -> None:
    """Give slower operators a fair chance before a negative result is read.

    Not synchronisation: the control's progress is waited for with ``wait_until``; this
    is the grace period after which the others are judged (all run at once on 2 cores).
    """
    time.sleep(seconds)


def gave_up(case: Case) -> bool:
    """True once Kopf has stopped retrying the refused watch (it then stops the operator)."""
    assert case.operator is not None
    log = case.operator.log()
    # A watch of a served resource stops the operator; Kopf's own observation of namespaces
    # falls back to the listed names with a warning.
    return not case.alive() or "has failed" in log or "Not enough permissions to watch" in log


@pytest.fixture(scope="module")
def rbac_run(crd_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Run every case at once through the scenario; each case's ``failures`` say what broke."""
    peering_crd = crd_cluster.kubectl("get", "crd", "kopfpeerings.kopf.dev", check=False)
    if peering_crd.returncode != 0:
        crd_cluster.kubectl(
            "apply", "--server-side", "-f", str(REPO / "crds" / "kopf-peering.yaml")
        )
        crd_cluster.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev")
    run = Run(crd_cluster, tmp_path_factory.mktemp("rbac"))
    control, namespaces = run.cases[0], [case.namespace for case in run.cases]
    began = time.monotonic()
    try:
        for case in run.cases:
            run.prepare(case)
        for case in run.cases:
            assert case.operator is not None
            case.operator.start(wait=False)
        progress(f"{len(run.cases)} operators started", began)

        # 1. What existed when the operators started (in time: see observe_for).
        wait_for_control(
            lambda: early_failures(run.snapshot(), control.namespace), timeout=180,
            what="the control operator to reconcile what existed at its start",
        )  # fmt: skip
        progress("control: the early model is Ready", began)
        observe_for(20)
        snap = run.snapshot()
        for case in run.cases:
            case.failures += early_failures(snap, case.namespace)

        # 2. What appears while the operators run.
        for ns in namespaces:
            run.create_models(ns)
        run.create_node()
        wait_for_control(
            lambda: late_failures(run.snapshot(), control.namespace), timeout=180,
            what="the control operator to finish the scenario",
        )  # fmt: skip
        progress("control: the late models are done", began)
        before: dict[tuple[str, str], str] = {}
        for ns in namespaces:
            before |= run.delete_children(ns)
        wait_for_control(
            lambda: run.restored(control.namespace, before), timeout=60,
            what="the control operator to restore a deleted Service and PVC",
        )  # fmt: skip
        progress("control: the deleted Service and PVC are back", began)

        # 3. A peer of higher priority appears: the operator pauses for it.
        for ns in namespaces:
            run.inject_peer(ns)
        wait_until(lambda: paused(control), timeout=60, what="the control to pause for a peer")
        progress("control: paused for the peer", began)

        # 4. Kopf retries a refused list or watch for about a minute (re-listing meanwhile),
        # then stops the operator: judge once every such operator has given up.
        streams = [c for c in run.cases if c.removed and "watch" in c.removed[2]]
        try:
            wait_until(lambda: all(gave_up(c) for c in streams), timeout=180, what="give-ups")
        except TimeoutError:
            pending = [rule_id(c.removed) for c in streams if not gave_up(c)]
            raise AssertionError(f"Kopf still retries the refused watches of {pending}") from None
        progress("every operator with a refused watch gave up", began)
        observe_for(10)
        snap = run.snapshot()
        for case in run.cases:
            case.failures += late_failures(snap, case.namespace)
            case.failures += run.restored(case.namespace, before)
            if not paused(case):
                case.failures.append("did not pause for a peer of higher priority")
            if not case.alive():
                case.failures.append("the operator stopped")
            progress(f"without {rule_id(case.removed)}: {'; '.join(case.failures) or 'OK'}", began)
        yield run
    finally:
        run.cleanup()
        progress("cleaned up", began)


def wait_for_control(failures: Callable[[], list[str]], what: str, timeout: float) -> None:
    """Wait until the control has no failures left; on timeout, say which remain."""
    last: list[str] = []

    def done() -> bool:
        last[:] = failures()
        return not last

    try:
        wait_until(done, timeout=timeout, what=what)
    except TimeoutError as error:
        raise AssertionError(f"{error}: {last}") from None


def paused(case: Case) -> bool:
    """True once the operator paused for a peer of higher priority."""
    assert case.operator is not None
    return "Pausing operations in favour of" in case.operator.log()


def test_the_control_does_the_whole_job_with_every_rule(rbac_run: Run) -> None:
    control = rbac_run.cases[0]
    assert control.removed is None and control.operator is not None
    assert control.failures == [], control.operator.log()[-3000:]
    refused = re.findall(r'cannot \w+ resource \\?"[\w/.]+\\?"', control.operator.log())
    assert refused == [], refused
    assert HUB_TOKEN not in control.operator.log()


@pytest.mark.parametrize("rule", REMOVABLE, ids=rule_id)
def test_without_any_one_rule_the_operator_fails(rbac_run: Run, rule: Rule) -> None:
    case = next(c for c in rbac_run.cases if c.removed == rule)
    assert case.operator is not None
    assert case.failures, f"the operator did its whole job without {rule_id(rule)}"
    # ... because the API server refused a verb of exactly that rule.
    assert case.refused(), f"{case.failures}; none of {case.refusals} in its log"


@pytest.mark.parametrize("kept", sorted(KEPT), ids=lambda k: f"{k[0] or 'core'}/{k[1]}")
def test_rules_kept_for_a_documented_reason_are_granted_once(
    kept: tuple[str, str, tuple[str, ...]],
) -> None:
    # Each stays for the reason in KEPT (docs/helm-argocd.md says the same).
    assert [rule for rule in RULES if rule[:3] == kept] != [], (kept, KEPT[kept])
    assert len([rule for rule in RULES if rule[:2] == kept[:2]]) == 1, kept


# -- the Lease's rules (leader election, the chart's default) -----------------------------

LEASE_GRACE_S = 10.0  # five of the chart's retry periods: a candidate reads the Lease in each


@dataclass
class LeaseCase:
    """An operator in leader-election mode with every rule but ``removed`` (None: all)."""

    removed: Rule | None
    namespace: str
    operator: ChartOperator


def deployed(apps: client.AppsV1Api, namespace: str) -> bool:
    """True once the ModelDeployment ``a`` of ``namespace`` has its Deployment."""
    return any(d.metadata.name == "a" for d in apps.list_namespaced_deployment(namespace).items)


@pytest.fixture(scope="module")
def lease_run(
    crd_cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[LeaseCase]]:
    """An operator without each Lease rule and one with every rule (the control), at once,
    each serving a namespace of its own and competing for a Lease there (no other
    candidate), each with one ModelDeployment; judged once the control has led and
    reconciled its own, and a grace period later."""
    api = crd_cluster.api_client()
    core, apps, rbac = (
        client.CoreV1Api(api),
        client.AppsV1Api(api),
        client.RbacAuthorizationV1Api(api),
    )
    custom = client.CustomObjectsApi(api)
    tag, tmp, began = secrets.token_hex(3), tmp_path_factory.mktemp("lease"), time.monotonic()
    cases: list[LeaseCase] = []
    try:
        for i, removed in enumerate([None, *LEASE_RULES]):
            ns = f"rbac-lease-{tag}-{i}"
            core.create_namespace({"metadata": {"name": ns, "labels": {RUN_LABEL: tag}}})
            core.create_namespaced_service_account(ns, {"metadata": {"name": "operator"}})
            grant(rbac, ns, tag, [rule for rule in LEADER_RULES if rule != removed])
            kubeconfig = service_account_kubeconfig(
                crd_cluster, ns, "operator", tmp / f"{ns}.kubeconfig"
            )
            flags = ("--namespace", ns, "--lease-namespace", ns)
            cases.append(LeaseCase(removed, ns, ChartOperator(kubeconfig, LEADER_SETTINGS, *flags)))
        for case in cases:
            case.operator.start(wait=False)
            custom.create_namespaced_custom_object(
                GROUP, VERSION, case.namespace, PLURAL, model("a")
            )
        wait_until(
            lambda: deployed(apps, cases[0].namespace), timeout=180,
            what="the control to take the Lease and reconcile",
        )  # fmt: skip
        progress("lease: the control leads and has reconciled", began)
        observe_for(LEASE_GRACE_S)
        yield cases
    finally:
        for case in cases:
            case.operator.stop()
        for ns in core.list_namespace(label_selector=f"{RUN_LABEL}={tag}").items:
            core.delete_namespace(ns.metadata.name)
        rbac.delete_collection_cluster_role_binding(label_selector=f"{RUN_LABEL}={tag}")
        rbac.delete_collection_cluster_role(label_selector=f"{RUN_LABEL}={tag}")


def test_the_lease_rules_are_what_leader_election_adds_to_the_proven_rules() -> None:
    assert {rule[:2] for rule in LEASE_RULES} == {("coordination.k8s.io", "leases")}
    assert {verb for rule in LEASE_RULES for verb in rule[2]} == {"get", "create", "update"}


def test_with_every_rule_the_operator_takes_the_lease_and_acts(
    lease_run: list[LeaseCase], crd_cluster: ClusterHandle
) -> None:
    control = lease_run[0]
    assert control.removed is None
    assert "took the Lease" in control.operator.log(), control.operator.log()[-3000:]
    assert control.operator.health().get("leader") is True


@pytest.mark.parametrize("rule", LEASE_RULES, ids=rule_id)
def test_without_a_lease_rule_the_operator_cannot_lead_and_says_so(
    lease_run: list[LeaseCase], crd_cluster: ClusterHandle, rule: Rule
) -> None:
    case = next(c for c in lease_run if c.removed == rule)
    log = case.operator.log()
    assert "took the Lease" not in log, log[-3000:]
    assert case.operator.health().get("leader") is False
    # It says why: the Lease call, refused a verb of exactly that rule.
    refusals = [f'cannot {verb} resource "leases"' for verb in rule[2]]
    assert "cannot read or write the Lease" in log, log[-3000:]
    assert any(r in log or r.replace('"', '\\"') in log for r in refusals), log[-3000:]
    # A candidate that cannot lead acts on nothing.
    assert not deployed(client.AppsV1Api(crd_cluster.api_client()), case.namespace)
