"""Two operator replicas and API server outages, on the real control plane.

- Two operator processes with leader election (the Lease in the test's namespace, the
  default settings: 15 s duration, 10 s renew deadline, 2 s retry period) and distinct
  identities (``POD_ID``, which also goes into their user agent). While both run, only the
  holder of the Lease writes: the API server's audit log, which records every write with
  its user agent, shows one identity. The leader is SIGKILLed during a batch of ten
  creates; the standby takes the Lease within the documented bound
  (``LeaderElectionSettings.failover_bound_seconds``: duration + 2 x retry period), and
  every ModelDeployment converges, with no duplicate ReplicaSet and no orphan.
- A churn soak, bounded to five minutes: 50 ModelDeployments created, changed and deleted
  at random while the leader is SIGKILLed every 20 s; every object ends with its last spec,
  nothing orphaned, no extra ReplicaSet.
- A standby (not holding the Lease) answers the admission webhook from its own indexes.
- A watch refused by RBAC makes ``/healthz`` answer 503 naming it; once the permission is
  granted, Kopf's next retry succeeds and ``/healthz`` answers 200, without a restart.
- A control plane of its own (the test stops its API server; the session's cluster is
  shared by every other test): ModelDeployments are created and changed, the API server is
  stopped for 30 s right after, and more are created and changed the moment it is back.
  The operator, never restarted, converges every one; its ``/healthz`` answered 503 while
  the API server was gone, and 200 after.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import random
import ssl
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.chart import service_account_kubeconfig
from e2e.cluster.local import REPO, LocalCluster
from e2e.cluster.tools import control_plane_bin_dir
from e2e.harness import (
    ClusterHandle,
    ModelDeploymentApi,
    OperatorProcess,
    existing_cluster,
    free_port,
    install_crds,
    wait_until,
)
from e2e.webhook_tls import serving_certificates
from kubernetes import client

from modeldeploy.settings import LeaderElectionSettings

LEASE = "modeldeploy"
DEFAULTS = LeaderElectionSettings()
BOUND_S = DEFAULTS.failover_bound_seconds  # 19 s with the defaults
# API latency of the reads and the write that take the Lease on this (shared, 2-core) host.
SLACK_S = 5.0
OUTAGE_S = 30.0
OWNER_LABEL = "modeldeploy.io/model-deployment"


# One node, with room for every replica these tests create: placement weighs free capacity,
# and a leader that takes over must find the same plan as the one it replaces.
NODE = "cpu-avx512-a"  # 32 CPUs, 128 Gi (e2e/cluster/nodes.yaml)
SMALL = {"cpu": "1", "memory": "2Gi"}


def gemma(name: str) -> dict[str, Any]:
    """examples/gemma-270m-cpu.yaml under another name, small and on ``NODE``."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    md["spec"]["hardware"]["nodeSelector"] = {"kubernetes.io/hostname": NODE}
    md["spec"]["serving"]["resources"] = {"requests": SMALL, "limits": SMALL}
    return md


def holder(cluster: ClusterHandle, namespace: str) -> str:
    """The identity the Lease names ("" when none, or no Lease yet)."""
    leases = client.CoordinationV1Api(cluster.api_client())
    try:
        lease = leases.read_namespaced_lease(LEASE, namespace)
    except client.ApiException as error:
        if error.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def identity_of(entry: dict[str, Any]) -> str:
    """The operator identity in an audit entry's user agent ("modeldeploy/V (ID)")."""
    agent = str(entry.get("userAgent", ""))
    return agent.partition(" (")[2].removesuffix(")") if agent.startswith("modeldeploy/") else ""


def audit_writes(cluster: ClusterHandle, since_line: int, namespace: str) -> list[dict[str, Any]]:
    """Write calls of modeldeploy processes in ``namespace`` after an audit log mark."""
    assert cluster.audit_log is not None
    lines = cluster.audit_log.read_text().splitlines()[since_line:]
    return [
        entry
        for entry in map(json.loads, lines)
        if entry.get("objectRef", {}).get("namespace") == namespace and identity_of(entry)
    ]


