"""ModelPolicy enforcement on the real control plane: the admission webhook over TLS, and the
operator's defence in depth after resolution.

- The API server calls the operator's validating webhook over TLS on loopback (a CA and a
  serving certificate for 127.0.0.1 made here; the ValidatingWebhookConfiguration selects
  only this test's namespace, so other tests never meet it). ``enforce`` rejects a
  violating ModelDeployment with every violation listed; ``warn`` admits it and kubectl
  prints the warnings.
- A policy created after a ModelDeployment runs blocks it (Compliant=False, phase Blocked,
  no serving pods, a Warning Event) and a fixed object is unblocked.
- A source no policy allows is never contacted: the mirror counts zero requests.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, ModelDeploymentApi, OperatorProcess, free_port, wait_until
from e2e.mirror import ModelMirror
from e2e.webhook_tls import serving_certificates
from kubernetes import client

DEADLINE = 90


def gemma(name: str, **metadata: Any) -> dict[str, Any]:
    """The CPU gemma example under another name (its source is unreachable here)."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name, **metadata}
    return md


def policy(name: str, namespace: str, enforcement: str, **rules: Any) -> dict[str, Any]:
    """A ModelPolicy that selects only ``namespace``."""
    selector = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelPolicy",
        "metadata": {"name": name},
        "spec": {"namespaceSelector": selector, "enforcement": enforcement, **rules},
    }


@pytest.fixture
def webhook_operator(
    crd_cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """The operator serving the webhook over TLS, registered for this namespace only."""
    cert_file, key_file, ca = serving_certificates(tmp_path)
    port = free_port()
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "admission": {
                    "enabled": True,
                    "port": port,
                    "certFile": str(cert_file),
                    "keyFile": str(key_file),
                }
            }
        )
    )
    process = OperatorProcess(crd_cluster.kubeconfig, namespace, settings_file=settings).start()
    registrations = client.AdmissionregistrationV1Api(crd_cluster.api_client())
    name = f"modeldeploy-test-{namespace}"
    registrations.create_validating_webhook_configuration(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": "compliance.modeldeploy.io",
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/compliance",
                        "caBundle": base64.b64encode(ca).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": ["modeldeploy.io"],
                            "apiVersions": ["v1alpha1"],
                            "operations": ["CREATE", "UPDATE"],
                            "resources": ["modeldeployments"],
                        }
                    ],
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": namespace}
                    },
                    "failurePolicy": "Fail",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "timeoutSeconds": 10,
                }
            ],
        }
    )
    try:
        yield process
    finally:
        registrations.delete_validating_webhook_configuration(name)
        process.stop()


def _apply(cluster: ClusterHandle, md: dict[str, Any], namespace: str, tmp_path: Path) -> Any:
    path = tmp_path / f"{md['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(md))
    return cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)


RULES = {
    "allowedSources": ["hf://Qwen/*"],
    "requireRevisionPin": True,
    "requiredAnnotations": [{"key": "modeldeploy.io/owner", "pattern": ".+"}],
}


