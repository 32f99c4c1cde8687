"""The operator's only writer: server-side apply, prune, status, Events, finalizers.

Every write the operator makes goes through ``Writer``: children and the ModelDeployment
status are server-side applied with the one field manager ``modeldeploy`` (force, so a
field someone else edited is taken back), children it no longer renders are deleted,
Events are posted for decisions and failures, and finalizers an earlier operator left
are released. Whether a child needs a write at all is decided, without a call, by
``drift.needs_apply``.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from modeldeploy.api import API_GROUP, API_VERSION, KIND, PLURAL
from modeldeploy.metrics import API_WRITES
from modeldeploy.reconcile import KindNotServed

FIELD_MANAGER = "modeldeploy"
# Custom kinds the operator writes: (group, version, plural).
_CUSTOM_KINDS = {"ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects")}
REPORTING_CONTROLLER = "modeldeploy.io/operator"
log = logging.getLogger(__name__)


def _raw_json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


class Writer:
    """Writes to the API server on behalf of the operator, counting every call."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        apps = client.AppsV1Api(api)
        autoscaling = client.AutoscalingV2Api(api)
        networking = client.NetworkingV1Api(api)
        # The (patch, delete) methods of the typed client for each child kind.
        self._methods: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Deployment": (apps.patch_namespaced_deployment, apps.delete_namespaced_deployment),
            "Service": (self.core.patch_namespaced_service, self.core.delete_namespaced_service),
            # The ML-BOM (render/bom.py).
            "ConfigMap": (
                self.core.patch_namespaced_config_map,
                self.core.delete_namespaced_config_map,
            ),
            "PersistentVolumeClaim": (
                self.core.patch_namespaced_persistent_volume_claim,
                self.core.delete_namespaced_persistent_volume_claim,
            ),
            "HorizontalPodAutoscaler": (
                autoscaling.patch_namespaced_horizontal_pod_autoscaler,
                autoscaling.delete_namespaced_horizontal_pod_autoscaler,
            ),
            "ScaledObject": (self._patch_scaled_object, self._delete_scaled_object),
            # Ingress only from the gateway and the operator (render/network_policy.py).
            "NetworkPolicy": (
                networking.patch_namespaced_network_policy,
                networking.delete_namespaced_network_policy,
            ),
        }

    def _kind(self, kind: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if kind not in self._methods:
            raise ValueError(f"the operator does not write objects of kind {kind}")
        return self._methods[kind]

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply one namespaced child object; return what the server stored."""
        patch, _ = self._kind(obj["kind"])
        meta = obj["metadata"]
        API_WRITES.labels(verb="apply", kind=obj["kind"]).inc()
        try:
            response = patch(
                meta["name"],
                meta["namespace"],
                dict(obj),
                field_manager=FIELD_MANAGER,
                force=True,
                _content_type="application/apply-patch+yaml",
                _preload_content=False,
            )
        except client.ApiException as error:
            # A custom kind whose CRD is not installed: the API server has no such path.
            if error.status == 404 and obj["kind"] in _CUSTOM_KINDS:
                raise KindNotServed(obj["kind"], obj["apiVersion"]) from None
            raise
        return _raw_json(response)

    def _patch_scaled_object(self, name: str, namespace: str, body: Any, **kwargs: Any) -> Any:
        group, version, plural = _CUSTOM_KINDS["ScaledObject"]
        return self.custom.patch_namespaced_custom_object(
            group, version, namespace, plural, name, body, **kwargs
        )

    def _delete_scaled_object(self, name: str, namespace: str, **kwargs: Any) -> Any:
        group, version, plural = _CUSTOM_KINDS["ScaledObject"]
        return self.custom.delete_namespaced_custom_object(
            group, version, namespace, plural, name, **kwargs
        )

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a child the operator no longer renders (only the exact object seen)."""
        _, delete = self._kind(kind)
        API_WRITES.labels(verb="delete", kind=kind).inc()
        preconditions = {"uid": uid} if uid else None
        try:
            _release(
                delete(
                    name,
                    namespace,
                    body={"preconditions": preconditions, "propagationPolicy": "Background"},
                    _preload_content=False,
                )
            )
        except client.ApiException as error:
            if error.status != 404:  # already gone is what we wanted
                raise

    def apply_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Server-side apply the status subresource of a ModelDeployment."""
        API_WRITES.labels(verb="apply", kind=f"{KIND}/status").inc()
        body = {
            "apiVersion": f"{API_GROUP}/{API_VERSION}",
            "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": dict(status),
        }
        response = self.custom.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
        )
        _release(response)

    def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str | None
    ) -> None:
        """Replace a ModelDeployment's finalizers: a merge patch on the version it was read at."""
        API_WRITES.labels(verb="patch", kind=KIND).inc()
        metadata: dict[str, Any] = {"finalizers": list(finalizers)}
        if resource_version:
            metadata["resourceVersion"] = resource_version  # 409 if it changed since
        try:
            response = self.custom.patch_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                namespace,
                PLURAL,
                name,
                {"metadata": metadata},
                field_manager=FIELD_MANAGER,
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
            _release(response)
        except client.ApiException as error:
            if error.status != 404:  # gone already: nothing left to release
                raise

    def event(
        self, md: Mapping[str, Any], event_type: str, reason: str, message: str, action: str
    ) -> None:
        """Post a core/v1 Event about a ModelDeployment (shown by kubectl describe)."""
        meta = md["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        API_WRITES.labels(verb="create", kind="Event").inc()
        response = self.core.create_namespaced_event(
            meta["namespace"],
            {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": f"{API_GROUP}/{API_VERSION}",
                    "kind": KIND,
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": event_type,
                "reason": reason,
                "message": message[:1024],
                "action": action,
                "source": {"component": FIELD_MANAGER},
                "reportingComponent": REPORTING_CONTROLLER,
                "reportingInstance": REPORTING_CONTROLLER,
                "firstTimestamp": now.isoformat(),
                "lastTimestamp": now.isoformat(),
                "eventTime": now.isoformat(timespec="microseconds"),
                "count": 1,
            },
            _preload_content=False,
        )
        _release(response)


def _release(response: Any) -> None:
    """Read an unread response to its end and hand its connection back to the pool.

    With ``_preload_content=False`` urllib3 keeps the connection until the body is read;
    a response left unread makes the next request open (and TLS-handshake) a new one.
    """
    response.drain_conn()
    response.release_conn()
