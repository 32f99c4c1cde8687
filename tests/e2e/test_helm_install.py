"""The Helm chart on the real control plane.

``helm install`` from the repository with the project's helm into a namespace that enforces
the ``restricted`` Pod Security Standard; the operator then runs as the chart's
ServiceAccount (out of the pod, which kwok only simulates: a TokenRequest token and the
chart's rendered settings) and reconciles a ModelDeployment to Ready; ``helm upgrade`` with
changed values rolls the operator; ``helm uninstall`` keeps the CRD and users' objects.
The least-privilege proof (every permission of the chart's RBAC is needed) is in
``test_chart_rbac.py``.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.chart import CHART, ChartOperator, service_account_kubeconfig
from e2e.cluster.local import REPO
from e2e.harness import CRD_NAMES, ClusterHandle, wait_until
from kubernetes import client

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
RELEASE = "modeldeploy"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


@dataclass
class Release:
    """The chart installed once for this module."""

    cluster: ClusterHandle
    namespace: str
    install: subprocess.CompletedProcess[str]
    installed: bool = True

    def objects(self) -> list[dict[str, Any]]:
        """The release's manifest as Helm stored it (hooks excluded)."""
        manifest = self.cluster.helm("get", "manifest", RELEASE, "-n", self.namespace).stdout
        return [doc for doc in yaml.safe_load_all(manifest) if doc]

    def hooks(self) -> list[dict[str, Any]]:
        """The release's hooks (the helm test pod; the peering object with peering on)."""
        manifest = self.cluster.helm("get", "hooks", RELEASE, "-n", self.namespace).stdout
        return [doc for doc in yaml.safe_load_all(manifest) if doc]

    def settings(self) -> str:
        """The operator's settings file, as the pod would mount it from the ConfigMap."""
        core = client.CoreV1Api(self.cluster.api_client())
        data: str = core.read_namespaced_config_map(RELEASE, self.namespace).data["config.yaml"]
        return data


def _adopt_existing_crds(cluster: ClusterHandle, namespace: str) -> None:
    """Let the release take over CRDs applied before it (by the session's crd_cluster
    fixture, or by an operator installed with kubectl): what a user migrating to Helm does."""
    for name in (*CRD_NAMES, *PEERING_CRDS):
        if cluster.kubectl("get", "crd", name, check=False).returncode != 0:
            continue
        cluster.kubectl("label", "--overwrite", "crd", name, "app.kubernetes.io/managed-by=Helm")
        cluster.kubectl(
            "annotate", "--overwrite", "crd", name,
            f"meta.helm.sh/release-name={RELEASE}", f"meta.helm.sh/release-namespace={namespace}",
        )  # fmt: skip


@pytest.fixture(scope="module")
def release(cluster: ClusterHandle) -> Iterator[Release]:
    """`helm install` of the chart into a fresh namespace enforcing PodSecurity restricted."""
    namespace = f"modeldeploy-system-{secrets.token_hex(3)}"
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED}})
    _adopt_existing_crds(cluster, namespace)
    install = cluster.helm("install", RELEASE, str(CHART), "-n", namespace, check=False)
    assert install.returncode == 0, install.stderr
    handle = Release(cluster, namespace, install)
    try:
        yield handle
    finally:
        if handle.installed:
            cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        # Hooks outlive the release (the peering object holds nothing but peer heartbeats).
        cluster.kubectl("delete", "clusterkopfpeering", RELEASE, "--ignore-not-found")
        core.delete_namespace(namespace)


def small_model(name: str) -> dict[str, Any]:
    """The CPU example, sized to fit beside whatever else the session runs."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    small = {"cpu": "100m", "memory": "256Mi"}
    md["spec"]["serving"]["resources"] = {"requests": small, "limits": small}
    return md


def test_install_is_accepted_under_restricted_pod_security(release: Release) -> None:
    cluster, namespace = release.cluster, release.namespace
    labels = client.CoreV1Api(cluster.api_client()).read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "PodSecurity" not in release.install.stderr, release.install.stderr

    # Every object of the release is there: two replicas with leader election (a Role for
    # the Lease, a PodDisruptionBudget), so no Kopf peering CRDs or peering object.
    kinds = sorted(obj["kind"] for obj in release.objects())
    assert kinds == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
        "CustomResourceDefinition", "Deployment", "NetworkPolicy", "PodDisruptionBudget",
        "Role", "RoleBinding", "Service", "ServiceAccount",
    ])  # fmt: skip
    manifest = cluster.helm("get", "manifest", RELEASE, "-n", namespace).stdout
    found = subprocess.run(
        [*kubectl_argv(cluster), "get", "-f", "-", "-o", "name"],
        input=manifest, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.split()) == len(kinds)
    assert not [hook for hook in release.hooks() if hook["kind"].endswith("KopfPeering")]

    # PodSecurity admission let the operator's pod in (the ReplicaSet created it) ...
    core = client.CoreV1Api(cluster.api_client())
    selector = "app.kubernetes.io/component=operator,app.kubernetes.io/instance=" + RELEASE
    pods = wait_until(
        lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
        what="the operator pod to be admitted",
    )
    assert pods[0].spec.service_account_name == RELEASE
    # ... and admits the helm test pod (a server-side dry run goes through admission) ...
    (test_pod,) = [hook for hook in release.hooks() if hook["kind"] == "Pod"]
    admitted = dry_run_create(cluster, test_pod)
    assert admitted.returncode == 0, admitted.stderr
    # ... while the namespace does refuse a pod that breaks the profile.
    careless = copy.deepcopy(test_pod)
    careless["metadata"]["name"] = "careless"
    careless["spec"]["containers"][0]["securityContext"] = {"runAsUser": 0}
    refused = dry_run_create(cluster, careless)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def kubectl_argv(cluster: ClusterHandle) -> list[str]:
    """The project's kubectl bound to ``cluster``."""
    from e2e.cluster.tools import client_bin_dir

    return [str(client_bin_dir() / "kubectl"), "--kubeconfig", str(cluster.kubeconfig)]


