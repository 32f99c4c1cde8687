"""What the gateway routes to and who may call it, read from the cluster.

This module owns two pure projections and the watches that keep them current:

- ``targets_from``: ModelDeployments and their pods -> one ``ModelTarget`` per OpenAI model
  name (the base's served name and each adapter's name), whose backends are the
  ModelDeployment's server pods that are Ready, not terminating and have an IP. Pods, not
  EndpointSlices: loopback pod IPs (the local cluster's) never appear in EndpointSlices.
- ``grants_from``: the API-key Secrets (label ``modeldeploy.io/gateway-api-key=true``) ->
  sha256 hex of each key -> ``Grant``; the key itself is never kept.
- ``Discovery``: lists, then watches from the list's resourceVersion, ModelDeployments,
  the operator's pods (``app.kubernetes.io/managed-by=modeldeploy``) and, when asked, the
  key Secrets, of one namespace or all (the Secrets of ``keys_namespace`` only, when it is
  given); it re-lists on 410 Gone and after errors (backoff
  bounded by ``BACKOFF_MAX_S``), and hands every changed projection to the
  ``RoutingTable`` and the ``KeyRing``. One thread per watch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kubernetes import client, watch

from modeldeploy.api import API_GROUP, API_VERSION, PLURAL
from modeldeploy.gateway.keys import Grant, KeyRing
from modeldeploy.gateway.routing import Affinity, Backend, ModelTarget, RoutingTable
from modeldeploy.render import (
    COMPONENT_SERVER,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    MANAGED_BY,
)
from modeldeploy.runtimes import PORT_NAME

log = logging.getLogger(__name__)

ANNOTATION_AFFINITY = "modeldeploy.io/gateway-affinity"
LABEL_API_KEY = "modeldeploy.io/gateway-api-key"
ANNOTATION_NAMESPACES = "modeldeploy.io/namespaces"
ANNOTATION_MODELS = "modeldeploy.io/models"
API_KEY_FIELD = "api-key"
POD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
SECRET_SELECTOR = f"{LABEL_API_KEY}=true"

WATCH_S = 240  # the API server ends each watch after this; it is resumed from its version
REQUEST_TIMEOUT_S = 30.0  # a list, or a watch's silence beyond WATCH_S
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0

Key = tuple[str, str]  # (namespace, name)


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> Key:
    meta = _meta(obj)
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = _dict(pod.get("status")).get("conditions") or []
    return any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in conditions
    )


def _pod_port(pod: Mapping[str, Any], default: int) -> int:
    for container in _dict(pod.get("spec")).get("containers") or []:
        for port in _dict(container).get("ports") or []:
            number = _dict(port).get("containerPort")
            if _dict(port).get("name") == PORT_NAME and isinstance(number, int):
                return number
    return default


def backends_of(
    name: str, namespace: str, pods: Iterable[Mapping[str, Any]], port: int
) -> tuple[Backend, ...]:
    """The Ready, not terminating server pods with an IP of one ModelDeployment, by name."""
    found = []
    for pod in pods:
        meta = _meta(pod)
        labels = _dict(meta.get("labels"))
        ip = _dict(pod.get("status")).get("podIP")
        if (
            str(meta.get("namespace") or "") == namespace
            and labels.get(LABEL_MODEL_DEPLOYMENT) == name
            and labels.get(LABEL_COMPONENT) == COMPONENT_SERVER
            and not meta.get("deletionTimestamp")
            and ip
            and _ready(pod)
        ):
            found.append(Backend(f"{namespace}/{meta.get('name')}", str(ip), _pod_port(pod, port)))
    return tuple(sorted(found, key=lambda backend: backend.name))


def served_names(md: Mapping[str, Any]) -> list[str]:
    """A ModelDeployment's OpenAI model names: the base's served name, then each adapter's."""
    spec = _dict(md.get("spec"))
    base = _dict(spec.get("model")).get("servedName") or _meta(md).get("name")
    adapters = [_dict(a).get("name") for a in spec.get("adapters") or []]
    return [str(name) for name in (base, *adapters) if name]


def affinity_of(md: Mapping[str, Any]) -> Affinity:
    """The routing the ``modeldeploy.io/gateway-affinity`` annotation asks for (default:
    least in-flight requests; an unknown value is the default)."""
    wanted = _dict(_meta(md).get("annotations")).get(ANNOTATION_AFFINITY)
    return "prefix" if str(wanted or "").strip().lower() == "prefix" else "least-inflight"


