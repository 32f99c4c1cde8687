"""The Helm chart, offline: lint, render, Kubernetes schemas, CRD identity, operator settings.

Every test renders the chart with the project's own helm (``helm template``, no cluster)
and checks the result: ``helm lint``, the rendered objects of several value sets against
the Kubernetes OpenAPI schemas of the oldest and the newest supported version (bundled by
the pinned ``kubernetes-validate``, strict: unknown fields fail), the CRDs against
``crds/`` byte for byte, the settings ConfigMap against the operator's own settings model,
and the values schema against bad input. The security scan (checkov) runs in
``make chart-check`` from its own virtual environment.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from e2e.chart import CHART, helm_template
from e2e.cluster.local import REPO
from e2e.cluster.tools import client_bin_dir
from pydantic.alias_generators import to_camel

from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.envvars import SETTINGS_VARS
from modeldeploy.gateway.metrics import GatewayMetrics
from modeldeploy.metrics import (
    API_WRITES,
    AUTOSCALE_CHANGES,
    AUTOSCALE_DESIRED,
    AUTOSCALE_LOAD,
    AUTOSCALE_SCRAPES,
    LAST_ERROR,
    MODEL_DEPLOYMENTS,
    RECONCILE_SECONDS,
    RECONCILES,
)
from modeldeploy.settings import load_settings

CRDS = REPO / "crds"
CHART_CRDS = CHART / "files" / "crds"
KEEP = {"helm.sh/resource-policy": "keep"}
# The chart's kubeVersion floor and the local cluster's version.
KUBERNETES_VERSIONS = ("1.29.0", "1.34.0")
# Kinds whose schema is not Kubernetes' own: checked against their CRD below, or (the
# Prometheus Operator's ServiceMonitor and cert-manager's Issuer and Certificate, whose
# CRDs are not vendored here) by shape only.
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "ServiceMonitor", "Issuer", "Certificate"}
CUSTOM_API_VERSIONS = {"kopf.dev/v1", "monitoring.coreos.com/v1", "cert-manager.io/v1"}

# One replica with Kopf peering instead of leader election (ci/peering-values.yaml).
PEERING: dict[str, Any] = {
    "replicaCount": 1, "leaderElection": {"enabled": False}, "peering": {"enabled": True},
}  # fmt: skip

# Value sets every offline check runs on (ci/*-values.yaml; `make chart-check` scans the same).
VALUE_SETS: dict[str, dict[str, Any]] = {
    path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) or {}
    for path in sorted((CHART / "ci").glob("*-values.yaml"))
}


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the project's helm."""
    return subprocess.run(
        [str(client_bin_dir() / "helm"), *args], capture_output=True, text=True, check=check
    )


def render(values: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The chart's objects for ``values``."""
    return helm_template(values, **kwargs)


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``)."""
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, [(o["kind"], o["metadata"]["name"]) for o in objects]
    return found[0]


def settings_of(objects: list[dict[str, Any]]) -> Any:
    """The operator settings the chart's ConfigMap holds, as the operator loads them."""
    text = only(objects, "ConfigMap", "modeldeploy")["data"]["config.yaml"]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        file.write(text)
        file.flush()
        return load_settings(Path(file.name), {})


# -- lint and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_passes_strict(name: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VALUE_SETS[name]))
    result = helm("lint", "--strict", str(CHART), "--values", str(values), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_objects_match_the_kubernetes_schemas(name: str) -> None:
    objects = render(VALUE_SETS[name])
    assert objects
    peering_crds = {
        doc["spec"]["names"]["kind"]: doc
        for doc in yaml.safe_load_all((CRDS / "kopf-peering.yaml").read_text())
        if doc
    }
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CUSTOM_KINDS:
            if obj["kind"] in peering_crds:
                schema = peering_crds[obj["kind"]]["spec"]["versions"][0]["schema"]
                jsonschema.validate(obj, schema["openAPIV3Schema"])
            assert obj["apiVersion"] in CUSTOM_API_VERSIONS, where
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name}: {where} is invalid for Kubernetes {version}: {error}")


def test_the_schemas_catch_a_wrong_field() -> None:
    # The validation above can fail: a misspelt field in a Deployment is refused.
    deployment = only(render(), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount above 1"),
        ({"replicaCount": -1}, "replicaCount"),
        ({"peering": {"enabled": True}}, "exclude each other"),
        ({"leaderElection": {"leaseDurationSeconds": 1}}, "leaseDurationSeconds"),
        ({"leaderElection": {"leaseName": "Not_A_Name"}}, "leaseName"),
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
        ({"unknownKey": True}, "unknownKey"),
        ({"planning": {"llamacppimage": "x"}}, "llamacppimage"),
        ({"config": {"logFormat": "yaml"}}, "logFormat"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"planning": {"gpuMemoryUtilization": 1.5}}, "gpuMemoryUtilization"),
        ({"admission": {"failurePolicy": "Never"}}, "failurePolicy"),
        ({"admission": {"timeoutSeconds": 31}}, "timeoutSeconds"),
        ({"admission": {"certManager": {"issuerRef": {"kind": "Issuer"}}}}, "issuerRef"),
        ({"admission": {"namespaceSelector": {"matchNames": ["a"]}}}, "matchNames"),
        ({"gateway": {"maxHeld": 0}}, "maxHeld"),
        ({"gateway": {"holdSeconds": 0}}, "holdSeconds"),
        ({"gateway": {"service": {"type": "Ingress"}}}, "type"),
        ({"gateway": {"enabled": True}, "watchNamespaces": ["a", "b"]}, "one namespace"),
    ],
)
def test_values_schema_refuses_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(RuntimeError, match=complaint):
        render(values)


