"""How a pod's volumes map to host directories, and container paths onto them.

* ``emptyDir``: a per-pod directory, removed with the pod. ``persistentVolumeClaim``: the
  bound PV's ``hostPath`` (the stand-in provisioner makes one under the cluster's
  ``volumes/``). ``hostPath``: itself. ``secret`` and ``configMap``: their keys written as
  files. Other volume types refuse the pod (``CreateContainerConfigError``).
* A process cannot be given its own root, so the runner rewrites paths instead: every
  argument and environment value that *is* a ``mountPath`` or starts with ``mountPath/``
  (also the ``VALUE`` of ``--flag=VALUE``) has that prefix replaced by the volume's host
  directory (``subPath`` honoured), longest mount first; the container's
  ``terminationMessagePath`` (``/dev/termination-log``) becomes a per-container file.
  Limitation: paths inside other strings (a comma list, a config file, JSON) and paths the
  program derives itself (``/etc/...``, the image's own files) are not rewritten, and
  ``readOnly`` is not enforced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e.podrunner.environment import ConfigSource, PodConfigError

Mounts = Sequence[tuple[str, Path]]  # (container path, host path)


def rewrite_path(value: str, mounts: Mounts) -> str:
    """Map a container path (or ``--flag=PATH``) onto the host through ``mounts``."""
    flag, equals, rest = value.partition("=")
    if equals and flag.startswith("-") and rest.startswith("/"):
        return f"{flag}={rewrite_path(rest, mounts)}"
    for container_path, host in sorted(mounts, key=lambda m: len(m[0]), reverse=True):
        prefix = container_path.rstrip("/")
        if value in (container_path, prefix):
            return str(host)
        if prefix and value.startswith(prefix + "/"):
            return str(host) + value[len(prefix) :]
    return value


def rewrite_env(env: Mapping[str, str], mounts: Mounts, host: Mapping[str, str]) -> dict[str, str]:
    """``env`` with container paths mapped onto the host, except the runner's own values."""
    # Only the pod's own values are container paths; what the runner supplies (the image
    # PATH, node env) are host paths already, and the checkout may itself live under a
    # mountPath such as /tmp.
    return {k: v if host.get(k) == v else rewrite_path(v, mounts) for k, v in env.items()}


def make_volumes(
    pod: Mapping[str, Any], pod_dir: Path, core: client.CoreV1Api, sources: ConfigSource
) -> dict[str, Path]:
    """Every volume of the pod as a host directory (created or looked up), by name."""
    namespace = pod["metadata"]["namespace"]
    volumes: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            volumes[name] = local
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            volumes[name] = claim_path(core, namespace, claim)
        elif "hostPath" in volume:
            volumes[name] = Path(volume["hostPath"]["path"])
        elif "secret" in volume:
            source = volume["secret"]
            data = sources.secret(source["secretName"], bool(source.get("optional")))
            volumes[name] = write_items(local, data, source.get("items"))
        elif "configMap" in volume:
            source = volume["configMap"]
            data = sources.config_map(source["name"], bool(source.get("optional")))
            volumes[name] = write_items(local, data, source.get("items"))
        else:
            kinds = ", ".join(k for k in volume if k != "name")
            raise PodConfigError(f"volume {name}: {kinds} is not supported by the runner")
    return volumes


def claim_path(core: client.CoreV1Api, namespace: str, claim_name: str) -> Path:
    """The host directory of the PersistentVolume bound to a claim."""
    try:
        claim = core.read_namespaced_persistent_volume_claim(claim_name, namespace)
    except client.ApiException as error:
        raise PodConfigError(f"claim {claim_name}: {error.reason}") from None
    if not claim.spec.volume_name:
        raise PodConfigError(f"claim {claim_name} is not bound")
    volume = core.read_persistent_volume(claim.spec.volume_name)
    source = volume.spec.host_path or volume.spec.local
    if source is None:
        raise PodConfigError(f"volume {volume.metadata.name} has no local path")
    return Path(source.path)


def write_items(
    directory: Path, data: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None
) -> Path:
    """A Secret's or ConfigMap's keys as files (all keys, or ``items`` key -> path)."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, relative in wanted:
        if key not in data:
            continue
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[key])
        target.chmod(0o600)
    return directory


def container_mounts(
    spec: Mapping[str, Any], volumes: Mapping[str, Path], termination: Path
) -> list[tuple[str, Path]]:
    """The container's (mountPath, host dir) pairs, its termination message file included."""
    mounts = []
    for mount in spec.get("volumeMounts") or []:
        host = volumes.get(mount["name"])
        if host is None:
            raise PodConfigError(f"container {spec['name']}: no volume {mount['name']}")
        if mount.get("subPath"):
            host = host / mount["subPath"]
            host.mkdir(parents=True, exist_ok=True)
        mounts.append((str(mount["mountPath"]), host))
    message = spec.get("terminationMessagePath") or "/dev/termination-log"
    mounts.append((message, termination))
    return mounts