def scales_from_zero(md: Mapping[str, Any]) -> bool:
    """Whether autoscaling may take the ModelDeployment to zero replicas."""
    autoscaling = _dict(_dict(md.get("spec")).get("autoscaling"))
    return autoscaling.get("enabled") is True and autoscaling.get("minReplicas", 1) == 0


def targets_from(
    model_deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], port: int
) -> list[ModelTarget]:
    """One target per model name of every ModelDeployment, sorted by name.

    A name two ModelDeployments claim goes to the older one (then by namespace and name),
    so the table does not flip between them. ``port`` is the backends' port when a pod
    names no ``http`` container port.
    """
    by_owner: dict[Key, list[Mapping[str, Any]]] = {}
    for pod in pods:
        owner = _dict(_meta(pod).get("labels")).get(LABEL_MODEL_DEPLOYMENT)
        if owner:
            by_owner.setdefault((_key(pod)[0], str(owner)), []).append(pod)
    oldest_first = sorted(
        model_deployments,
        key=lambda md: (str(_meta(md).get("creationTimestamp") or ""), *_key(md)),
    )
    targets: dict[str, ModelTarget] = {}
    for md in oldest_first:
        namespace, name = _key(md)
        if not name:
            continue
        backends = backends_of(name, namespace, by_owner.get((namespace, name), ()), port)
        for model in served_names(md):
            targets.setdefault(
                model,
                ModelTarget(
                    model=model,
                    namespace=namespace,
                    deployment=name,
                    backends=backends,
                    affinity=affinity_of(md),
                    scale_from_zero=scales_from_zero(md),
                ),
            )
    return [targets[model] for model in sorted(targets)]


def _names(text: Any) -> frozenset[str]:
    return frozenset(part.strip() for part in str(text or "").split(",") if part.strip())


def grant_of(secret: Mapping[str, Any]) -> tuple[str, Grant] | None:
    """The sha256 hex of a key Secret's ``api-key`` and what it grants; None when the
    Secret is not labelled as a key or holds no usable key. Trailing whitespace (a file's
    newline) is not part of the key."""
    meta = _meta(secret)
    if _dict(meta.get("labels")).get(LABEL_API_KEY) != "true":
        return None
    encoded = _dict(secret.get("data")).get(API_KEY_FIELD)
    if not isinstance(encoded, str):
        return None
    try:
        key = base64.b64decode(encoded, validate=True).rstrip()
    except (binascii.Error, ValueError):
        return None
    if not key:
        return None
    annotations = _dict(meta.get("annotations"))
    namespace, name = _key(secret)
    grant = Grant(
        name=f"{namespace}/{name}",
        namespaces=_names(annotations.get(ANNOTATION_NAMESPACES)),
        models=_names(annotations.get(ANNOTATION_MODELS)),
    )
    return hashlib.sha256(key).hexdigest(), grant


def merge_grants(entries: Iterable[tuple[str, Grant]]) -> dict[str, Grant]:
    """One grant per key: of Secrets holding the same key, the first by namespace/name."""
    merged: dict[str, Grant] = {}
    for digest, grant in sorted(entries, key=lambda entry: entry[1].name):
        merged.setdefault(digest, grant)
    return merged


def grants_from(secrets: Sequence[Mapping[str, Any]]) -> dict[str, Grant]:
    """sha256 hex of each key -> its grant, from the key Secrets (others are ignored)."""
    return merge_grants(entry for secret in secrets if (entry := grant_of(secret)))


class _Watched:
    """One kind of object: how to list (and so watch) it, and the projection it keeps."""

    def __init__(
        self,
        kind: str,
        call: Callable[..., Any],
        args: tuple[str, ...],
        selector: str | None,
        project: Callable[[Mapping[str, Any]], Any],
    ) -> None:
        self.kind, self.call, self.args, self.selector = kind, call, args, selector
        self.project = project
        self.items: dict[Key, Any] = {}
        self.synced = False

    def options(self) -> dict[str, Any]:
        """The list's (and watch's) selector."""
        return {"label_selector": self.selector} if self.selector else {}

    def put(self, obj: Mapping[str, Any]) -> None:
        """Keep an added or changed object's projection (drop it when there is none)."""
        projected = self.project(obj)
        if projected is None:
            self.items.pop(_key(obj), None)
        else:
            self.items[_key(obj)] = projected


