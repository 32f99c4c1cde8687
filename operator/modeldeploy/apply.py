"""The operator's only writer: server-side apply, prune, status and Events.

Every write the operator makes goes through ``Writer``: children and the ModelDeployment
status are server-side applied with the one field manager ``modeldeploy`` (force, so a
field someone else edited is taken back), children it no longer renders are deleted, and
Events are posted for decisions and failures. ``needs_apply`` decides, without a call,
whether the live object already holds everything the operator renders, so an unchanged
world costs no write at all (a no-op apply is still a PATCH request).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

from kubernetes import client

from modeldeploy.api import API_GROUP, API_VERSION, KIND, PLURAL
from modeldeploy.hardware import parse_quantity
from modeldeploy.metrics import API_WRITES

FIELD_MANAGER = "modeldeploy"
REPORTING_CONTROLLER = "modeldeploy.io/operator"
log = logging.getLogger(__name__)

# Keys that identify the elements of Kubernetes' associative lists ("listType: map"),
# so that elements others add (an injected sidecar, a second ownerReference) are ignored.
_LIST_KEYS = ("uid", "name", "containerPort", "port", "mountPath", "devicePath", "key")


def _matches(desired: Any, live: Any) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            _matches(value, live.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if len(desired) == len(live):
            return all(_matches(d, item) for d, item in zip(desired, live, strict=True))
        return _keyed_subset(desired, live)
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        return _same_quantity(desired, live)
    return bool(desired == live)


def _keyed_subset(desired: list[Any], live: list[Any]) -> bool:
    if not all(isinstance(d, Mapping) for d in desired):
        return False
    key = next((k for k in _LIST_KEYS if all(k in d for d in desired)), None)
    if key is None:
        return False
    by_key = {item.get(key): item for item in live if isinstance(item, Mapping)}
    return all(_matches(d, by_key.get(d[key])) for d in desired)


def _same_quantity(a: str, b: str) -> bool:
    # The API server stores resource quantities in canonical form ("1024Mi" -> "1Gi").
    try:
        return Fraction(parse_quantity(a)) == Fraction(parse_quantity(b))
    except ValueError:
        return False


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """True unless ``live`` already holds every field of ``desired`` with the same value."""
    return live is None or not _matches(desired, live)


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
        # The (patch, delete) methods of the typed client for each child kind.
        self._methods: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
            "Deployment": (apps.patch_namespaced_deployment, apps.delete_namespaced_deployment),
            "Service": (self.core.patch_namespaced_service, self.core.delete_namespaced_service),
            "PersistentVolumeClaim": (
                self.core.patch_namespaced_persistent_volume_claim,
                self.core.delete_namespaced_persistent_volume_claim,
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
        response = patch(
            meta["name"],
            meta["namespace"],
            dict(obj),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
            _preload_content=False,
        )
        return _raw_json(response)

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete a child the operator no longer renders (only the exact object seen)."""
        _, delete = self._kind(kind)
        API_WRITES.labels(verb="delete", kind=kind).inc()
        preconditions = {"uid": uid} if uid else None
        try:
            delete(
                name,
                namespace,
                body={"preconditions": preconditions, "propagationPolicy": "Background"},
                _preload_content=False,
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
        self.custom.patch_namespaced_custom_object_status(
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

    def event(
        self, md: Mapping[str, Any], event_type: str, reason: str, message: str, action: str
    ) -> None:
        """Post a core/v1 Event about a ModelDeployment (shown by kubectl describe)."""
        meta = md["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        API_WRITES.labels(verb="create", kind="Event").inc()
        self.core.create_namespaced_event(
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
