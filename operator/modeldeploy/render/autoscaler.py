"""Rendering of the autoscaler a ModelDeployment hands its replicas to (modes keda and hpa).

This module owns the exact shape of the KEDA ``ScaledObject`` (``spec.autoscaling.mode:
keda``) and of the ``autoscaling/v2`` ``HorizontalPodAutoscaler`` (``mode: hpa``) that scale
the ModelDeployment's Deployment on requests in flight, and the prometheus-adapter rule that
serves the HPA's Pods metric (docs/autoscaling.md). Both follow the native mode's rule
(``modeldeploy.autoscale``): desired = ceil(sum over pods of (running + waiting) /
``targetQueueDepth``) within [max(1, ``minReplicas``), ``maxReplicas``]; up at once by at
most doubling and at most 4 pods per 15 s, down by one pod per 15 s once the demand stayed
lower for ``scaleDownDelaySeconds``. The native mode renders nothing here: the operator sets
the Deployment's replicas itself.

Pods are found in Prometheus by the ``namespace`` and ``pod`` labels that the usual
Kubernetes service-discovery relabelling gives every scraped series (kube-prometheus's
PodMonitors and ServiceMonitors, the Prometheus chart's ``kubernetes-pods`` job); a
Deployment's pods are named ``NAME-<pod-template-hash>-<suffix>``.

Pure and deterministic, like the rest of render/.
"""

from __future__ import annotations

from typing import Any

# The package itself rather than names from it: render/__init__.py may import this module
# before it has defined them.
from modeldeploy import render
from modeldeploy.api import Autoscaling, ModelDeployment
from modeldeploy.config import OperatorConfig
from modeldeploy.runtimes import RUNTIMES, runtime_for
from modeldeploy.runtimes.base import LoadGauges

SCALED_OBJECT_API_VERSION = "keda.sh/v1alpha1"
HPA_API_VERSION = "autoscaling/v2"
COMPONENT_AUTOSCALER = "autoscaler"
# The native rule's scale-up bound (autoscale.AutoscalePolicy.max_scale_up_step) and the
# period of every HPA scaling policy: the HPA controller's default sync period.
MAX_SCALE_UP_PODS = 4
SCALE_PERIOD_SECONDS = 15
# autoscaling/v2 refuses a stabilizationWindowSeconds above one hour (HPAScalingRules).
MAX_STABILIZATION_SECONDS = 3600


def render_autoscaler(inputs: render.RenderInputs) -> dict[str, Any] | None:
    """The ScaledObject (mode keda) or HorizontalPodAutoscaler (mode hpa); else None."""
    autoscaling = inputs.md.spec.autoscaling
    if not autoscaling.enabled:
        return None
    if autoscaling.mode == "keda":
        return render_scaled_object(inputs)
    if autoscaling.mode == "hpa":
        return render_horizontal_pod_autoscaler(inputs)
    return None


def render_scaled_object(inputs: render.RenderInputs) -> dict[str, Any]:
    """The KEDA ScaledObject: one Prometheus trigger on the pods' requests in flight."""
    md, placement, config = inputs.md, inputs.placement, inputs.config
    autoscaling = md.spec.autoscaling
    gauges = runtime_for(placement.engine).load_gauges
    # Fields: https://keda.sh/docs/latest/reference/scaledobject-spec/ and the Prometheus
    # scaler, https://keda.sh/docs/latest/scalers/prometheus/ (metadata values are strings).
    trigger = {
        "type": "prometheus",
        # AverageValue: the HPA KEDA creates divides the query's value (the whole
        # Deployment's requests in flight) by the replicas, so desired = ceil(sum / target).
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": config.prometheus_server_address,
            "query": in_flight_query(md, gauges),
            "threshold": str(autoscaling.target_queue_depth),
            # An empty result (no pod scraped) is an error, so the HPA holds its replicas
            # rather than reading 0 and scaling down: missing metrics never scale down.
            "ignoreNullValues": "false",
        },
    }
    return {
        "apiVersion": SCALED_OBJECT_API_VERSION,
        "kind": "ScaledObject",
        "metadata": _metadata(inputs),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "pollingInterval": config.keda_polling_interval_seconds,
            # KEDA applies cooldownPeriod only to a scale-down to zero, which min >= 1 never
            # asks for; the HPA behaviour below governs every other scale-down.
            "cooldownPeriod": autoscaling.scale_down_delay_seconds,
            "minReplicaCount": min_replicas(autoscaling),
            "maxReplicaCount": autoscaling.max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior(autoscaling)}},
            "triggers": [trigger],
        },
    }


