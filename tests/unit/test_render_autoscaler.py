"""The autoscaler objects of modes keda and hpa: queries, thresholds, bounds, behaviour, owners."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import parse_model_deployment
from modeldeploy.autoscale import AutoscalePolicy
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_objects
from modeldeploy.render.autoscaler import (
    MAX_SCALE_UP_PODS,
    prometheus_adapter_rule,
    render_autoscaler,
)
from modeldeploy.runtimes import RUNTIMES

REPO = Path(__file__).resolve().parents[2]
E2E = load_e2e_pool()
CONFIG = OperatorConfig()
UID = "6f1c1b9e-0d1c-4c1e-9a57-2f0c8b1d0a11"
AUTOSCALING = {
    "enabled": True,
    "minReplicas": 2,
    "maxReplicas": 6,
    "targetQueueDepth": 8,
    "scaleDownDelaySeconds": 120,
}
GGUF_SPEC: dict[str, Any] = {
    "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"},
    "hardware": {"accelerator": "cpu"},
}
VLLM_SPEC: dict[str, Any] = {
    "model": {"source": "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"},
}
SELECTOR = 'namespace="default",pod=~"demo-[a-z0-9]+-[a-z0-9]+"'
ENGINES = [
    pytest.param(
        GGUF_SPEC,
        "llamacpp",
        f"sum(llamacpp:requests_processing{{{SELECTOR}}})"
        f" + sum(llamacpp:requests_deferred{{{SELECTOR}}})",
        id="llamacpp",
    ),
    pytest.param(
        VLLM_SPEC,
        "vllm",
        f"sum(vllm:num_requests_running{{{SELECTOR}}})"
        f" + sum(vllm:num_requests_waiting{{{SELECTOR}}})",
        id="vllm",
    ),
]
BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "selectPolicy": "Min",
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 15},
            {"type": "Pods", "value": 4, "periodSeconds": 15},
        ],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 120,
        "selectPolicy": "Max",
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
    },
}
TARGET = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}


def inputs(
    spec: dict[str, Any], config: OperatorConfig = CONFIG, **autoscaling: Any
) -> RenderInputs:
    """Render inputs of a ModelDeployment "demo" in "default", planned on the e2e pool."""
    spec = copy.deepcopy(spec)
    uid = autoscaling.pop("uid", None)
    spec["autoscaling"] = {**AUTOSCALING, **autoscaling}
    metadata = {"uid": uid} if uid else {}
    md = parse_model_deployment(model_deployment(spec, **metadata))
    return RenderInputs(md, plan_placement(md.spec, E2E, config), config)


def rendered(spec: dict[str, Any], config: OperatorConfig = CONFIG, **autoscaling: Any) -> Any:
    """``render_autoscaler``'s object (asserted not None)."""
    obj = render_autoscaler(inputs(spec, config, **autoscaling))
    assert obj is not None
    return obj


@pytest.mark.parametrize(
    "autoscaling",
    [{"enabled": False, "mode": "keda"}, {"enabled": False, "mode": "hpa"}, {"mode": "native"}],
)
def test_nothing_when_disabled_or_native(autoscaling: dict[str, Any]) -> None:
    assert render_autoscaler(inputs(GGUF_SPEC, **autoscaling)) is None


@pytest.mark.parametrize(("spec", "engine", "query"), ENGINES)
def test_keda_scaled_object(spec: dict[str, Any], engine: str, query: str) -> None:
    scaled = rendered(spec, mode="keda")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["kind"] == "ScaledObject"
    assert scaled["metadata"]["name"] == "demo"
    assert scaled["metadata"]["namespace"] == "default"
    assert scaled["metadata"]["labels"]["app.kubernetes.io/name"] == engine
    assert scaled["spec"] == {
        "scaleTargetRef": TARGET,
        "pollingInterval": 15,
        "cooldownPeriod": 120,
        "minReplicaCount": 2,
        "maxReplicaCount": 6,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": BEHAVIOR}},
        "triggers": [
            {
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
                    "query": query,
                    "threshold": "8",
                    "ignoreNullValues": "false",
                },
            }
        ],
    }


@pytest.mark.parametrize(("spec", "engine", "query"), ENGINES)
def test_hpa_on_the_pods_metric(spec: dict[str, Any], engine: str, query: str) -> None:
    hpa = rendered(spec, mode="hpa")
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    assert hpa["metadata"]["name"] == "demo"
    assert hpa["metadata"]["labels"]["app.kubernetes.io/name"] == engine
    assert hpa["spec"] == {
        "scaleTargetRef": TARGET,
        "minReplicas": 2,
        "maxReplicas": 6,
        "metrics": [
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": "modeldeploy_requests_in_flight"},
                    "target": {"type": "AverageValue", "averageValue": "8"},
                },
            }
        ],
        "behavior": BEHAVIOR,
    }