def received(entry: dict[str, Any]) -> datetime.datetime:
    """When the API server received an audited request."""
    return datetime.datetime.fromisoformat(entry["requestReceivedTimestamp"])


def converged(api: ModelDeploymentApi, name: str, context_length: int | None = None) -> bool:
    """The ModelDeployment's last spec is observed, it has a phase, and its Deployment
    exists (with ``context_length`` in the engine's flags, when given)."""
    md = api.md(name)
    status = md.get("status") or {}
    if status.get("observedGeneration") != md["metadata"]["generation"] or not status.get("phase"):
        return False
    try:
        deployment = api.apps.read_namespaced_deployment(name, api.namespace)
    except client.ApiException as error:
        if error.status == 404:
            return False
        raise
    if context_length is None:
        return True
    args = deployment.spec.template.spec.containers[0].args
    flags = dict(zip(args[::2], args[1::2], strict=False))
    return int(flags["--ctx-size"]) == context_length * int(flags["--parallel"])


def assert_no_duplicates_or_orphans(
    api: ModelDeploymentApi, names: list[str], changed: Mapping[str, int] | None = None
) -> None:
    """Each ModelDeployment has exactly its three children, the Deployment controller has
    acted on its last template, and no more ReplicaSets than its spec had versions
    (``changed``: the changes made to it); everything in the namespace is owned by a
    ModelDeployment that exists."""
    namespace = api.namespace
    changed = changed or {}

    def replica_sets(name: str) -> list[tuple[str, int]]:
        found = api.apps.list_namespaced_replica_set(
            namespace, label_selector=f"{OWNER_LABEL}={name}"
        )
        return [(rs.metadata.name, rs.spec.replicas or 0) for rs in found.items]

    def not_rolled_out() -> list[str]:
        lagging = []
        for deployment in api.apps.list_namespaced_deployment(namespace).items:
            if deployment.metadata.name not in names:
                continue
            status, wanted = deployment.status, deployment.spec.replicas or 0
            observed, updated = status.observed_generation or 0, status.updated_replicas or 0
            if observed < deployment.metadata.generation or updated != wanted:
                lagging.append(
                    f"{deployment.metadata.name} (generation {deployment.metadata.generation},"
                    f" observed {observed}, updated {updated}/{wanted})"
                )
        return lagging

    # The Deployment controller creates the ReplicaSets (after an outage, once its watches
    # resume and its work queue's per-object backoff lets it retry): wait until it has
    # acted on each Deployment's last template; the counts below are what this test
    # asserts of the operator.
    try:
        wait_until(lambda: not not_rolled_out(), 120, "each Deployment's last template")
    except TimeoutError as error:
        raise AssertionError(f"{error}; not yet rolled out: {not_rolled_out()}") from None
    for name in names:
        selector = f"{OWNER_LABEL}={name}"
        children = sorted(
            [
                *(f"Deployment/{d.metadata.name}" for d in api.apps.list_namespaced_deployment(
                    namespace, label_selector=selector).items),
                *(f"Service/{s.metadata.name}" for s in api.core.list_namespaced_service(
                    namespace, label_selector=selector).items),
                *(f"PersistentVolumeClaim/{c.metadata.name}" for c in
                  api.core.list_namespaced_persistent_volume_claim(
                      namespace, label_selector=selector).items),
            ]
        )  # fmt: skip
        assert children == [
            f"Deployment/{name}", f"PersistentVolumeClaim/{name}-model-cache", f"Service/{name}",
        ], children  # fmt: skip
        found = replica_sets(name)
        assert len(found) <= 1 + changed.get(name, 0), found
    uids = {api.md(name)["metadata"]["uid"] for name in names}
    everything = [
        *api.apps.list_namespaced_deployment(namespace).items,
        *api.core.list_namespaced_service(namespace).items,
        *api.core.list_namespaced_persistent_volume_claim(namespace).items,
    ]
    assert len(everything) == 3 * len(names)
    assert all(obj.metadata.owner_references[0].uid in uids for obj in everything)