def render_horizontal_pod_autoscaler(inputs: render.RenderInputs) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler on the requests-in-flight Pods metric."""
    md, config = inputs.md, inputs.config
    autoscaling = md.spec.autoscaling
    # A Pods metric with an AverageValue target: desired = ceil(sum of the pods' values /
    # target) (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/).
    metric = {
        "type": "Pods",
        "pods": {
            "metric": {"name": config.hpa_metric_name},
            "target": {"type": "AverageValue", "averageValue": str(autoscaling.target_queue_depth)},
        },
    }
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(inputs),
        "spec": {
            "scaleTargetRef": _scale_target(md),
            "minReplicas": min_replicas(autoscaling),
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [metric],
            "behavior": behavior(autoscaling),
        },
    }


def min_replicas(autoscaling: Autoscaling) -> int:
    """``minReplicas`` with 0 acting as 1 (scale to zero needs a gateway that holds requests)."""
    return max(1, autoscaling.min_replicas)


def behavior(autoscaling: Autoscaling) -> dict[str, Any]:
    """The native rule as an autoscaling/v2 HorizontalPodAutoscalerBehavior."""
    window = min(autoscaling.scale_down_delay_seconds, MAX_STABILIZATION_SECONDS)
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            # Min of the two: never more than doubling, never more than 4 pods at once.
            "selectPolicy": "Min",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": SCALE_PERIOD_SECONDS},
                {"type": "Pods", "value": MAX_SCALE_UP_PODS, "periodSeconds": SCALE_PERIOD_SECONDS},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": window,
            "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": SCALE_PERIOD_SECONDS}],
        },
    }


def pod_selector(md: ModelDeployment) -> str:
    """PromQL label matchers of the ModelDeployment's pods (by ``namespace`` and ``pod``)."""
    # NAME-HASH-SUFFIX, anchored (PromQL regexes are): no other Deployment's pods match,
    # not even one named NAME-x, whose pods have three segments after NAME.
    pod = f'pod=~"{md.name}-[a-z0-9]+-[a-z0-9]+"'
    return f'namespace="{md.namespace}",{pod}' if md.namespace else pod


def in_flight_query(md: ModelDeployment, gauges: LoadGauges) -> str:
    """PromQL: the running plus waiting requests summed over the ModelDeployment's pods."""
    selector = pod_selector(md)
    return " + ".join(f"sum({gauge}{{{selector}}})" for gauge in gauges.busy)


def prometheus_adapter_rule(config: OperatorConfig) -> dict[str, Any]:
    """The prometheus-adapter rule serving ``hpa_metric_name`` per pod, for every engine."""
    running = sorted(runtime.load_gauges.running for runtime in RUNTIMES.values())
    busy = sorted(gauge for runtime in RUNTIMES.values() for gauge in runtime.load_gauges.busy)
    # Discovery by each engine's running gauge (every engine publishes one per pod); the
    # query sums both of the pod's gauges, whatever the series discovered.
    # https://github.com/kubernetes-sigs/prometheus-adapter/blob/master/docs/config.md
    return {
        "seriesQuery": f'{{__name__=~"{"|".join(running)}",namespace!="",pod!=""}}',
        "resources": {
            "overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        },
        "name": {"matches": ".*", "as": config.hpa_metric_name},
        "metricsQuery": (
            f'sum by (<<.GroupBy>>) ({{__name__=~"{"|".join(busy)}",<<.LabelMatchers>>}})'
        ),
    }


def _scale_target(md: ModelDeployment) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": md.name}


def _metadata(inputs: render.RenderInputs) -> dict[str, Any]:
    engine = str(inputs.placement.engine)
    return render.child_metadata(inputs.md, inputs.md.name, COMPONENT_AUTOSCALER, engine)
