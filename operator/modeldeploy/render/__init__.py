"""Rendering: (ModelDeployment, Placement, config) -> the Kubernetes objects to apply.

This package owns the exact shape of every child object: the model-cache
PersistentVolumeClaim (when ``cache.enabled``), the Deployment running the engine, and the
Service in front of it, as plain dicts in that order (apply order). Every child carries
the labels of DESIGN.md §1 and, when the ModelDeployment's uid is known, a controller
ownerReference to it. Pods meet the ``restricted`` Pod Security Standard. The pod
template's hash is recorded in ``modeldeploy.io/spec-hash`` on the Deployment and the pods.

Pure and deterministic: the same inputs give the same objects, byte for byte once
serialised.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from modeldeploy.api import GROUP_VERSION, KIND, ModelDeployment
from modeldeploy.catalog import Accelerator, Engine
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.artifact import Resolution
from modeldeploy.fetch.podspec import fetch_init_container
from modeldeploy.hardware import Placement
from modeldeploy.runtimes import (
    METRICS_PATH,
    PORT_NAME,
    launcher_command,
    merge_env,
    model_env,
    probes,
    startup_seconds,
)
from modeldeploy.runtimes import llamacpp as llamacpp_runtime
from modeldeploy.runtimes import vllm as vllm_runtime
from modeldeploy.sizing import GIB

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MODEL_DEPLOYMENT = "modeldeploy.io/model-deployment"
ANNOTATION_SPEC_HASH = "modeldeploy.io/spec-hash"
MANAGED_BY = "modeldeploy"
COMPONENT_SERVER = "server"
COMPONENT_CACHE = "model-cache"
RUN_AS_USER = 65532  # the "nonroot" user of distroless images; our runtime images use it
CACHE_VOLUME = "model-cache"
SHM_BYTES_PER_GPU = 2 * GIB


def labels(name: str, component: str, engine: str) -> dict[str, str]:
    """The labels of every child object (DESIGN.md §1)."""
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


def render_objects(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> list[dict[str, Any]]:
    """The children of a ModelDeployment: shared cache PVC (if any), Deployment, Service.

    ``resolution`` (the operator's resolution of ``spec.model``) pins the revision the init
    container fetches and the engine serves, and sizes the cache from the real files.
    """
    objects: list[dict[str, Any]] = []
    if shared_cache(md):
        objects.append(render_cache_claim(md, placement, config, resolution))
    objects.append(render_deployment(md, placement, config, resolution))
    objects.append(render_service(md, placement, config))
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


def _metadata(md: ModelDeployment, name: str, component: str, engine: str) -> dict[str, Any]:
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


def cache_size_bytes(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> int:
    """``cache.size: auto``: the resolved files (else the estimated weights) plus headroom,
    in whole GiB, at least ``min_cache_bytes`` (the reconcile never shrinks a claim)."""
    payload = resolution.total_bytes if resolution else placement.memory.weights_bytes
    wanted = max(config.min_cache_bytes, payload * config.cache_headroom)
    return math.ceil(wanted / GIB) * GIB


def _cache_size(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None,
) -> str:
    size = md.spec.cache.size
    if size != "auto":
        return size
    return f"{cache_size_bytes(md, placement, config, resolution) // GIB}Gi"


def _claim_spec(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None,
) -> dict[str, Any]:
    cache = md.spec.cache
    spec: dict[str, Any] = {
        "accessModes": [cache.access_mode],
        "resources": {"requests": {"storage": _cache_size(md, placement, config, resolution)}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return spec


def render_cache_claim(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """The PersistentVolumeClaim the replicas share as model cache."""
    spec = _claim_spec(md, placement, config, resolution)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(
            md, cache_claim_name(md.name), COMPONENT_CACHE, str(placement.engine)
        ),
        "spec": spec,
    }


def render_service(
    md: ModelDeployment, placement: Placement, config: OperatorConfig
) -> dict[str, Any]:
    """The Service in front of the replicas (``http://NAME.NAMESPACE.svc:PORT/v1``)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, md.name, COMPONENT_SERVER, str(placement.engine)),
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


def render_container(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """The engine container: launcher command, engine flags, env, port, probes, limits."""
    engine = str(placement.engine)
    runtime = vllm_runtime if placement.engine is Engine.VLLM else llamacpp_runtime
    user_env = [variable.model_dump() for variable in md.spec.serving.env]
    revision = resolution.revision if resolution else None
    ours = model_env(md, placement, config, revision) + runtime.engine_env()
    env = merge_env(ours, user_env)
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": CACHE_VOLUME, "mountPath": config.cache_mount_path},
    ]
    if placement.engine is Engine.VLLM:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return {
        "name": engine,
        "image": config.image_for(engine, gpu=placement.accelerator is Accelerator.GPU),
        "imagePullPolicy": config.image_pull_policy,
        "command": launcher_command(engine),
        "args": runtime.engine_args(placement, md.served_name, list(md.spec.serving.args), config),
        "env": env,
        "ports": [{"name": PORT_NAME, "containerPort": config.port, "protocol": "TCP"}],
        "resources": {"requests": dict(placement.requests), "limits": dict(placement.limits)},
        **probes(placement),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": mounts,
    }


def _fetch_init(
    md: ModelDeployment, config: OperatorConfig, resolution: Resolution | None
) -> tuple[dict[str, Any], list[Any]]:
    """The artifact fetcher (DESIGN.md §5) and the volumes it adds: it downloads and
    verifies the model (the resolved revision when known) into the cache volume before the
    engine starts."""
    return fetch_init_container(
        md.spec.model,
        image=config.operator_image,
        cache_mount_path=config.cache_mount_path,
        cache_volume=CACHE_VOLUME,
        revision=resolution.revision if resolution else md.spec.model.revision,
        settings=dict(config.source_settings),
        image_pull_policy=config.image_pull_policy,
    )


def _cache_volume(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None,
) -> dict[str, Any]:
    if shared_cache(md):
        claim = {"claimName": cache_claim_name(md.name)}
        return {"name": CACHE_VOLUME, "persistentVolumeClaim": claim}
    if md.spec.cache.enabled:
        # One claim per pod, named POD-model-cache by the ephemeral volume controller.
        template = {
            "metadata": {"labels": labels(md.name, COMPONENT_CACHE, str(placement.engine))},
            "spec": _claim_spec(md, placement, config, resolution),
        }
        return {"name": CACHE_VOLUME, "ephemeral": {"volumeClaimTemplate": template}}
    size = cache_size_bytes(md, placement, config, resolution) // GIB
    return {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": f"{size}Gi"}}


def _volumes(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None,
    fetch_volumes: list[dict[str, Any]],
) -> list[Any]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    volumes.append(_cache_volume(md, placement, config, resolution))
    volumes.extend(fetch_volumes)
    if placement.engine is Engine.VLLM:
        # NCCL and vLLM's worker queues use /dev/shm; the default 64 MiB is far too small.
        shm = SHM_BYTES_PER_GPU * max(1, placement.gpus_per_replica) // GIB
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm}Gi"}})
    return volumes


def render_pod_template(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """The pod template, without its hash annotation."""
    engine = str(placement.engine)
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # Service links would inject e.g. VLLM_PORT=tcp://... for a Service named "vllm".
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": config.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
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
    fetch, fetch_volumes = _fetch_init(md, config, resolution)
    spec["initContainers"] = [fetch]
    spec["containers"] = [render_container(md, placement, config, resolution)]
    spec["volumes"] = _volumes(md, placement, config, resolution, fetch_volumes)
    return {
        "metadata": {
            "labels": labels(md.name, COMPONENT_SERVER, engine),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(config.port),
                "prometheus.io/path": METRICS_PATH,
            },
        },
        "spec": spec,
    }


def render_deployment(
    md: ModelDeployment,
    placement: Placement,
    config: OperatorConfig,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """The Deployment of the engine, with the pod template's hash for rollouts."""
    template = render_pod_template(md, placement, config, resolution)
    digest = spec_hash(template)
    template["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = digest
    metadata = _metadata(md, md.name, COMPONENT_SERVER, str(placement.engine))
    metadata["annotations"] = {ANNOTATION_SPEC_HASH: digest}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": md.spec.replicas,
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
