"""Rendering: (ModelDeployment, Placement, config) -> the Kubernetes objects to apply.

This package owns the exact shape of every child object: the model-cache
PersistentVolumeClaim (when ``cache.enabled``), the Deployment running the engine, and the
Service in front of it, as plain dicts in that order (apply order); with
``model_ingress_from`` set, the NetworkPolicy of ``render/network_policy.py``. Every child carries
the labels of docs/architecture.md §1 and, when the ModelDeployment's uid is known, a controller
ownerReference to it. Pods meet the ``restricted`` Pod Security Standard. The pod
template's hash is recorded in ``modeldeploy.io/spec-hash`` on the Deployment and the pods.
Given a ``provenance.Provenance``, the Deployment carries its ``modeldeploy.io/``
annotations and the pod template those of the served bytes. ``render/bom.py`` renders the
ML-BOM ConfigMap.

Pure and deterministic: the same inputs give the same objects, byte for byte once
serialised.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, NamedTuple

from modeldeploy.adapters import ResolvedAdapter, max_lora_rank
from modeldeploy.api import GROUP_VERSION, KIND, ModelDeployment
from modeldeploy.catalog import Accelerator
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement
from modeldeploy.provenance import Provenance, pod_annotations, provenance_annotations
from modeldeploy.render.autoscaler import render_autoscaler
from modeldeploy.render.bom import render_bom_configmap
from modeldeploy.render.fetch_init import fetch_init_container
from modeldeploy.render.network_policy import render_network_policy
from modeldeploy.resolution import Resolution
from modeldeploy.runtimes import (
    PORT_NAME,
    launcher_command,
    merge_env,
    model_env,
    probes,
    runtime_for,
    startup_seconds,
)
from modeldeploy.scaling import clamp
from modeldeploy.sizing import GIB

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = "modeldeploy.io/model-deployment"
ANNOTATION_SPEC_HASH = "modeldeploy.io/spec-hash"
# The hardware class a pod was planned for: the re-plan after an unschedulable wait counts
# only the pods of the class the decision names (capacity.py, reconcile.py).
ANNOTATION_HARDWARE_CLASS = "modeldeploy.io/hardware-class"
MANAGED_BY = "modeldeploy"
COMPONENT_SERVER = "server"
COMPONENT_CACHE = "model-cache"
CACHE_VOLUME = "model-cache"


class RenderInputs(NamedTuple):
    """What every child is rendered from.

    ``resolution`` (the operator's resolution of ``spec.model``) pins the revision the init
    container fetches and the engine serves, and sizes the cache from the real files.
    """

    md: ModelDeployment
    placement: Placement
    config: OperatorConfig
    resolution: Resolution | None = None
    # The operator-native autoscaler's count; None: spec.replicas (clamped to the bounds
    # while autoscaling), or none at all where KEDA or an HPA owns the count.
    replicas: int | None = None
    # Where the served bytes come from (provenance.py): its modeldeploy.io/ annotations go
    # on the Deployment and, for the bytes themselves, on the pod template. None: none.
    provenance: Provenance | None = None
    # spec.adapters as resolved (their revisions), in spec order; () before resolution or
    # for pvc:// adapters, which the init container resolves itself.
    adapters: tuple[ResolvedAdapter, ...] = ()


def labels(name: str, component: str, engine: str) -> dict[str, str]:
    """The labels of every child object (docs/architecture.md §1)."""
    return {
        LABEL_NAME: engine,
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: name,
    }


def selector_labels(name: str) -> dict[str, str]:
    """The immutable Deployment selector and the Service selector: no engine in it."""
    return {LABEL_MODEL_DEPLOYMENT: name, LABEL_COMPONENT: COMPONENT_SERVER}


def cache_claim_name(name: str) -> str:
    """Name of the model-cache PersistentVolumeClaim."""
    return f"{name}-model-cache"


def spec_hash(template: dict[str, Any]) -> str:
    """A stable hash of a pod template (canonical JSON, sha256, 16 hex digits)."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def render_objects(inputs: RenderInputs) -> list[dict[str, Any]]:
    """The children of a ModelDeployment: shared cache PVC (if any), Deployment, Service."""
    md = inputs.md
    objects: list[dict[str, Any]] = []
    if shared_cache(md):
        objects.append(render_cache_claim(inputs))
    objects.append(render_deployment(inputs))
    objects.append(render_service(inputs))
    # KEDA's ScaledObject or an HPA in those modes (render/autoscaler.py).
    autoscaler = render_autoscaler(inputs)
    if autoscaler is not None:
        objects.append(autoscaler)
    # Ingress only from the gateway and the operator (render/network_policy.py), when set.
    network_policy = render_network_policy(inputs)
    if network_policy is not None:
        objects.append(network_policy)
    # The CycloneDX ML-BOM of what is served (render/bom.py), once provenance is known.
    if inputs.provenance is not None:
        objects.append(render_bom_configmap(inputs))
    return objects


def shared_cache(md: ModelDeployment) -> bool:
    """Whether the replicas share one cache claim: its access mode must allow it.

    A ReadWriteOnce claim attaches to one node only, so when
    more than one replica may run, each pod gets its own claim (a generic ephemeral volume,
    created and deleted with the pod) instead.
    """
    cache = md.spec.cache
    if not cache.enabled:
        return False
    if cache.access_mode == "ReadWriteMany":
        return True
    autoscaling = md.spec.autoscaling
    most = max(md.spec.replicas, autoscaling.max_replicas if autoscaling.enabled else 0)
    return most <= 1


def child_metadata(md: ModelDeployment, name: str, component: str, engine: str) -> dict[str, Any]:
    """A child's name, namespace, labels and controller ownerReference to the ModelDeployment."""
    metadata: dict[str, Any] = {"name": name}
    if md.namespace:
        metadata["namespace"] = md.namespace
    metadata["labels"] = labels(md.name, component, engine)
    uid = md.metadata.get("uid")
    if uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": GROUP_VERSION,
                "kind": KIND,
                "name": md.name,
                "uid": str(uid),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return metadata


def cache_size_bytes(inputs: RenderInputs) -> int:
    """``cache.size: auto``: the resolved files (else the estimated weights) plus headroom,
    in whole GiB, at least ``min_cache_bytes`` (the reconcile never shrinks a claim)."""
    placement, config, resolution = inputs.placement, inputs.config, inputs.resolution
    payload = resolution.total_bytes if resolution else placement.memory.weights_bytes
    wanted = max(config.min_cache_bytes, payload * config.cache_headroom)
    return math.ceil(wanted / GIB) * GIB


def _cache_size(inputs: RenderInputs) -> str:
    md = inputs.md
    size = md.spec.cache.size
    if size != "auto":
        return size
    return f"{cache_size_bytes(inputs) // GIB}Gi"


def _claim_spec(inputs: RenderInputs) -> dict[str, Any]:
    md = inputs.md
    cache = md.spec.cache
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": _cache_size(inputs)}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return spec


def render_cache_claim(inputs: RenderInputs) -> dict[str, Any]:
    """The PersistentVolumeClaim the replicas share as model cache."""
    md, placement = inputs.md, inputs.placement
    spec = _claim_spec(inputs)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_metadata(
            md, cache_claim_name(md.name), COMPONENT_CACHE, str(placement.engine)
        ),
        "spec": spec,
    }