def replica(cluster: ClusterHandle, namespace: str, identity: str) -> OperatorProcess:
    """An operator process with leader election (default lease settings) as ``identity``."""
    return OperatorProcess(
        cluster.kubeconfig, namespace, identity=identity, lease={"lease-namespace": namespace}
    )


def test_the_standby_takes_over_when_the_leader_is_killed_during_a_batch(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    if crd_cluster.audit_log is None:
        pytest.skip("needs the local control plane's audit log")
    api = ModelDeploymentApi(crd_cluster, namespace)
    leader = replica(crd_cluster, namespace, "op-a").start()
    standby: OperatorProcess | None = None
    try:
        wait_until(lambda: holder(crd_cluster, namespace) == "op-a", 30, "op-a to take the Lease")
        standby = replica(crd_cluster, namespace, "op-b").start()
        mark = len(crd_cluster.audit_log.read_text().splitlines())
        # Both serve health; only one leads.
        assert leader.health()[1]["leader"] is True
        code, body = standby.health()
        assert code == 200 and body["leader"] is False, body

        names = [f"chat-{i}" for i in range(10)]
        for name in names:
            api.create(gemma(name))
        wait_until(
            lambda: api.apps.list_namespaced_deployment(namespace).items,
            what="the leader's first Deployment",
        )
        killed_wall = datetime.datetime.now(datetime.UTC)
        killed = time.monotonic()
        leader.kill()  # mid-way through the batch

        def took_over() -> float | None:
            return time.monotonic() if holder(crd_cluster, namespace) == "op-b" else None

        failover = wait_until(took_over, BOUND_S + 60, "op-b to take the Lease") - killed
        print(f"failover: {failover:.1f} s after SIGKILL (bound {BOUND_S:.0f} s)")
        assert failover <= BOUND_S + SLACK_S, f"took {failover:.1f} s, bound {BOUND_S} s"
        assert standby.health()[1]["leader"] is True

        for name in names:
            wait_until(lambda n=name: converged(api, n), 120, f"{name} to converge")
        assert_no_duplicates_or_orphans(api, names)

        # Only the holder of the Lease wrote: op-a until it died, op-b only once it led.
        writes = audit_writes(crd_cluster, mark, namespace)
        before = {identity_of(w) for w in writes if received(w) < killed_wall}
        assert before == {"op-a"}, before
        by_b = [received(w) for w in writes if identity_of(w) == "op-b"]
        assert by_b and min(by_b) > killed_wall
        assert {identity_of(w) for w in writes} == {"op-a", "op-b"}
        assert "took the Lease" in standby.log()
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()


# -- churn while the leader is killed ----------------------------------------------------

CHURN_LIVE = 50  # ModelDeployments kept alive at once
CHURN_S = 300.0  # the soak's length (bounded: five minutes)
KILL_EVERY_S = 20.0
CONTEXTS = (1024, 2048, 4096)
TINY = {"cpu": "500m", "memory": "1Gi"}  # 50 of them fit NODE (32 CPUs, 128 Gi)


@pytest.mark.timeout(900)
def test_churn_while_the_leader_is_killed_every_20_s_converges_without_orphans(
    crd_cluster: ClusterHandle, namespace: str
) -> None:
    """50 ModelDeployments created, changed and deleted at random (seeded) for five minutes
    while the Lease holder is SIGKILLed every 20 s (a fresh replica replaces it, so two
    always run): at the end every object's Deployment carries its last spec, nothing is
    orphaned and no object has more ReplicaSets than spec versions."""
    api = ModelDeploymentApi(crd_cluster, namespace)
    rng = random.Random(15)
    replicas = [replica(crd_cluster, namespace, "churn-0").start()]
    started = 1
    live: dict[str, int] = {}  # name -> its last contextLength
    changes: dict[str, int] = {}
    created = 0

    def create() -> None:
        nonlocal created
        name = f"churn-{created}"
        created += 1
        md = gemma(name)
        md["spec"]["serving"].update(
            contextLength=CONTEXTS[0], resources={"requests": TINY, "limits": TINY}
        )
        api.create(md)
        live[name], changes[name] = CONTEXTS[0], 0

    try:
        wait_until(lambda: holder(crd_cluster, namespace) == "churn-0", 30, "the first leader")
        replicas.append(replica(crd_cluster, namespace, "churn-1").start())
        started = 2
        for _ in range(CHURN_LIVE):
            create()
        deadline = time.monotonic() + CHURN_S
        next_kill = time.monotonic() + KILL_EVERY_S
        kills = 0
        while time.monotonic() < deadline:
            action = rng.choice(("update", "update", "delete", "create"))
            if action == "update" and live:
                name = rng.choice(sorted(live))
                context = rng.choice([c for c in CONTEXTS if c != live[name]])
                api.patch_spec(name, {"serving": {"contextLength": context}})
                live[name] = context
                changes[name] += 1
            elif action == "delete" and live:
                name = rng.choice(sorted(live))
                api.custom.delete_namespaced_custom_object(
                    "modeldeploy.io", "v1alpha1", namespace, "modeldeployments", name
                )
                del live[name]
            elif len(live) < CHURN_LIVE:
                create()
            if time.monotonic() >= next_kill:
                leading = holder(crd_cluster, namespace)
                for process in replicas:
                    if process.identity == leading:
                        process.kill()
                        kills += 1
                replicas = [p for p in replicas if p.identity != leading]
                replicas.append(replica(crd_cluster, namespace, f"churn-{started}").start())
                started += 1
                next_kill += KILL_EVERY_S
            time.sleep(0.5)  # pacing the load generator, not synchronisation
        print(f"churn: {created} created, {sum(changes.values())} changes, {kills} kills")
        assert kills >= CHURN_S // KILL_EVERY_S - 1

        names = sorted(live)
        for name in names:
            wait_until(lambda n=name: converged(api, n, live[n]), 180, f"{name} to converge")

        def collected() -> bool:  # the deleted ones' children are garbage-collected
            deployments = api.apps.list_namespaced_deployment(namespace).items
            return len(deployments) == len(names)

        wait_until(collected, 120, "the deleted objects' children to be collected")
        assert_no_duplicates_or_orphans(api, names, changes)
    finally:
        for process in replicas:
            process.stop()


# -- the webhook on a standby --------------------------------------------------------


def test_a_standby_serves_the_admission_webhook(
    crd_cluster: ClusterHandle, namespace: str, model_policies: Any, tmp_path: Path
) -> None:
    cert_file, key_file, ca = serving_certificates(tmp_path)
    port = free_port()
    settings = tmp_path / "settings.yaml"
    admission = {"enabled": True, "port": port, "certFile": str(cert_file),
                 "keyFile": str(key_file)}  # fmt: skip
    settings.write_text(yaml.safe_dump({"admission": admission}))
    leader = replica(crd_cluster, namespace, "op-a").start()
    standby: OperatorProcess | None = None
    try:
        wait_until(lambda: holder(crd_cluster, namespace) == "op-a", 30, "op-a to take the Lease")
        standby = OperatorProcess(
            crd_cluster.kubeconfig, namespace, identity="op-b", settings_file=settings,
            lease={"lease-namespace": namespace},
        ).start()  # fmt: skip
        assert standby.health()[1]["leader"] is False
        selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        name = model_policies.name("hf-qwen-only")
        model_policies.apply(
            {
                "apiVersion": "modeldeploy.io/v1alpha1",
                "kind": "ModelPolicy",
                "metadata": {"name": name},
                "spec": {"namespaceSelector": selector, "enforcement": "enforce",
                         "allowedSources": ["hf://Qwen/*"]},
            }
        )  # fmt: skip
        md = {**gemma("chat"), "metadata": {"name": "chat", "namespace": namespace}}
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "e2e-review",
                "kind": {"group": "modeldeploy.io", "version": "v1alpha1",
                         "kind": "ModelDeployment"},
                "resource": {"group": "modeldeploy.io", "version": "v1alpha1",
                             "resource": "modeldeployments"},
                "operation": "CREATE",
                "namespace": namespace,
                "name": "chat",
                "object": md,
                "userInfo": {"username": "e2e"},
                "dryRun": False,
            },
        }  # fmt: skip

        trust = ssl.create_default_context(cadata=ca.decode())

        def judged() -> dict[str, Any] | None:
            # What the API server would send; the standby answers from its own indexes (the
            # policy reaches them through its watch: poll until it judges).
            answer = httpx.post(
                f"https://127.0.0.1:{port}/compliance", json=review, verify=trust, timeout=5
            ).json()["response"]
            return answer if answer["allowed"] is False else None

        answer = wait_until(judged, 60, "the standby's webhook to refuse the source")
        assert answer["uid"] == "e2e-review"
        assert "allowedSources" in answer["status"]["message"], answer
        # It still stands by: the leader wrote everything (here: nothing, no object exists).
        assert standby.health()[1]["leader"] is False and "took the Lease" not in standby.log()
    finally:
        leader.stop()
        if standby is not None:
            standby.stop()