def test_every_value_is_documented_in_values_yaml_and_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    key = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$")
    undocumented, checked = [], 0
    path: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent, name, rest = len(match[1]), match[2], match[3].strip()
        path = [(i, n) for i, n in path if i < indent] + [(indent, name)]
        node: dict[str, Any] | None = schema
        for _, part in path:
            node = (node or {}).get("properties", {}).get(part)
            if node is None:
                break  # inside a free-form value (e.g. podSecurityContext), documented above
        if node is None:
            continue
        dotted = ".".join(n for _, n in path)
        assert node.get("description"), f"{dotted}: no description in values.schema.json"
        if rest == "" and "properties" in node:
            continue  # a group of values: each child is documented itself
        checked += 1
        if not lines[number - 1].strip().startswith("#"):
            undocumented.append(dotted)
    assert undocumented == []
    assert checked > 50


# -- CRDs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(path.name for path in CRDS.glob("*.yaml")))
def test_chart_crds_are_byte_identical_to_crds_dir(name: str) -> None:
    assert (CHART_CRDS / name).read_bytes() == (CRDS / name).read_bytes(), (
        f"charts/modeldeploy/files/crds/{name} differs from crds/{name}: "
        f"cp crds/{name} charts/modeldeploy/files/crds/"
    )


def canonical_crds() -> dict[str, dict[str, Any]]:
    """The CRDs of crds/, by name."""
    found = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[doc["metadata"]["name"]] = doc
    return found


@pytest.mark.parametrize("keep", [True, False])
def test_rendered_crds_are_the_canonical_ones_plus_the_keep_annotation(keep: bool) -> None:
    rendered = {
        o["metadata"]["name"]: o
        for o in render({**PEERING, "crds": {"keep": keep}})  # every CRD, Kopf's too
        if o["kind"] == "CustomResourceDefinition"
    }
    canonical = canonical_crds()
    assert sorted(rendered) == sorted(canonical)
    for name, crd in rendered.items():
        annotations = crd["metadata"].pop("annotations", None)
        assert annotations == (KEEP if keep else None), name
        assert crd == canonical[name], name


def test_crds_follow_crds_enabled_and_peering() -> None:
    def crd_names(values: dict[str, Any]) -> list[str]:
        objects = render(values)
        return sorted(o["metadata"]["name"] for o in objects if o["kind"].endswith("Definition"))

    assert crd_names({"crds": {"enabled": False}}) == []
    ours = ["modeldeployments.modeldeploy.io", "modelpolicies.modeldeploy.io"]
    assert crd_names({}) == ours  # leader election: no peering CRDs
    kopf = ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
    assert crd_names(PEERING) == sorted([*ours, *kopf])
    assert crd_names({**PEERING, "crds": {"kopfPeering": False}}) == ours


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_settings_configmap_is_accepted_by_the_operator(name: str) -> None:
    values = VALUE_SETS[name]
    objects = render(values)
    settings = settings_of(objects)
    assert settings.namespaces == values.get("watchNamespaces", [])
    peering = values.get("peering", {}).get("enabled", False)
    assert settings.peering == ("modeldeploy" if peering else None)
    election = settings.leader_election
    assert election.enabled == values.get("leaderElection", {}).get("enabled", True)
    assert (election.lease_name, election.namespace) == ("modeldeploy", "modeldeploy-system")
    deployment = only(objects, "Deployment", "modeldeploy")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.metrics_port, settings.health_port) == (ports["metrics"], ports["health"])
    assert settings.planning.operator_image == container["image"]
    assert settings.admission.enabled == values.get("admission", {}).get("enabled", False)
    assert ports.get("webhook") == (settings.admission.port if settings.admission.enabled else None)


def test_chart_planning_defaults_are_the_operators_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    expected = {to_camel(f.name): getattr(OperatorConfig(), f.name) for f in fields(OperatorConfig)}
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
    expected["sourceSettings"] = {}  # a mapping in YAML; settings.py turns it into pairs
    # The fetch image defaults to the chart's own operator image, which is the same.
    assert values["planning"].pop("operatorImage") == ""
    assert values["planning"] == {k: v for k, v in expected.items() if k != "operatorImage"}
    assert set(schema["properties"]["planning"]["properties"]) == set(expected)
    allowed = schema["properties"]["planning"]["properties"]["sourceSettings"]["propertyNames"]
    assert set(allowed["enum"]) == set(SETTINGS_VARS)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert expected["operatorImage"] == f"{values['image']['repository']}:{chart['appVersion']}"