def render_service(inputs: RenderInputs) -> dict[str, Any]:
    """The Service in front of the replicas (``http://NAME.NAMESPACE.svc:PORT/v1``)."""
    md, placement, config = inputs.md, inputs.placement, inputs.config
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(md, md.name, COMPONENT_SERVER, str(placement.engine)),
        "spec": {
            "type": config.service_type,
            "selector": selector_labels(md.name),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": config.port,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                    "appProtocol": "http",
                }
            ],
        },
    }


def render_container(inputs: RenderInputs) -> dict[str, Any]:
    """The engine container: launcher command, engine flags, env, port, probes, limits."""
    md, placement, config, resolution = (
        inputs.md,
        inputs.placement,
        inputs.config,
        inputs.resolution,
    )
    engine = str(placement.engine)
    runtime = runtime_for(placement.engine)
    user_env = [variable.model_dump() for variable in md.spec.serving.env]
    revision = resolution.revision if resolution else None
    revisions = {a.name: a.resolution.revision for a in inputs.adapters}
    ours = model_env(md, placement, config, revision, revisions) + runtime.engine_env()
    env = merge_env(ours, user_env)
    args = list(md.spec.serving.args)
    if md.spec.adapters:
        loading = runtime.adapter_args(len(md.spec.adapters), max_lora_rank(inputs.adapters))
        args = loading + args
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": CACHE_VOLUME, "mountPath": config.cache_mount_path},
    ]
    if runtime.shared_memory_bytes(placement.gpus_per_replica) is not None:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return {
        "name": engine,
        "image": runtime.image(config, gpu=placement.accelerator is Accelerator.GPU),
        "imagePullPolicy": config.image_pull_policy,
        "command": launcher_command(engine),
        "args": runtime.engine_args(placement, md.served_name, args, config),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": config.port, "protocol": "TCP"}],
        "resources": {"requests": dict(placement.requests), "limits": dict(placement.limits)},
        **probes(placement),
        "securityContext": copy.deepcopy(dict(config.container_security_context)),
        "volumeMounts": mounts,
    }