# -- a watch refused by RBAC ---------------------------------------------------------

# What the operator needs, but to list and watch pods (granted later by RULE_PODS).
RULES_BUT_PODS = [
    {"apiGroups": [""], "resources": ["nodes", "namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["services", "persistentvolumeclaims", "configmaps"],
     "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": ["apps"], "resources": ["deployments"],
     "verbs": ["list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["modeldeploy.io"], "resources": ["modeldeployments", "modelpolicies"],
     "verbs": ["list", "watch", "patch"]},
    {"apiGroups": ["modeldeploy.io"], "resources": ["modeldeployments/status"],
     "verbs": ["patch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
     "verbs": ["list", "watch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]},
]  # fmt: skip
RULE_PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]


def test_healthz_is_unhealthy_while_a_watch_is_refused_and_healthy_once_it_is_allowed(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    rbac = client.RbacAuthorizationV1Api(crd_cluster.api_client())
    core = client.CoreV1Api(crd_cluster.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    subject = {"kind": "ServiceAccount", "name": "operator", "namespace": namespace}
    roles = {f"{namespace}-operator": RULES_BUT_PODS, f"{namespace}-pods": RULE_PODS}
    for role, rules in roles.items():
        rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    bind = f"{namespace}-operator"

    def grant(role: str, binding: str) -> None:
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": binding},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": role},
                "subjects": [subject],
            }
        )  # fmt: skip

    grant(f"{namespace}-operator", bind)
    kubeconfig = service_account_kubeconfig(
        crd_cluster, namespace, "operator", tmp_path / "kubeconfig"
    )
    operator = OperatorProcess(kubeconfig, namespace).start(wait=False)
    try:

        def refused() -> dict[str, Any] | None:
            assert operator.process is not None and operator.process.poll() is None
            code, body = operator.health()
            pods = [p for p in body.get("problems", []) if "/pods" in p and "403" in p]
            return body if code == 503 and pods else None

        body = wait_until(refused, 45, "/healthz 503 naming the refused pod watch")
        assert body["live"] is True, body  # unready, not to be restarted (yet)
        granted = time.monotonic()
        grant(f"{namespace}-pods", f"{namespace}-pods")
        wait_until(lambda: operator.health()[0] == 200, 45, "/healthz 200 once pods are allowed")
        print(f"/healthz 200 {time.monotonic() - granted:.1f} s after the grant")
        api = ModelDeploymentApi(crd_cluster, namespace)
        api.create(gemma("chat"))
        wait_until(lambda: converged(api, "chat"), 90, "the operator to serve again")
    finally:
        operator.stop()
        for name in (bind, f"{namespace}-pods"):
            with contextlib.suppress(client.ApiException):
                rbac.delete_cluster_role_binding(name)
        for role in roles:
            with contextlib.suppress(client.ApiException):
                rbac.delete_cluster_role(role)


# -- an API server outage, on a control plane of its own ---------------------------------


@pytest.fixture(scope="module")
def own_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, ClusterHandle]]:
    """A local control plane this module may stop parts of (never the session's)."""
    if existing_cluster() is not None:
        pytest.skip("stops an API server: needs a local control plane of its own")
    workdir = Path(tmp_path_factory.mktemp("outage")) / f"cluster-{os.getpid()}"
    local = LocalCluster(workdir, control_plane_bin_dir())
    local.start()
    try:
        handle = ClusterHandle(local.kubeconfig, None, workdir=local.workdir)
        install_crds(handle)
        yield local, handle
    finally:
        local.stop()


def test_the_operator_rides_out_an_api_server_outage_without_a_restart(
    own_cluster: tuple[LocalCluster, ClusterHandle],
) -> None:
    local, cluster = own_cluster
    namespace = "outage"
    client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": namespace}})
    api = ModelDeploymentApi(cluster, namespace)
    operator = replica(cluster, namespace, "op-outage").start()
    pid = operator.process.pid if operator.process else None
    try:
        for i in range(3):
            api.create(gemma(f"early-{i}"))
        for i in range(3):
            wait_until(lambda n=f"early-{i}": converged(api, n), 120, f"early-{i} to converge")

        # Changes the operator is still working on when the API server goes.
        for i in range(3):
            api.create(gemma(f"mid-{i}"))
        api.patch_spec("early-0", {"serving": {"contextLength": 2048}})
        stopped = time.monotonic()
        local.stop_apiserver()

        def unhealthy() -> dict[str, Any] | None:
            code, body = operator.health()
            return body if code == 503 else None

        seen = wait_until(unhealthy, 15, "/healthz to answer 503 during the outage")
        assert any("API server" in problem for problem in seen["problems"]), seen
        while time.monotonic() - stopped < OUTAGE_S:  # the outage: 503 all along
            code, body = operator.health()
            assert code == 503, (code, body)
            time.sleep(1)
        local.start_apiserver()
        print(f"API server down for {time.monotonic() - stopped:.0f} s")

        # Changes the moment it is back, while the operator's watches reconnect.
        for i in range(2):
            api.create(gemma(f"late-{i}"))
        api.patch_spec("early-1", {"serving": {"contextLength": 1024}})

        back = time.monotonic()
        wait_until(lambda: operator.health()[0] == 200, 60, "/healthz to answer 200 after")
        print(f"/healthz 200 again {time.monotonic() - back:.1f} s after the API server")
        names = [*(f"early-{i}" for i in range(3)), *(f"mid-{i}" for i in range(3))]
        names += [f"late-{i}" for i in range(2)]
        contexts = {"early-0": 2048, "early-1": 1024}
        for name in names:
            wait_until(
                lambda n=name: converged(api, n, contexts.get(n)), 120, f"{name} to converge"
            )
        print(f"every ModelDeployment converged {time.monotonic() - back:.1f} s after")
        assert_no_duplicates_or_orphans(api, names, {name: 1 for name in contexts})
        # The same process all along: it stood by while it could not renew, then led again.
        assert operator.process is not None and operator.process.poll() is None
        assert operator.process.pid == pid
        log = operator.log()
        assert "lost the Lease" in log and log.count("took the Lease") == 2, log[-3000:]
        assert operator.health()[1]["leader"] is True
    finally:
        operator.stop()