def test_config_checksum_rolls_the_operator_only_when_settings_change() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = only(render(values), "Deployment")
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return annotation

    default = checksum({})
    assert checksum({"config": {"resyncSeconds": 60}}) != default
    assert checksum({"planning": {"port": 8080}}) != default
    assert checksum({"resources": {"limits": {"memory": "1Gi"}}}) == default


# -- workload --------------------------------------------------------------------------


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod specs of the chart: the operator's and the helm test pod's."""
    specs = {}
    for obj in objects:
        if obj["kind"] == "Deployment":
            specs[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            specs[obj["metadata"]["name"]] = obj["spec"]
    return specs


def test_pods_meet_the_restricted_pod_security_profile() -> None:
    # The e2e test has the API server's PodSecurity admission check it for real; this
    # pins the settings that matter so a values change cannot drop one unnoticed.
    specs = pod_specs(render())
    assert sorted(specs) == ["modeldeploy", "modeldeploy-test-metrics"]
    for name, spec in specs.items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert container["resources"]["limits"]["memory"], name


def test_operator_deployment_runs_two_replicas_with_probes() -> None:
    objects = render()
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new replica is ready before an old one stops (and releases the Lease).
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == [
        "modeldeploy", "run", "--config", "/etc/modeldeploy/config.yaml",
    ]  # fmt: skip
    # Liveness: Kopf runs; readiness and start-up: the API server answers, watches stream.
    paths = {probe: container[probe]["httpGet"]["path"] for probe in PROBES}
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/livez",
                     "readinessProbe": "/healthz"}  # fmt: skip
    assert all(container[probe]["httpGet"]["port"] == "health" for probe in PROBES)
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}) for e in container["env"]}
    assert env["POD_ID"] == {"fieldPath": "metadata.name"}  # its Lease identity
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/modeldeploy"]["readOnly"] is True
    assert "/tmp" in mounts
    # Replicas prefer distinct nodes, and a drain evicts one at a time.
    labels = deployment["spec"]["selector"]["matchLabels"]
    anti = pod["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    term = preferred["podAffinityTerm"]
    assert term == {"topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": labels}}  # fmt: skip
    budget = only(objects, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_one_replica_without_leader_election_is_recreated_and_has_no_budget() -> None:
    objects = render(PEERING)
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert not [o for o in objects if o["kind"] == "Role"]  # no Lease to take
    # A chosen affinity replaces the default one.
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["ops"]}]}]}}}  # fmt: skip
    pod = only(render({"affinity": mine}), "Deployment")["spec"]["template"]["spec"]
    assert pod["affinity"] == mine


def test_image_reference_prefers_the_digest() -> None:
    digest = "sha256:" + "ab" * 32
    (container,) = only(render({"image": {"digest": digest, "tag": "9.9.9"}}), "Deployment")[
        "spec"
    ]["template"]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/modeldeploy/operator@{digest}"
    (container,) = only(render({"image": {"tag": "9.9.9"}}), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    assert container["image"] == "ghcr.io/modeldeploy/operator:9.9.9"


# -- RBAC ------------------------------------------------------------------------------


def rule_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """(apiGroup, resource, verb, resourceNames) of every permission in ``rules``."""
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_grants_no_wildcards_secrets_or_escalation() -> None:
    for name in sorted(VALUE_SETS):
        for obj in render(VALUE_SETS[name]):
            if obj["kind"] not in ("ClusterRole", "Role"):
                continue
            for group, resource, verb, _ in rule_set(obj["rules"]):
                assert "*" not in (group, resource, verb), (name, obj["kind"])
                # ConfigMaps: the ML-BOM is written, never read (no get, list or watch).
                assert resource != "configmaps" or verb in ("create", "patch"), (name, verb)
                # Secrets only by name (spec.model.credentialsSecret): never list or watch,
                # but for the gateway's API keys in the release namespace.
                keys = obj["kind"] == "Role" and obj["metadata"] == {
                    "name": "modeldeploy-gateway-keys", "namespace": "modeldeploy-system",
                    "labels": obj["metadata"]["labels"],
                }  # fmt: skip
                allowed = ("list", "watch") if keys else ("get",)
                assert resource != "secrets" or verb in allowed, (name, obj["kind"], verb)
                assert verb not in ("escalate", "bind", "impersonate", "deletecollection")
                assert not (verb == "get" and resource.startswith("pods/")), resource


def test_namespaced_mode_uses_roles_in_the_watched_namespaces() -> None:
    objects = render(VALUE_SETS["namespaced"])
    default_role = only(render(), "ClusterRole")["rules"]
    cluster = rule_set(only(objects, "ClusterRole")["rules"])
    assert {resource for _, resource, _, _ in cluster} == {
        "nodes", "customresourcedefinitions", "namespaces", "modelpolicies",
    }  # fmt: skip
    roles = [o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == "modeldeploy"]
    bindings = [
        o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "modeldeploy"
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    namespaced = rule_set(roles[0]["rules"])
    # The same permissions as the cluster-wide ClusterRole, with the namespaced peering.
    swap = {"clusterkopfpeerings": "kopfpeerings"}

    def expected(cluster_role: list[dict[str, Any]]) -> set[Any]:
        return {
            (g, swap.get(r, r), v, n)
            for g, r, v, n in rule_set(cluster_role)
            if r not in ("nodes", "customresourcedefinitions", "namespaces", "modelpolicies")
        }

    assert namespaced == expected(default_role)
    # The Lease is in the release's namespace, not in the served ones.
    assert only(objects, "Role", "modeldeploy-leader-election")["metadata"]["namespace"] == (
        "modeldeploy-system"
    )
    peering = render({**VALUE_SETS["namespaced"], **PEERING})
    peerings = [o for o in peering if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    peering_role = next(o for o in peering if o["kind"] == "Role")
    peering_cluster_role = only(render(PEERING), "ClusterRole")["rules"]
    assert rule_set(peering_role["rules"]) == expected(peering_cluster_role)


def test_peering_object_is_a_hook_and_its_rbac_follows_peering() -> None:
    objects = render(PEERING)
    peering = only(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == settings_of(objects).peering
    hooks = peering["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "post-install,post-upgrade"
    assert ("kopf.dev", "clusterkopfpeerings", "patch", ("modeldeploy",)) in rule_set(
        only(objects, "ClusterRole")["rules"]
    )
    off = render()  # leader election instead
    assert not [o for o in off if o["kind"].endswith("KopfPeering")]
    assert not [p for p in rule_set(only(off, "ClusterRole")["rules"]) if p[0] == "kopf.dev"]


def test_leader_election_may_get_create_and_update_its_lease_only_in_its_namespace() -> None:
    objects = render()
    role = only(objects, "Role", "modeldeploy-leader-election")
    assert role["metadata"]["namespace"] == "modeldeploy-system"
    lease = settings_of(objects).leader_election.lease_name
    assert rule_set(role["rules"]) == {
        ("coordination.k8s.io", "leases", "get", (lease,)),
        ("coordination.k8s.io", "leases", "update", (lease,)),
        ("coordination.k8s.io", "leases", "create", ()),  # a name cannot limit a create
    }
    binding = only(objects, "RoleBinding", "modeldeploy-leader-election")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "modeldeploy", "namespace": "modeldeploy-system"}
    ]
    # No write of leases in the ClusterRole, never cluster-wide: only the read of the
    # gateway's demand Leases (docs/gateway.md).
    cluster = {p for p in rule_set(only(objects, "ClusterRole")["rules"]) if p[1] == "leases"}
    assert cluster == {("coordination.k8s.io", "leases", verb, ()) for verb in ("list", "watch")}
    named = render({"leaderElection": {"leaseName": "ops-lease"}})
    assert settings_of(named).leader_election.lease_name == "ops-lease"
    assert ("coordination.k8s.io", "leases", "update", ("ops-lease",)) in rule_set(
        only(named, "Role", "modeldeploy-leader-election")["rules"]
    )


# -- admission webhook -----------------------------------------------------------------

ADMISSION = {"admission": {"enabled": True}}
CERT_MANAGER = {"admission": {"enabled": True, "certManager": {"enabled": True}}}
WEBHOOK_KINDS = {"ValidatingWebhookConfiguration", "Issuer", "Certificate"}


def webhook_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The one webhook of the chart's ValidatingWebhookConfiguration."""
    (webhook,) = only(objects, "ValidatingWebhookConfiguration")["webhooks"]
    return dict(webhook)


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's container."""
    (container,) = only(objects, "Deployment", "modeldeploy")["spec"]["template"]["spec"][
        "containers"
    ]
    return dict(container)