def _fetch_init(inputs: RenderInputs) -> tuple[dict[str, Any], list[Any]]:
    """The artifact fetcher (docs/fetch.md) and the volumes it adds: it downloads and
    verifies the model (the resolved revision when known) into the cache volume before the
    engine starts."""
    md, config, resolution = inputs.md, inputs.config, inputs.resolution
    return fetch_init_container(
        md.spec.model,
        adapters=md.spec.adapters,
        adapter_revisions={a.name: a.resolution.revision for a in inputs.adapters},
        image=config.operator_image,
        cache_mount_path=config.cache_mount_path,
        cache_volume=CACHE_VOLUME,
        revision=resolution.revision if resolution else md.spec.model.revision,
        settings=dict(config.source_settings),
        image_pull_policy=config.image_pull_policy,
        security_context=config.container_security_context,
    )


def _cache_volume(inputs: RenderInputs) -> dict[str, Any]:
    md, placement = inputs.md, inputs.placement
    if shared_cache(md):
        claim = {"claimName": cache_claim_name(md.name)}
        return {"name": CACHE_VOLUME, "persistentVolumeClaim": claim}
    if md.spec.cache.enabled:
        # One claim per pod, named POD-model-cache by the ephemeral volume controller.
        template = {
            "metadata": {"labels": labels(md.name, COMPONENT_CACHE, str(placement.engine))},
            "spec": _claim_spec(inputs),
        }
        return {"name": CACHE_VOLUME, "ephemeral": {"volumeClaimTemplate": template}}
    size = cache_size_bytes(inputs) // GIB
    return {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": f"{size}Gi"}}


def _volumes(inputs: RenderInputs, fetch_volumes: list[dict[str, Any]]) -> list[Any]:
    placement = inputs.placement
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    volumes.append(_cache_volume(inputs))
    volumes.extend(fetch_volumes)
    shm_bytes = runtime_for(placement.engine).shared_memory_bytes(placement.gpus_per_replica)
    if shm_bytes is not None:
        # A memory-backed /dev/shm: the container runtime's default is 64 MiB.
        shm = shm_bytes // GIB
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm}Gi"}})
    return volumes


def render_pod_template(inputs: RenderInputs) -> dict[str, Any]:
    """The pod template, without its hash annotation."""
    md, placement, config = inputs.md, inputs.placement, inputs.config
    engine = str(placement.engine)
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # Service links would inject e.g. VLLM_PORT=tcp://... for a Service named "vllm".
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.termination_grace_period_seconds,
        "securityContext": copy.deepcopy(dict(config.pod_security_context)),
        "affinity": {"nodeAffinity": placement.node_affinity},
    }
    if placement.node_selector:
        spec["nodeSelector"] = dict(sorted(placement.node_selector.items()))
    if placement.tolerations:
        spec["tolerations"] = [dict(t) for t in placement.tolerations]
    spec["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(md.name)},
        }
    ]
    fetch, fetch_volumes = _fetch_init(inputs)
    spec["initContainers"] = [fetch]
    spec["containers"] = [render_container(inputs)]
    spec["volumes"] = _volumes(inputs, fetch_volumes)
    return {
        "metadata": {
            "labels": labels(md.name, COMPONENT_SERVER, engine),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(config.port),
                "prometheus.io/path": runtime_for(placement.engine).metrics_path,
                ANNOTATION_HARDWARE_CLASS: placement.hardware_class.id,
            }
            # A new revision changes the template's hash, so the pods roll (provenance.py).
            | (pod_annotations(inputs.provenance) if inputs.provenance else {}),
        },
        "spec": spec,
    }


def deployment_replicas(inputs: RenderInputs) -> int | None:
    """The Deployment's ``spec.replicas``: None leaves it to KEDA or an HPA.

    (Server-side apply without the field gives up its ownership, so the other autoscaler's
    writes stand; docs/autoscaling.md.)
    """
    autoscaling = inputs.md.spec.autoscaling
    if autoscaling.enabled and autoscaling.mode != "native":
        return None
    if inputs.replicas is not None:
        return inputs.replicas
    if autoscaling.enabled:
        return clamp(inputs.md.spec.replicas, autoscaling, inputs.config.scale_to_zero)
    return inputs.md.spec.replicas


def render_deployment(inputs: RenderInputs) -> dict[str, Any]:
    """The Deployment of the engine, with the pod template's hash for rollouts."""
    md, placement = inputs.md, inputs.placement
    template = render_pod_template(inputs)
    digest = spec_hash(template)
    template["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = digest
    metadata = child_metadata(md, md.name, COMPONENT_SERVER, str(placement.engine))
    metadata["annotations"] = {ANNOTATION_SPEC_HASH: digest} | (
        provenance_annotations(inputs.provenance) if inputs.provenance else {}
    )
    spec: dict[str, Any] = {}
    replicas = deployment_replicas(inputs)
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **spec,
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": startup_seconds(placement) + 600,
            "selector": {"matchLabels": selector_labels(md.name)},
            # A new replica is up before an old one goes: no capacity dip during a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": template,
        },
    }