def test_the_webhook_rejects_with_every_violation_and_warn_admits_with_warnings(
    crd_cluster: ClusterHandle,
    namespace: str,
    model_policies: Any,
    webhook_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    name = f"strict-{namespace[-6:]}"
    model_policies.apply(policy(name, namespace, "enforce", **RULES))
    md = gemma("chat")

    def rejected() -> Any:
        result = _apply(crd_cluster, md, namespace, tmp_path)
        return result if result.returncode != 0 and "allowedSources" in result.stderr else None

    # The policy reaches the webhook's index through its watch: poll until it judges.
    result = wait_until(rejected, DEADLINE, "the webhook to reject the ModelDeployment")
    assert "admission webhook" in result.stderr and "denied the request" in result.stderr
    for rule in ("allowedSources", "requireRevisionPin", "requiredAnnotations"):
        assert rule in result.stderr, result.stderr
    assert "3 policy violations" in result.stderr

    model_policies.apply(policy(name, namespace, "warn", **RULES))

    def warned() -> Any:
        result = _apply(crd_cluster, md, namespace, tmp_path)
        return result if result.returncode == 0 else None

    result = wait_until(warned, DEADLINE, "the webhook to admit with warnings")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 3, result.stderr
    assert any("allowedSources" in line and "hf://Qwen/*" in line for line in warnings)
    api = ModelDeploymentApi(crd_cluster, namespace)
    assert api.md("chat")["metadata"]["name"] == "chat"


def test_a_later_policy_blocks_a_running_model_until_it_is_fixed(
    crd_cluster: ClusterHandle, namespace: str, model_policies: Any
) -> None:
    process = OperatorProcess(crd_cluster.kubeconfig, namespace).start()
    try:
        api = ModelDeploymentApi(crd_cluster, namespace)
        api.create(gemma("chat"))
        wait_until(
            lambda: (api.condition("chat", "Ready") or {}).get("status") == "True",
            DEADLINE,
            "chat Ready",
        )
        assert api.condition("chat", "Compliant") is None  # no policy selects it yet
        rule = [{"key": "modeldeploy.io/approved", "pattern": "^yes$"}]
        model_policies.apply(
            policy(f"approval-{namespace[-6:]}", namespace, "enforce", requiredAnnotations=rule)
        )
        apps = client.AppsV1Api(crd_cluster.api_client())

        def blocked() -> bool:
            status = api.md("chat").get("status") or {}
            deployment = apps.read_namespaced_deployment("chat", namespace)
            return status.get("phase") == "Blocked" and deployment.spec.replicas == 0

        wait_until(blocked, DEADLINE, "chat Blocked with no serving pods")
        compliant = api.condition("chat", "Compliant") or {}
        assert compliant["status"] == "False" and compliant["reason"] == "PolicyViolation"
        assert "modeldeploy.io/approved" in compliant["message"]
        events = client.CoreV1Api(crd_cluster.api_client()).list_namespaced_event(
            namespace, field_selector="involvedObject.name=chat"
        )
        assert any(e.reason == "PolicyViolation" and e.type == "Warning" for e in events.items)

        # Fixed: the annotation the policy asks for.
        api.custom.patch_namespaced_custom_object(
            "modeldeploy.io", "v1alpha1", namespace, "modeldeployments", "chat",
            {"metadata": {"annotations": {"modeldeploy.io/approved": "yes"}}},
        )  # fmt: skip

        def unblocked() -> bool:
            status = api.md("chat").get("status") or {}
            deployment = apps.read_namespaced_deployment("chat", namespace)
            return status.get("phase") == "Ready" and deployment.spec.replicas == 1

        wait_until(unblocked, DEADLINE, "chat unblocked and serving")
        assert (api.condition("chat", "Compliant") or {}).get("status") == "True"
    finally:
        process.stop()


def test_a_source_no_policy_allows_is_never_contacted(
    crd_cluster: ClusterHandle, namespace: str, model_policies: Any, tmp_path: Path
) -> None:
    model = tmp_path / "tiny-Q4_K_M.gguf"
    model.write_bytes(b"GGUF" + bytes(64))
    with ModelMirror({model.name: model}) as mirror:
        process = OperatorProcess(
            crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env()
        ).start()
        try:
            model_policies.apply(
                policy(
                    f"sources-{namespace[-6:]}",
                    namespace,
                    "audit",
                    **{"allowedSources": ["hf://Qwen/*"]},
                )
            )
            api = ModelDeploymentApi(crd_cluster, namespace)
            md = gemma("mirrored")
            md["spec"]["model"] = {
                "source": mirror.url(model.name),
                "parameters": "270M",
                "quantization": "Q4_K_M",
            }
            api.create(copy.deepcopy(md))

            def judged() -> bool:
                found = api.condition("mirrored", "Compliant") or {}
                return found.get("status") == "False" and "allowedSources" in found.get(
                    "message", ""
                )

            wait_until(judged, DEADLINE, "the source refused by the audit policy")
            # Several passes have run (resync every second): still no request at the source.
            wait_until(
                lambda: (api.md("mirrored").get("status") or {}).get("observedGeneration") == 1,
                DEADLINE,
                "a pass",
            )
            assert mirror.requests == 0
        finally:
            process.stop()