def test_admission_is_off_by_default_and_renders_nothing() -> None:
    objects = render()
    assert not [o for o in objects if o["kind"] in WEBHOOK_KINDS | {"Secret"}]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Service"] == [
        "modeldeploy-metrics"
    ]
    container = operator_container(objects)
    assert "webhook" not in {p["name"] for p in container["ports"]}
    assert "webhook-tls" not in {m["name"] for m in container["volumeMounts"]}
    annotations = only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/webhook-tls" not in annotations
    # The settings file is the one an operator without a webhook always had.
    config = json.loads(only(objects, "ConfigMap", "modeldeploy")["data"]["config.yaml"])
    assert "admission" not in config
    assert settings_of(objects).admission.enabled is False
    (rule,) = only(objects, "NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9090, "protocol": "TCP"}]


@pytest.mark.parametrize("values", [ADMISSION, CERT_MANAGER], ids=["generated", "cert-manager"])
@pytest.mark.parametrize("failure_policy", ["Fail", "Ignore"])
def test_webhook_calls_the_operator_through_its_service_port_and_path(
    values: dict[str, Any], failure_policy: str
) -> None:
    values = {"admission": {**values["admission"], "failurePolicy": failure_policy}}
    objects = render(values, namespace="ml-operators")
    webhook = webhook_of(objects)
    assert webhook["name"] == "compliance.modeldeploy.io"
    assert webhook["failurePolicy"] == failure_policy
    assert (webhook["sideEffects"], webhook["admissionReviewVersions"]) == ("None", ["v1"])
    assert webhook["timeoutSeconds"] == 10
    assert webhook["rules"] == [
        {
            "apiGroups": ["modeldeploy.io"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["modeldeployments"],
            "scope": "Namespaced",
        }
    ]
    target = webhook["clientConfig"]["service"]
    assert target["path"] == "/compliance"  # Kopf serves the handler id "compliance" there
    service = only(objects, "Service", target["name"])
    assert service["metadata"]["namespace"] == target["namespace"] == "ml-operators"
    assert service["spec"]["type"] == "ClusterIP"
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == target["port"]]
    # The Service's port leads to the container port the operator's settings serve on.
    container = operator_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == settings_of(objects).admission.port == 9443
    assert (
        service["spec"]["selector"]
        == only(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    )


def test_settings_enable_admission_with_the_mounted_certificate() -> None:
    objects = render({"admission": {"enabled": True, "port": 8443}})
    settings = settings_of(objects)
    assert (settings.admission.enabled, settings.admission.port) == (True, 8443)
    container = operator_container(objects)
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["webhook"] == 8443
    mount = {m["name"]: m for m in container["volumeMounts"]}["webhook-tls"]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in only(objects, "Deployment")["spec"]["template"]["spec"][
        "volumes"
    ]}["webhook-tls"]  # fmt: skip
    items = {i["key"]: i["path"] for i in volume["secret"]["items"]}
    assert settings.admission.cert_file == Path(mount["mountPath"]) / items["tls.crt"]
    assert settings.admission.key_file == Path(mount["mountPath"]) / items["tls.key"]
    secret = only(objects, "Secret", volume["secret"]["secretName"])
    assert set(items) <= set(secret["data"])


def test_generated_ca_bundle_is_the_secrets_ca_and_signs_the_serving_certificate() -> None:
    objects = render(ADMISSION, namespace="ml-operators")
    webhook = webhook_of(objects)
    secret = only(objects, "Secret", "modeldeploy-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    # The caBundle, the Secret and the pod's checksum are made once per render.
    assert webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {
        "modeldeploy-webhook.ml-operators.svc",
        "modeldeploy-webhook.ml-operators.svc.cluster.local",
    } <= set(names.get_values_for_type(x509.DNSName))
    assert "cert-manager.io/inject-ca-from" not in (
        only(objects, "ValidatingWebhookConfiguration")["metadata"].get("annotations") or {}
    )
    # Without a cluster to look the Secret up in, every render makes a new certificate,
    # and the pod's checksum changes with it, so the operator never serves a stale one.
    checksum = "checksum/webhook-tls"
    again = render(ADMISSION, namespace="ml-operators")
    assert only(again, "Secret")["data"]["ca.crt"] != secret["data"]["ca.crt"]
    assert (
        only(again, "Deployment")["spec"]["template"]["metadata"]["annotations"][checksum]
        != only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"][checksum]
    )


def test_cert_manager_issues_the_certificate_and_injects_the_ca() -> None:
    objects = render(CERT_MANAGER)
    assert not [o for o in objects if o["kind"] == "Secret"]
    configuration = only(objects, "ValidatingWebhookConfiguration")
    assert "caBundle" not in webhook_of(objects)["clientConfig"]
    namespace, name = configuration["metadata"]["annotations"][
        "cert-manager.io/inject-ca-from"
    ].split("/")
    serving = only(objects, "Certificate", name)
    assert namespace == serving["metadata"]["namespace"] == "modeldeploy-system"
    volume = {v["name"]: v for v in only(objects, "Deployment")["spec"]["template"]["spec"][
        "volumes"
    ]}["webhook-tls"]  # fmt: skip
    assert serving["spec"]["secretName"] == volume["secret"]["secretName"]
    assert "modeldeploy-webhook.modeldeploy-system.svc" in serving["spec"]["dnsNames"]
    annotations = only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/webhook-tls" not in annotations
    # No issuerRef: a self-signed Issuer signs the release's CA, whose Issuer signs the
    # serving certificate.
    ca_issuer = only(objects, "Issuer", serving["spec"]["issuerRef"]["name"])
    ca = only(objects, "Certificate", "modeldeploy-webhook-ca")
    assert ca["spec"]["isCA"] is True
    assert ca_issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert only(objects, "Issuer", ca["spec"]["issuerRef"]["name"])["spec"] == {"selfSigned": {}}
    # An issuerRef: only the serving certificate, from that issuer.
    issuer = {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    values = {"admission": {"enabled": True, "certManager": {"enabled": True, "issuerRef": issuer}}}
    given = render(values)
    assert not [o for o in given if o["kind"] == "Issuer"]
    assert only(given, "Certificate")["spec"]["issuerRef"] == issuer


def test_network_policy_admits_the_webhook_port_from_anywhere() -> None:
    values = {**VALUE_SETS["everything-on"], "admission": {"enabled": True, "port": 8443}}
    rules = only(render(values), "NetworkPolicy")["spec"]["ingress"]
    webhook = [r for r in rules if r["ports"] == [{"port": 8443, "protocol": "TCP"}]]
    assert webhook == [{"ports": [{"port": 8443, "protocol": "TCP"}]}]  # no "from": anywhere
    # The metrics port keeps its own peers.
    assert next(r for r in rules if r["ports"][0]["port"] == 9090)["from"]


def test_webhook_namespace_selector_follows_the_served_namespaces() -> None:
    def selector(values: dict[str, Any]) -> Any:
        return webhook_of(render(values, namespace="ml-operators"))["namespaceSelector"]

    key = "kubernetes.io/metadata.name"
    assert selector(ADMISSION) == {
        "matchExpressions": [
            {"key": key, "operator": "NotIn", "values": ["kube-system", "ml-operators"]}
        ]
    }
    assert selector({**ADMISSION, "watchNamespaces": ["team-a", "team-b"]}) == {
        "matchExpressions": [{"key": key, "operator": "In", "values": ["team-a", "team-b"]}]
    }
    given = {"matchLabels": {"modeldeploy.io/policies": "enforced"}}
    assert selector({"admission": {"enabled": True, "namespaceSelector": given}}) == given


# -- dashboards ------------------------------------------------------------------------

EXAMPLE_DASHBOARD = REPO / "examples" / "grafana" / "modeldeploy-dashboard.json"
OPERATOR_METRICS = {
    f"{metric._name}{suffix}"
    for metric, suffixes in (
        (RECONCILES, ("_total",)),
        (RECONCILE_SECONDS, ("_bucket", "_count", "_sum")),
        (MODEL_DEPLOYMENTS, ("",)),
        (LAST_ERROR, ("",)),
        (API_WRITES, ("_total",)),
        (AUTOSCALE_DESIRED, ("",)),
        (AUTOSCALE_LOAD, ("",)),
        (AUTOSCALE_CHANGES, ("_total",)),
        (AUTOSCALE_SCRAPES, ("_total",)),
    )
    for suffix in suffixes
}
# What the gateway exports (operator/modeldeploy/gateway/metrics.py): read from its registry,
# plus the labelled series, which exist once a request has been seen.
GATEWAY_METRICS = {
    sample.name
    for family in GatewayMetrics(lambda: {"ns/pod": 0}).registry.collect()
    for sample in family.samples
} | {
    "modeldeploy_gateway_requests_total", "modeldeploy_gateway_upstream_errors_total",
    "modeldeploy_gateway_time_to_first_byte_seconds_bucket",
    "modeldeploy_gateway_hold_seconds_bucket", "modeldeploy_gateway_wake_seconds_bucket",
    "modeldeploy_gateway_held_requests",
}  # fmt: skip
# What llama-server (tools/server/server-task.cpp of the vendored llama.cpp) and vLLM
# (vllm/v1/metrics/loggers.py) export.
RUNTIME_METRICS = {
    "llamacpp:requests_processing", "llamacpp:requests_deferred",
    "llamacpp:tokens_predicted_total", "llamacpp:prompt_tokens_total",
    "llamacpp:n_busy_slots_per_decode", "llamacpp:predicted_tokens_seconds",
    "vllm:num_requests_running", "vllm:num_requests_waiting",
    "vllm:generation_tokens_total", "vllm:prompt_tokens_total",
    "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
    "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
}  # fmt: skip


def test_dashboard_copy_in_the_chart_is_identical() -> None:
    chart_copy = CHART / "files" / "dashboards" / "modeldeploy.json"
    assert chart_copy.read_bytes() == EXAMPLE_DASHBOARD.read_bytes()


def test_dashboard_queries_use_only_metrics_that_exist() -> None:
    dashboard = json.loads(EXAMPLE_DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names = set()
    for expr in [*exprs, *variables]:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        names |= set(re.findall(r"\b((?:modeldeploy_|llamacpp:|vllm:)[a-z0-9_:]+)", expr))
    known = OPERATOR_METRICS | RUNTIME_METRICS | GATEWAY_METRICS
    assert names <= known, names - known
    # Every operator metric is on the dashboard, and both engines are.
    assert {n.rsplit("_", 1)[0] if n.endswith(("_bucket", "_total")) else n for n in names} >= {
        "modeldeploy_reconcile", "modeldeploy_reconcile_duration_seconds",
        "modeldeploy_model_deployments", "modeldeploy_last_error_timestamp_seconds",
        "modeldeploy_api_writes", "modeldeploy_autoscale_desired_replicas",
        "modeldeploy_autoscale_load_requests", "modeldeploy_autoscale_changes",
        "modeldeploy_autoscale_scrapes",
    }  # fmt: skip
    assert any(n.startswith("llamacpp:") for n in names)
    assert any(n.startswith("vllm:") for n in names)
    # Every gateway metric too.
    assert {n for n in names if n.startswith("modeldeploy_gateway_")} >= {
        "modeldeploy_gateway_requests_total", "modeldeploy_gateway_upstream_errors_total",
        "modeldeploy_gateway_time_to_first_byte_seconds_bucket",
        "modeldeploy_gateway_held_requests", "modeldeploy_gateway_hold_seconds_bucket",
        "modeldeploy_gateway_wake_seconds_bucket", "modeldeploy_gateway_inflight_requests",
    }  # fmt: skip
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    objects = render({"dashboards": {"enabled": True}})
    configmap = only(objects, "ConfigMap", "modeldeploy-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["modeldeploy.json"]) == json.loads(
        EXAMPLE_DASHBOARD.read_text()
    )
    assert not [o for o in render() if o["metadata"]["name"] == "modeldeploy-dashboard"]


# -- gateway ---------------------------------------------------------------------------

GATEWAY = {"gateway": {"enabled": True}}


def gateway_objects(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(kind, name) of the gateway's objects."""
    return sorted(
        (o["kind"], o["metadata"]["name"])
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
    )


def test_gateway_is_off_by_default_and_scale_to_zero_comes_with_it() -> None:
    objects = render()
    assert gateway_objects(objects) == []
    assert settings_of(objects).planning.scale_to_zero is False
    on = render(GATEWAY)
    assert settings_of(on).planning.scale_to_zero is True
    # The operator rolls when the gateway changes its settings.
    annotation = "checksum/config"
    assert (
        only(on, "Deployment", "modeldeploy")["spec"]["template"]["metadata"]["annotations"]
        != only(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    ), annotation
    assert gateway_objects(on) == [
        ("ClusterRole", "modeldeploy-gateway"),
        ("ClusterRoleBinding", "modeldeploy-gateway"),
        ("Deployment", "modeldeploy-gateway"),
        ("NetworkPolicy", "modeldeploy-gateway"),
        ("PodDisruptionBudget", "modeldeploy-gateway"),
        ("Role", "modeldeploy-gateway-keys"),
        ("RoleBinding", "modeldeploy-gateway-keys"),
        ("Service", "modeldeploy-gateway"),
        ("ServiceAccount", "modeldeploy-gateway"),
    ]


def test_gateway_runs_the_operator_image_with_its_flags_probes_and_identity() -> None:
    values = {"gateway": {
        "enabled": True, "requireApiKeys": True, "holdSeconds": 30, "maxHeld": 8,
        "port": 9000, "podAnnotations": {"a.io/b": "c"},
    }}  # fmt: skip
    objects = render(values)
    deployment = only(objects, "Deployment", "modeldeploy-gateway")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["a.io/b"] == "c"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "modeldeploy-gateway"
    (container,) = spec["containers"]
    assert container["image"] == operator_container(objects)["image"]
    assert container["command"] + container["args"] == [
        "modeldeploy", "gateway", "--port", "9000", "--keys-namespace", "modeldeploy-system",
        "--hold-seconds", "30", "--max-held", "8", "--require-api-keys",
    ]  # fmt: skip
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert {probe: container[probe]["httpGet"] for probe in PROBES} == {
        probe: {"path": "/healthz", "port": "http"} for probe in PROBES
    }
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}) for e in container["env"]}
    assert env["POD_NAME"] == {"fieldPath": "metadata.name"}
    # Restricted: non-root, seccomp RuntimeDefault, read-only root, no capabilities.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["memory"]
    # Replicas prefer distinct nodes; a drain takes one at a time.
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels["app.kubernetes.io/component"] == "gateway"
    (preferred,) = spec["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred["podAffinityTerm"]["labelSelector"] == {"matchLabels": labels}
    budget = only(objects, "PodDisruptionBudget", "modeldeploy-gateway")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
    service = only(objects, "Service", "modeldeploy-gateway")
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    # The operator's selector and the gateway's never pick each other's pods.
    assert only(objects, "Deployment", "modeldeploy")["spec"]["selector"]["matchLabels"] != labels
    one = render({"gateway": {"enabled": True, "replicas": 1}})
    assert ("PodDisruptionBudget", "modeldeploy-gateway") not in gateway_objects(one)


def test_gateway_rbac_reads_models_writes_leases_and_lists_secrets_only_at_home() -> None:
    objects = render(GATEWAY)
    role = rule_set(only(objects, "ClusterRole", "modeldeploy-gateway")["rules"])
    assert role == {
        *{(g, r, v, ()) for g, r in (("modeldeploy.io", "modeldeployments"), ("", "pods"))
          for v in ("get", "list", "watch")},
        *{("coordination.k8s.io", "leases", v, ()) for v in ("get", "create", "patch")},
    }  # fmt: skip
    keys = only(objects, "Role", "modeldeploy-gateway-keys")
    assert keys["metadata"]["namespace"] == "modeldeploy-system"
    assert rule_set(keys["rules"]) == {("", "secrets", "list", ()), ("", "secrets", "watch", ())}
    for binding in ("ClusterRoleBinding", "RoleBinding"):
        (subject,) = only(
            objects, binding, f"modeldeploy-gateway{'-keys' * (binding == 'RoleBinding')}"
        )["subjects"]
        assert subject == {
            "kind": "ServiceAccount", "name": "modeldeploy-gateway",
            "namespace": "modeldeploy-system",
        }  # fmt: skip
    # Serving one namespace: a Role there, and the gateway watches only it.
    for values in ({**GATEWAY, "watchNamespaces": ["team-a"]}, GATEWAY):
        objects = render(values)
        for obj in objects:
            if obj["kind"] not in ("ClusterRole", "Role"):
                continue
            secrets = [p for p in rule_set(obj["rules"]) if p[1] == "secrets" and p[2] != "get"]
            where = (obj["kind"], obj["metadata"].get("namespace"))
            assert not secrets or where == ("Role", "modeldeploy-system"), where
    namespaced = render({**GATEWAY, "watchNamespaces": ["team-a"]})
    assert not [o for o in namespaced if o["kind"] == "ClusterRole"
                and o["metadata"]["name"].startswith("modeldeploy-gateway")]  # fmt: skip
    assert only(namespaced, "Role", "modeldeploy-gateway")["metadata"]["namespace"] == "team-a"
    assert only(namespaced, "RoleBinding", "modeldeploy-gateway")["roleRef"]["kind"] == "Role"
    (container,) = only(namespaced, "Deployment", "modeldeploy-gateway")["spec"]["template"][
        "spec"
    ]["containers"]
    assert container["args"][3:5] == ["--namespace", "team-a"]
    assert gateway_objects(render({**GATEWAY, "rbac": {"create": False}})) == [
        ("Deployment", "modeldeploy-gateway"), ("NetworkPolicy", "modeldeploy-gateway"),
        ("PodDisruptionBudget", "modeldeploy-gateway"), ("Service", "modeldeploy-gateway"),
        ("ServiceAccount", "modeldeploy-gateway"),
    ]  # fmt: skip


def test_gateway_network_policy_admits_its_port_from_the_listed_peers() -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    for listed in ([], peers):
        objects = render({"gateway": {"enabled": True, "networkPolicy": {"from": listed}}})
        policy = only(objects, "NetworkPolicy", "modeldeploy-gateway")
        labels = only(objects, "Deployment", "modeldeploy-gateway")["spec"]["selector"]
        assert policy["spec"]["podSelector"] == labels
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
        assert rule.get("from", []) == listed  # none: from anywhere
        # The operator's policy does not select the gateway's pods.
        operator = only(objects, "NetworkPolicy", "modeldeploy")["spec"]["podSelector"]
        assert operator["matchExpressions"] == [
            {"key": "app.kubernetes.io/component", "operator": "NotIn", "values": ["gateway"]}
        ]
    off = render({"gateway": {"enabled": True, "networkPolicy": {"enabled": False}}})
    assert ("NetworkPolicy", "modeldeploy-gateway") not in gateway_objects(off)


def test_with_the_gateway_model_pods_admit_only_the_gateway_and_the_operator() -> None:
    objects = render(GATEWAY)
    peers = settings_of(objects).planning.model_ingress_from
    home = {"matchLabels": {"kubernetes.io/metadata.name": "modeldeploy-system"}}
    assert [dict(peer) for peer in peers] == [
        {"namespaceSelector": home, "podSelector": {"matchLabels": labels}}
        for labels in (
            only(objects, "Deployment", "modeldeploy-gateway")["spec"]["selector"]["matchLabels"],
            only(objects, "Deployment", "modeldeploy")["spec"]["selector"]["matchLabels"],
        )
    ]
    # The operator may apply and delete them (never read them), with the gateway or without
    # it: turning the gateway off deletes the policies it made.
    expected = {
        ("networking.k8s.io", "networkpolicies", verb, ()) for verb in ("create", "patch", "delete")
    }
    off = render()
    assert settings_of(off).planning.model_ingress_from == ()
    for rendered in (objects, off):
        rules = rule_set(only(rendered, "ClusterRole", "modeldeploy")["rules"])
        assert {p for p in rules if p[1] == "networkpolicies"} == expected
    unlisted = render({"gateway": {"enabled": True, "networkPolicy": {"models": False}}})
    assert settings_of(unlisted).planning.model_ingress_from == ()