def test_settings_come_from_the_config() -> None:
    config = OperatorConfig(
        prometheus_server_address="http://prom.example:9090",
        keda_polling_interval_seconds=30,
        hpa_metric_name="inflight",
    )
    scaled = rendered(GGUF_SPEC, config, mode="keda")
    assert scaled["spec"]["pollingInterval"] == 30
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == "http://prom.example:9090"
    hpa = rendered(GGUF_SPEC, config, mode="hpa")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "inflight"
    assert prometheus_adapter_rule(config)["name"]["as"] == "inflight"


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_min_replicas_zero_acts_as_one_and_the_window_is_capped(mode: str) -> None:
    obj = rendered(GGUF_SPEC, mode=mode, minReplicas=0, scaleDownDelaySeconds=7200)
    spec = obj["spec"]
    assert spec.get("minReplicaCount", spec.get("minReplicas")) == 1
    behavior = (
        spec["behavior"]
        if mode == "hpa"
        else spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    )
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 3600  # the API's maximum


@pytest.mark.parametrize("mode", ["keda", "hpa"])
def test_labels_and_owner_reference_match_the_other_children(mode: str) -> None:
    with_uid = inputs(GGUF_SPEC, mode=mode, uid=UID)
    obj = render_autoscaler(with_uid)
    assert obj is not None
    deployment = next(o for o in render_objects(with_uid) if o["kind"] == "Deployment")
    assert obj["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert obj["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "name": "demo",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = obj["metadata"]["labels"]
    assert labels.pop("app.kubernetes.io/component") == "autoscaler"
    expected = dict(deployment["metadata"]["labels"])
    expected.pop("app.kubernetes.io/component")
    assert labels == expected
    assert "ownerReferences" not in rendered(GGUF_SPEC, mode=mode)["metadata"]


def test_the_pod_pattern_selects_this_deployments_pods_only() -> None:
    query = rendered(GGUF_SPEC, mode="keda")["spec"]["triggers"][0]["metadata"]["query"]
    (pattern,) = set(re.findall(r'pod=~"([^"]+)"', query))
    # PromQL regex matchers are anchored at both ends, as fullmatch is.
    assert re.fullmatch(pattern, "demo-7d4f8b9c6-x2k9p")
    for other in ["demo-big-7d4f8b9c6-x2k9p", "demo-7d4f8b9c6", "xdemo-7d4f8b9c6-x2k9p"]:
        assert not re.fullmatch(pattern, other)


def test_a_modeldeployment_without_namespace_selects_by_pod_only() -> None:
    md = inputs(GGUF_SPEC, mode="keda")
    metadata = {k: v for k, v in md.md.metadata.items() if k != "namespace"}
    bare = md._replace(md=md.md.model_copy(update={"metadata": metadata}))
    scaled = render_autoscaler(bare)
    assert scaled is not None
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert "namespace" not in query and 'pod=~"demo-' in query


def test_scale_up_bound_is_the_native_rule() -> None:
    assert AutoscalePolicy.max_scale_up_step == MAX_SCALE_UP_PODS
    # Percent 100 and Pods 4 under selectPolicy Min: the native step min(4, max(1, current)).
    for current in range(1, 12):
        assert min(current * 2, current + MAX_SCALE_UP_PODS) == current + min(4, max(1, current))


def test_adapter_rule_sums_every_engines_gauges() -> None:
    rule = prometheus_adapter_rule(CONFIG)
    for runtime in RUNTIMES.values():
        assert runtime.load_gauges.running in rule["seriesQuery"]
        for gauge in runtime.load_gauges.busy:
            assert gauge in rule["metricsQuery"]
    assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>) (")
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]


def test_docs_show_the_adapter_rule_the_code_renders() -> None:
    text = (REPO / "docs" / "autoscaling.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    documented = [yaml.safe_load(block) for block in blocks]
    assert {"rules": [prometheus_adapter_rule(CONFIG)]} in documented


def test_docs_show_the_objects_the_code_renders() -> None:
    text = (REPO / "docs" / "autoscaling.md").read_text()
    documented = {
        doc["kind"]: doc
        for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
        if isinstance(doc := yaml.safe_load(block), dict) and "kind" in doc
    }
    defaults = {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 4}
    scaled = rendered(GGUF_SPEC, mode="keda", scaleDownDelaySeconds=300, **defaults)
    assert documented["ScaledObject"]["spec"] == scaled["spec"]
    hpa = rendered(GGUF_SPEC, mode="hpa", **defaults)["spec"]
    documented_hpa = documented["HorizontalPodAutoscaler"]["spec"]
    assert documented_hpa.pop("behavior") == {"...": None}  # "as in KEDA mode"
    hpa.pop("behavior")
    assert documented_hpa == hpa