def dry_run_create(cluster: ClusterHandle, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server` of one object: admission runs, nothing is stored."""
    return subprocess.run(
        [*kubectl_argv(cluster), "create", "--dry-run=server", "-f", "-"],
        input=json.dumps(obj), capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_operator_as_the_chart_service_account_reconciles_to_ready(
    release: Release, namespace: str, tmp_path: Path
) -> None:
    cluster = release.cluster
    account = f"system:serviceaccount:{release.namespace}:{RELEASE}"
    kubeconfig = service_account_kubeconfig(
        cluster, release.namespace, RELEASE, tmp_path / "kubeconfig"
    )
    kubectl = kubectl_argv(cluster)[0]
    whoami = subprocess.run(
        [kubectl, "--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == account

    operator = ChartOperator(kubeconfig, release.settings()).start()
    custom = client.CustomObjectsApi(cluster.api_client())
    try:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, small_model("chat")
        )
        ready = cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "mdep/chat", "--timeout=120s",
            check=False,
        )  # fmt: skip
        assert ready.returncode == 0, ready.stderr + operator.log()[-4000:]
        status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")[
            "status"
        ]
        assert status["phase"] == "Ready" and status["readyReplicas"] == 1
        # It took the release's Lease, with the chart's Role (leader election is the default).
        leases = client.CoordinationV1Api(cluster.api_client())
        lease = leases.read_namespaced_lease(RELEASE, release.namespace)
        assert lease.spec.holder_identity and lease.spec.lease_duration_seconds == 15
        assert operator.health()["leader"] is True
        # No refusal of the chart's ServiceAccount (a cluster-wide operator also meets other
        # tests' leftovers in terminating namespaces, whose writes are refused otherwise).
        refused = re.findall(r'cannot \w+ resource \\?"[\w/.]+\\?"', operator.log())
        assert refused == [], refused
        # The API server saw the chart's ServiceAccount make the operator's writes.
        if cluster.audit_log is not None:
            users = {
                entry["user"]["username"]
                for entry in map(json.loads, cluster.audit_log.read_text().splitlines())
                if entry.get("objectRef", {}).get("namespace") == namespace
                and str(entry.get("userAgent", "")).startswith("modeldeploy/")
            }
            assert users == {account}
        # Deleting needs no operator (no finalizer); the children are garbage-collected.
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "chat")
        wait_until(
            lambda: (
                not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
            ),
            what="the ModelDeployment to be deleted",
        )
    finally:
        operator.stop()


def test_helm_upgrade_with_changed_values_rolls_the_operator(release: Release) -> None:
    cluster, namespace = release.cluster, release.namespace
    apps = client.AppsV1Api(cluster.api_client())
    before = apps.read_namespaced_deployment(RELEASE, namespace)
    checksum = before.spec.template.metadata.annotations["checksum/config"]
    upgrade = cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", namespace, "--reuse-values",
        "--set", "config.resyncSeconds=120", check=False,
    )  # fmt: skip
    assert upgrade.returncode == 0, upgrade.stderr
    assert json.loads(release.settings())["resyncSeconds"] == 120

    after = apps.read_namespaced_deployment(RELEASE, namespace)
    assert after.spec.template.metadata.annotations["checksum/config"] != checksum
    assert after.metadata.generation > before.metadata.generation

    def rolled() -> bool:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
        sets = apps.list_namespaced_replica_set(namespace, label_selector=selector).items
        current = [rs for rs in sets if rs.spec.replicas]
        return (
            len(sets) == 2
            and len(current) == 1
            and current[0].metadata.annotations["deployment.kubernetes.io/revision"] == "2"
        )

    wait_until(rolled, what="a new ReplicaSet with the old one scaled to zero")


def test_helm_uninstall_with_crds_keep_leaves_the_crd_and_users_objects(
    release: Release, namespace: str
) -> None:
    cluster = release.cluster
    custom = client.CustomObjectsApi(cluster.api_client())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, small_model("kept"))
    uninstall = cluster.helm("uninstall", RELEASE, "-n", release.namespace, "--wait", check=False)
    assert uninstall.returncode == 0, uninstall.stderr
    release.installed = False
    assert "kept due to the resource policy" in uninstall.stdout + uninstall.stderr

    for name in (*CRD_NAMES, *PEERING_CRDS):
        assert cluster.kubectl("get", "crd", name, check=False).returncode == 0, name
    kept = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "kept")
    assert kept["spec"]["model"]["source"].startswith("hf://")
    apps = client.AppsV1Api(cluster.api_client())
    assert not apps.list_namespaced_deployment(release.namespace).items
    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    assert RELEASE not in {r.metadata.name for r in rbac.list_cluster_role().items}
