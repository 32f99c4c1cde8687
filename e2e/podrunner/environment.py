"""A container's environment, resolved the way the kubelet does it.

``value`` (with ``$(VAR)`` expanded against the variables defined before it); ``valueFrom``
``fieldRef`` (the downward API: ``status.podIP``, ``metadata.name``, ``metadata.namespace``,
``metadata.uid``, labels, annotations, ``spec.nodeName``, ...), ``resourceFieldRef``,
``secretKeyRef`` and ``configMapKeyRef`` (read through the API); ``envFrom``. The runner's
own variables (the image PATH, ``HOSTNAME``, and the ``node_env`` a node would provide, such
as the e2e test's stand-in mirror address) lie beneath the pod's. Anything the runner cannot
resolve is a ``PodConfigError`` (the kubelet's ``CreateContainerConfigError``). Secrets and
ConfigMaps are read here for volumes too.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client

from modeldeploy.quantity import parse_quantity

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_REF = re.compile(r"metadata\.(labels|annotations)\['(.+)'\]")


class PodConfigError(Exception):
    """The pod cannot be started as specified (kubelet: CreateContainerConfigError)."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(one, value)


class ConfigSource:
    """The Secrets and ConfigMaps of one namespace, as key -> bytes."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace

    def secret(self, name: str, optional: bool) -> dict[str, bytes]:
        """A Secret's data (empty when it is missing and ``optional``)."""
        secret = self._read("secret", self.core.read_namespaced_secret, name, optional)
        if secret is None:
            return {}
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def config_map(self, name: str, optional: bool) -> dict[str, bytes]:
        """A ConfigMap's data and binaryData (empty when it is missing and ``optional``)."""
        found = self._read("configmap", self.core.read_namespaced_config_map, name, optional)
        if found is None:
            return {}
        data = {k: v.encode() for k, v in (found.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()})
        return data

    def _read(self, kind: str, read: Callable[[str, str], Any], name: str, optional: bool) -> Any:
        """The object ``read`` returns; None when it is missing and ``optional`` (the
        kubelet starts the container without it), else a PodConfigError."""
        try:
            return read(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404 and optional:
                return None
            raise PodConfigError(f"{kind} {name!r}: {error.reason}") from None


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """A downward-API ``fieldRef`` of the pod (``status.podIP``, a label, ...)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP", ""),
        "status.podIPs": status.get("podIP", ""),
        "status.hostIP": status.get("hostIP", ""),
        "status.hostIPs": status.get("hostIP", ""),
    }
    if path in simple:
        return str(simple[path])
    match = _LABEL_REF.fullmatch(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError(f"fieldRef {path} is not supported by the runner")


def resource_field(spec: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """A ``resourceFieldRef`` of the container (``limits.cpu`` ...), divided and rounded up."""
    kind, _, resource = str(ref["resource"]).partition(".")
    value = (spec.get("resources") or {}).get(kind, {}).get(resource)
    if value is None:
        raise PodConfigError(f"resourceFieldRef {ref['resource']}: not set on the container")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def container_env(
    spec: Mapping[str, Any],
    pod: Mapping[str, Any],
    sources: ConfigSource,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment: ``base`` (the runner's), then ``envFrom``, then ``env``."""
    env = dict(base)
    for source in spec.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = sources.config_map(ref["name"], bool(ref.get("optional")))
        else:
            ref = source["secretRef"]
            data = sources.secret(ref["name"], bool(ref.get("optional")))
        env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
    for variable in spec.get("env") or []:
        value = _env_value(spec, pod, sources, variable, env)
        if value is not None:
            env[variable["name"]] = value
    return env


def _env_value(
    spec: Mapping[str, Any],
    pod: Mapping[str, Any],
    sources: ConfigSource,
    variable: Mapping[str, Any],
    env: Mapping[str, str],
) -> str | None:
    if "valueFrom" not in variable:
        return expand(str(variable.get("value", "")), env)
    source = variable["valueFrom"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"])
    if "resourceFieldRef" in source:
        return resource_field(spec, source["resourceFieldRef"])
    ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
    if ref is None:
        raise PodConfigError(f"env {variable['name']}: unsupported valueFrom")
    optional = bool(ref.get("optional"))
    if "secretKeyRef" in source:
        data = sources.secret(ref["name"], optional)
    else:
        data = sources.config_map(ref["name"], optional)
    if ref["key"] in data:
        return data[ref["key"]].decode(errors="replace")
    if optional:
        return None
    raise PodConfigError(f"env {variable['name']}: key {ref['key']!r} not in {ref['name']!r}")