class Discovery:
    """Keeps a ``RoutingTable`` (and a ``KeyRing``) current from watches of the cluster."""

    def __init__(
        self,
        api: client.ApiClient,
        table: RoutingTable,
        keys: KeyRing | None = None,
        *,
        namespace: str | None = None,
        keys_namespace: str | None = None,
        port: int = 8000,
    ) -> None:
        """``namespace``: route to that namespace only (None: all). ``keys_namespace``:
        read the key Secrets there only (None: those of ``namespace``)."""
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.table, self.keys, self.port = table, keys, port
        mds = (API_GROUP, API_VERSION, *([namespace] if namespace else []), PLURAL)
        self.sources = [
            _Watched(
                "ModelDeployment",
                custom.list_namespaced_custom_object if namespace
                else custom.list_cluster_custom_object,
                tuple(mds), None, dict,
            ),
            _Watched(
                "Pod",
                core.list_namespaced_pod if namespace else core.list_pod_for_all_namespaces,
                (namespace,) if namespace else (), POD_SELECTOR, dict,
            ),
        ]  # fmt: skip
        if keys is not None:
            secrets_in = keys_namespace or namespace
            self.sources.append(
                _Watched(
                    "Secret",
                    core.list_namespaced_secret if secrets_in
                    else core.list_secret_for_all_namespaces,
                    (secrets_in,) if secrets_in else (), SECRET_SELECTOR, grant_of,
                )
            )  # fmt: skip
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._watches: set[watch.Watch] = set()
        self._threads: list[threading.Thread] = []
        self._targets: list[ModelTarget] | None = None
        self._grants: dict[str, Grant] | None = None

    def start(self) -> Discovery:
        """Start one thread per watched kind."""
        for source in self.sources:
            thread = threading.Thread(
                target=self._run, args=(source,), name=f"discovery-{source.kind}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def wait_ready(self, timeout: float) -> bool:
        """Whether every kind was listed once within ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the watches and wait (bounded) for their threads."""
        self._stopped.set()
        with self._lock:
            watches = list(self._watches)
        for stream in watches:
            stream.stop()
        for thread in self._threads:
            thread.join(timeout)

    def _run(self, source: _Watched) -> None:
        delay = BACKOFF_MIN_S
        while not self._stopped.is_set():
            try:
                version = self._list(source)
                delay = BACKOFF_MIN_S
                self._watch(source, version)
            except client.ApiException as error:
                if error.status == 410:  # the version is gone: list again, at once
                    log.info("the %s watch expired; listing again", source.kind)
                    continue
                log.warning("listing or watching %ss failed: %s", source.kind, error.reason)
                self._stopped.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
            except Exception as error:  # the connection, or an unreadable answer
                if self._stopped.is_set():
                    return
                log.warning("listing or watching %ss failed: %s", source.kind, error)
                self._stopped.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    def _list(self, source: _Watched) -> str:
        response = source.call(
            *source.args, **source.options(),
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S,
        )  # fmt: skip
        body = json.loads(response.data)
        with self._lock:
            source.items.clear()
            for item in body.get("items") or []:
                source.put(item)
            source.synced = True
            self._publish()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, source: _Watched, version: str) -> None:
        while True:
            stream = watch.Watch(return_type="object")  # events as plain dicts
            with self._lock:  # stop() sets the event, then stops the streams it finds
                if self._stopped.is_set():
                    return
                self._watches.add(stream)
            try:
                for event in stream.stream(
                    source.call, *source.args, **source.options(),
                    resource_version=version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_S, _request_timeout=WATCH_S + REQUEST_TIMEOUT_S,
                ):  # fmt: skip
                    if self._stopped.is_set():
                        return
                    if isinstance(event, dict) and event.get("type") != "BOOKMARK":
                        self._apply(source, event)
            finally:
                with self._lock:
                    self._watches.discard(stream)
            version = stream.resource_version or version

    def _apply(self, source: _Watched, event: Mapping[str, Any]) -> None:
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            return
        with self._lock:
            if event.get("type") == "DELETED":
                source.items.pop(_key(obj), None)
            else:
                source.put(obj)
            self._publish()

    def _publish(self) -> None:
        """Hand changed projections on; called under the lock. The table waits for the
        first list of ModelDeployments and of pods, so no target shows without pods."""
        mds, pods, *secrets = self.sources
        if mds.synced and pods.synced:
            targets = targets_from(list(mds.items.values()), list(pods.items.values()), self.port)
            if targets != self._targets:
                self.table.replace(targets)
                self._targets = targets
        if self.keys is not None and secrets and secrets[0].synced:
            grants = merge_grants(secrets[0].items.values())
            if grants != self._grants:
                self.keys.replace(grants)
                self._grants = grants
        if all(source.synced for source in self.sources):
            self._ready.set()
