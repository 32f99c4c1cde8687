"""A test-side pod runner: the kubelet's part, on this machine, for our pods on kwok nodes.

kwok simulates nodes and gives pods IPs in 127.1.0.0/16, but runs nothing. ``PodRunner``
watches pods bound to simulated nodes (label ``type=kwok``) whose image is one of ours
(the repositories of ``OperatorConfig``: ``ghcr.io/modeldeploy/*``) and runs them here as
local processes: the init containers in order, each to completion, then the containers.
Nothing in the operator knows it exists; it is a stand-in for a kubelet plus a container
runtime, and behaves like one where that is cheap:

* **Entrypoint.** A container runs ``command`` + ``args`` (``$(VAR)`` expanded as Kubernetes
  does). Our images declare no entrypoint of their own; the renderer always sets
  ``command``. The executable is looked up on the "image PATH": the project venv's ``bin/``
  (so ``modeldeploy`` is ``.venv/bin/modeldeploy``) and the directory of the pinned
  ``llama-server`` build, then ``/usr/local/bin:/usr/bin:/bin``. Each process starts in its
  own session with a fresh environment (no host variables leak in), in a per-pod directory.
* **Environment.** ``value``; ``valueFrom`` ``fieldRef`` (``status.podIP``, ``metadata.name``,
  ``metadata.namespace``, ``metadata.uid``, labels, annotations, ``spec.nodeName``, ...),
  ``resourceFieldRef``, ``secretKeyRef`` and ``configMapKeyRef`` read through the API;
  ``envFrom``. ``node_env`` adds variables beneath the pod's own, for what a node would
  provide (the e2e test's stand-in mirror address, ``MODELDEPLOY_PLAIN_HTTP_HOSTS``).
* **Volumes.** ``emptyDir``: a per-pod directory, removed with the pod.
  ``persistentVolumeClaim``: the bound PV's ``hostPath`` (the stand-in provisioner makes one
  under the cluster's ``volumes/``). ``hostPath``: itself. ``secret`` and ``configMap``: their
  keys written as files. Other volume types refuse the pod (``CreateContainerConfigError``).
* **Paths.** A process cannot be given its own root, so the runner rewrites paths instead:
  every argument and environment value that *is* a ``mountPath`` or starts with
  ``mountPath/`` (also the ``VALUE`` of ``--flag=VALUE``) has that prefix replaced by the
  volume's host directory (``subPath`` honoured), longest mount first; the container's
  ``terminationMessagePath`` (``/dev/termination-log``) becomes a per-container file.
  Limitation: paths inside other strings (a comma list, a config file, JSON) and paths the
  program derives itself (``/etc/...``, the image's own files) are not rewritten, and
  ``readOnly``, ``securityContext``, resource limits, ``/dev/shm`` sizes and lifecycle hooks
  are not enforced.
* **Network.** Processes share this machine's network; they bind the pod IP because the
  rendered container passes ``--host`` from ``POD_IP`` (downward API), which kwok hands out
  from 127.1.0.0/16. Nothing isolates ports otherwise.
* **Status.** After kwok's "fast" pod-ready stage (it marks a bound pod Running and Ready at
  once, with its IP), the runner owns the pod's status the way a kubelet does: ``Ready``,
  ``ContainersReady`` and ``Initialized`` conditions, and ``initContainerStatuses`` /
  ``containerStatuses`` with running/terminated/waiting states, exit codes, termination
  messages, restart counts and ``CrashLoopBackOff`` back-off (10 s doubling to 5 min, as the
  kubelet does for ``restartPolicy: Always``). A container is ready once its
  ``readinessProbe`` (``httpGet`` or ``tcpSocket`` against the pod IP, tried every second
  until the first success, then every ``periodSeconds``) passes; without one, once it runs.
  So a ModelDeployment's ``Ready`` follows the engine's real ``/health``, after one flap:
  kwok's immediate Ready precedes the runner's first report. The phase stays ``Running``
  (setting ``Pending`` would make kwok's stage mark it Ready again). Exit codes are also
  logged, and each container's output goes to ``<workdir>/logs/pods/NS_POD_CONTAINER.log``.
* **Stop.** When the pod is deleted (kwok's pod-delete stage removes it at once), its
  processes get SIGTERM (process group), then SIGKILL once the pod's grace period is over;
  they also get SIGTERM if the runner itself dies (``PR_SET_PDEATHSIG``).

**Stand-in fetch.** Until the operator renders the fetch init container, a pod whose engine
container is ``modeldeploy serve-runtime`` and that has no init containers gets the one
``modeldeploy.fetch.podspec.fetch_init_container`` builds from its ModelDeployment's
``spec.model`` (read through the API; the only thing here that knows our CRD), run exactly
like a rendered init container and reported in the engine container's waiting state. It is
the shape the operator should render; once it does, the stand-in steps aside.

    python -m e2e.podrunner --workdir .cluster --namespace demo --mirror FILE
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
from kubernetes import client, config, watch

from e2e.cluster.local import KWOK_NODE_SELECTOR, REPO
from modeldeploy.api import GROUP_VERSION, parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.podspec import INIT_CONTAINER, fetch_init_container
from modeldeploy.hardware import parse_quantity
from modeldeploy.render import LABEL_MODEL_DEPLOYMENT

log = logging.getLogger("e2e.podrunner")

STATE_FILE = "podrunner.json"
PID_FILE = "podrunner.pid"
DEFAULT_GRACE_S = 30.0
BACKOFF_START_S = 10.0
BACKOFF_MAX_S = 300.0
BACKOFF_RESET_S = 600.0  # a container that ran this long restarts without back-off
TICK_S = 0.5
WATCH_TIMEOUT_S = 10
TERMINATION_MESSAGE_BYTES = 4096
FALLBACK_LOG_LINES = 80
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
STAND_IN_FETCH = INIT_CONTAINER

_PR_SET_PDEATHSIG = 1
# Resolved once, before any fork: the child only calls it (no dlopen/dlsym after fork).
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodConfigError(Exception):
    """The pod cannot be started as specified (kubelet: CreateContainerConfigError)."""


def _die_with_parent() -> None:
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what the runner runs ------------------------------------------------------------------


def image_repository(image: str) -> str:
    """``registry/name`` of an image reference, without tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def our_repositories(operator_config: OperatorConfig | None = None) -> frozenset[str]:
    """The image repositories of the operator's config (runtimes, operator/fetcher)."""
    cfg = operator_config or OperatorConfig()
    images = [getattr(cfg, f.name) for f in fields(cfg) if f.name.endswith("_image")]
    return frozenset(image_repository(str(image)) for image in images)


def llama_server_dir() -> Path | None:
    """The directory of the pinned llama-server build, or None when it is not built."""
    from e2e.runtime import NotBuiltError, llama_server_binary

    try:
        return llama_server_binary().parent
    except NotBuiltError:
        return None


def image_path(extra: Sequence[Path] = ()) -> str:
    """PATH inside "our images": the venv's bin/, ``extra`` (llama-server), the system dirs."""
    venv_bin = Path(sys.prefix) / "bin"
    if not (venv_bin / "modeldeploy").exists():
        venv_bin = REPO / ".venv" / "bin"
    return os.pathsep.join([str(venv_bin), *map(str, extra), *SYSTEM_PATH])


def rewrite_path(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
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


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR_REF.sub(one, value)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields_ = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields_[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# -- one pod -------------------------------------------------------------------------------


@dataclass
class _Container:
    """One container's process and the status the runner reports for it."""

    spec: dict[str, Any]
    init: bool
    runnable: str | None = None  # why not, when the image is not one of ours
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    started_at: float = 0.0
    started_stamp: str = ""
    exits: list[int] = field(default_factory=list)
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    ready: bool = False
    probe_due: float = 0.0
    probe_failures: int = 0
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "PodInitializing"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The container's name."""
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        """The containerStatuses entry."""
        entry: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": "running" in self.state,
            "state": self.state,
        }
        if self.last_state:
            entry["lastState"] = self.last_state
        return entry


@dataclass(frozen=True)
class PodRun:
    """A snapshot of one pod the runner handles."""

    namespace: str
    name: str
    uid: str
    pod_ip: str
    pids: dict[str, int]
    exits: dict[str, list[int]]
    ready: bool
    finished: bool


class PodWorker(threading.Thread):
    """Runs one pod: volumes, init containers, containers, probes, status, stop."""

    def __init__(self, runner: PodRunner, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.runner = runner
        self.pod = pod
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod_ip: str = pod["status"]["podIP"]
        spec = pod["spec"]
        self.grace = float(spec.get("terminationGracePeriodSeconds") or DEFAULT_GRACE_S)
        self.restart_policy: str = spec.get("restartPolicy") or "Always"
        self.dir = runner.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.core = client.CoreV1Api(runner.api)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self.inits = [self._container(c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [self._container(c, init=False) for c in spec["containers"]]
        self.stand_in: _Container | None = None
        self.volumes: dict[str, Path] = {}
        self.initialized = False
        self._published: dict[str, Any] | None = None
        self._transitions: dict[str, tuple[str, str]] = {}

    def _container(self, spec: dict[str, Any], init: bool) -> _Container:
        container = _Container(spec=spec, init=init)
        if image_repository(spec.get("image", "")) not in self.runner.images:
            container.runnable = (
                f"image {spec.get('image')!r} is not one the pod runner runs "
                f"({', '.join(sorted(self.runner.images))})"
            )
        return container

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True once the pod's stop was requested."""
        return self._halt.is_set()

    def request_stop(self, grace: float | None = None) -> None:
        """Stop the pod's processes: SIGTERM now, SIGKILL after ``grace`` (the pod's)."""
        if grace is not None and grace > 0:
            self.grace = grace
        self._halt.set()

    def run(self) -> None:
        """The pod's whole life on this machine."""
        log.info("pod %s/%s (%s): starting on %s", self.namespace, self.pod_name, self.uid,
                 self.pod_ip)  # fmt: skip
        try:
            self._publish()
            if self._prepare() and self._run_inits():
                self.initialized = True
                self._serve()
        except Exception:
            log.exception("pod %s/%s: the runner failed", self.namespace, self.pod_name)
        finally:
            self._terminate(self.all_containers())
            shutil.rmtree(self.dir, ignore_errors=True)
            log.info("pod %s/%s: stopped", self.namespace, self.pod_name)

    def all_containers(self) -> list[_Container]:
        """Init containers (the stand-in fetch first), then containers."""
        return [*([self.stand_in] if self.stand_in else []), *self.inits, *self.containers]

    def snapshot(self) -> PodRun:
        """What a test may look at."""
        with self._lock:
            everything = self.all_containers()
            return PodRun(
                namespace=self.namespace,
                name=self.pod_name,
                uid=self.uid,
                pod_ip=self.pod_ip,
                pids={
                    c.name: c.process.pid
                    for c in everything
                    if c.process is not None and c.process.poll() is None
                },
                exits={c.name: list(c.exits) for c in everything},
                ready=bool(self.containers) and all(c.ready for c in self.containers),
                finished=not self.is_alive(),
            )

    # -- preparation ---------------------------------------------------------------------

    def _prepare(self) -> bool:
        """Volumes and the stand-in fetch; retried with back-off while config is missing."""
        backoff = BACKOFF_START_S
        while not self._halt.is_set():
            try:
                self._add_stand_in_fetch()
                self.volumes = self._make_volumes()
                for container in self.all_containers():
                    if container.runnable:
                        raise PodConfigError(f"container {container.name}: {container.runnable}")
                return True
            except PodConfigError as error:
                log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
                waiting = {"reason": "CreateContainerConfigError", "message": str(error)}
                for container in self.all_containers():
                    container.state = {"waiting": waiting}
                self._publish()
                if self._halt.wait(backoff):
                    return False
                backoff = min(BACKOFF_MAX_S, backoff * 2)
        return False

    def _add_stand_in_fetch(self) -> None:
        if self.inits or self.stand_in is not None:
            return
        engine = self.containers[0].spec
        command = [*(engine.get("command") or []), *(engine.get("args") or [])]
        env = {e["name"]: e.get("value") for e in engine.get("env") or []}
        if command[:2] != ["modeldeploy", "serve-runtime"] or not env.get(
            "MODELDEPLOY_MODEL_SOURCE"
        ):
            return
        owner = self.pod["metadata"].get("labels", {}).get(LABEL_MODEL_DEPLOYMENT)
        if not owner:
            return
        group, version = GROUP_VERSION.split("/")
        try:
            obj = client.CustomObjectsApi(self.runner.api).get_namespaced_custom_object(
                group, version, self.namespace, "modeldeployments", owner
            )
        except client.ApiException as error:
            raise PodConfigError(f"ModelDeployment {owner}: {error.reason}") from None
        md = parse_model_deployment(obj)
        cache_dir = str(env.get("MODELDEPLOY_CACHE_DIR") or "/models")
        cache_mount = next(
            (m for m in engine.get("volumeMounts") or [] if m["mountPath"] == cache_dir), None
        )
        if cache_mount is None:
            raise PodConfigError(f"no volume is mounted at MODELDEPLOY_CACHE_DIR {cache_dir}")
        spec, volumes = fetch_init_container(
            md.spec.model,
            image=self.runner.operator_image,
            cache_mount_path=cache_dir,
            cache_volume=cache_mount["name"],
        )
        self.pod["spec"].setdefault("volumes", []).extend(volumes)
        self.stand_in = _Container(spec=spec, init=True)
        log.info("pod %s/%s: no init container rendered; stand-in: %s", self.namespace,
                 self.pod_name, " ".join(spec["command"] + spec["args"]))  # fmt: skip

    def _make_volumes(self) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for volume in self.pod["spec"].get("volumes") or []:
            name = volume["name"]
            local = self.dir / "volumes" / name
            if "emptyDir" in volume:
                local.mkdir(parents=True, exist_ok=True)
                volumes[name] = local
            elif "persistentVolumeClaim" in volume:
                volumes[name] = self._claim_path(volume["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in volume:
                volumes[name] = Path(volume["hostPath"]["path"])
            elif "secret" in volume:
                source = volume["secret"]
                data = self._secret(source["secretName"], bool(source.get("optional")))
                volumes[name] = _write_items(local, data, source.get("items"))
            elif "configMap" in volume:
                source = volume["configMap"]
                data = self._config_map(source["name"], bool(source.get("optional")))
                volumes[name] = _write_items(local, data, source.get("items"))
            else:
                kinds = ", ".join(k for k in volume if k != "name")
                raise PodConfigError(f"volume {name}: {kinds} is not supported by the runner")
        return volumes

    def _claim_path(self, claim_name: str) -> Path:
        try:
            claim = self.core.read_namespaced_persistent_volume_claim(claim_name, self.namespace)
        except client.ApiException as error:
            raise PodConfigError(f"claim {claim_name}: {error.reason}") from None
        if not claim.spec.volume_name:
            raise PodConfigError(f"claim {claim_name} is not bound")
        volume = self.core.read_persistent_volume(claim.spec.volume_name)
        source = volume.spec.host_path or volume.spec.local
        if source is None:
            raise PodConfigError(f"volume {volume.metadata.name} has no local path")
        return Path(source.path)

    def _secret(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404 and optional:
                return {}
            raise PodConfigError(f"secret {name!r}: {error.reason}") from None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _config_map(self, name: str, optional: bool) -> dict[str, bytes]:
        try:
            found = self.core.read_namespaced_config_map(name, self.namespace)
        except client.ApiException as error:
            if error.status == 404 and optional:
                return {}
            raise PodConfigError(f"configmap {name!r}: {error.reason}") from None
        data = {k: v.encode() for k, v in (found.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()})
        return data

    # -- processes -----------------------------------------------------------------------

    def _mounts(self, container: _Container) -> list[tuple[str, Path]]:
        mounts = []
        for mount in container.spec.get("volumeMounts") or []:
            host = self.volumes.get(mount["name"])
            if host is None:
                raise PodConfigError(f"container {container.name}: no volume {mount['name']}")
            if mount.get("subPath"):
                host = host / mount["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts.append((str(mount["mountPath"]), host))
        message = container.spec.get("terminationMessagePath") or "/dev/termination-log"
        mounts.append((message, self._termination_file(container)))
        return mounts

    def _termination_file(self, container: _Container) -> Path:
        return self.dir / "termination" / container.name

    def _environment(self, container: _Container) -> dict[str, str]:
        env: dict[str, str] = {"PATH": self.runner.path, "HOSTNAME": self.pod_name}
        env.update(self.runner.node_env)
        for source in container.spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_map(ref["name"], bool(ref.get("optional")))
            else:
                ref = source["secretRef"]
                data = self._secret(ref["name"], bool(ref.get("optional")))
            env.update({prefix + k: v.decode(errors="replace") for k, v in data.items()})
        for variable in container.spec.get("env") or []:
            value = self._env_value(container, variable, env)
            if value is not None:
                env[variable["name"]] = value
        return env

    def _env_value(
        self, container: _Container, variable: dict[str, Any], env: Mapping[str, str]
    ) -> str | None:
        if "valueFrom" not in variable:
            return expand(str(variable.get("value", "")), env)
        source = variable["valueFrom"]
        if "fieldRef" in source:
            return self._field(source["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in source:
            return _resource_field(container.spec, source["resourceFieldRef"])
        ref = source.get("secretKeyRef") or source.get("configMapKeyRef")
        if ref is None:
            raise PodConfigError(f"env {variable['name']}: unsupported valueFrom")
        optional = bool(ref.get("optional"))
        if "secretKeyRef" in source:
            data = self._secret(ref["name"], optional)
        else:
            data = self._config_map(ref["name"], optional)
        if ref["key"] in data:
            return data[ref["key"]].decode(errors="replace")
        if optional:
            return None
        raise PodConfigError(f"env {variable['name']}: key {ref['key']!r} not in {ref['name']!r}")

    def _field(self, path: str) -> str:
        meta, spec, status = self.pod["metadata"], self.pod["spec"], self.pod["status"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName", ""),
            "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": status.get("hostIP", ""),
            "status.hostIPs": status.get("hostIP", ""),
        }
        if path in simple:
            return str(simple[path])
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise PodConfigError(f"fieldRef {path} is not supported by the runner")

    def _start(self, container: _Container) -> None:
        """Start one container's process (or record why it could not start)."""
        mounts = self._mounts(container)
        env = self._environment(container)
        # Only the pod's own values are container paths; what the runner supplies (the
        # image PATH, node env) are host paths already, and the checkout may itself live
        # under a mountPath such as /tmp.
        own = {"PATH": self.runner.path, "HOSTNAME": self.pod_name, **self.runner.node_env}
        env = {k: v if own.get(k) == v else rewrite_path(v, mounts) for k, v in env.items()}
        argv = [
            rewrite_path(expand(str(a), env), mounts)
            for a in [*(container.spec.get("command") or []), *(container.spec.get("args") or [])]
        ]
        if not container.spec.get("command"):
            raise PodConfigError(f"container {container.name}: no command (no image entrypoint)")
        executable = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=env["PATH"])
        if executable is None:
            raise PodConfigError(
                f"container {container.name}: {argv[0]} not found on {env['PATH']}"
            )
        termination = self._termination_file(container)
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_bytes(b"")
        log_path = self.runner.logs / f"{self.namespace}_{self.pod_name}_{container.name}.log"
        log_file = log_path.open("ab")
        log_file.write(f"[podrunner {_now()}] start: {' '.join(argv)}\n".encode())
        log_file.flush()
        working = container.spec.get("workingDir")
        cwd = Path(rewrite_path(working, mounts)) if working else self.dir
        cwd.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [executable, *argv[1:]],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Only the prctl call, resolved before the fork (see _PRCTL).
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        with self._lock:
            container.process, container.log_file = process, log_file
        container.started_at, container.started_stamp = time.monotonic(), _now()
        container.state = {"running": {"startedAt": container.started_stamp}}
        container.probe_due, container.probe_failures = 0.0, 0
        log.info("pod %s/%s: %s started (pid %d): %s", self.namespace, self.pod_name,
                 container.name, process.pid, " ".join(argv))  # fmt: skip

    def _reap(self, container: _Container) -> int | None:
        """The exit status if the container's process has exited (recorded), else None."""
        process = container.process
        if process is None or process.poll() is None:
            return None
        code = process.returncode
        status = 128 - code if code < 0 else code
        with self._lock:
            container.exits.append(status)
            container.process = None
        if container.log_file is not None:
            container.log_file.write(f"[podrunner {_now()}] exit {status}\n".encode())
            container.log_file.close()
            container.log_file = None
        terminated = {
            "exitCode": status,
            "reason": "Completed" if status == 0 else "Error",
            "startedAt": container.started_stamp,
            "finishedAt": _now(),
        }
        if code < 0:
            terminated["signal"] = -code
        message = self._termination_message(container, status)
        if message:
            terminated["message"] = message
        container.state = {"terminated": terminated}
        container.ready = False
        log.log(logging.INFO if status == 0 else logging.WARNING,
                "pod %s/%s: %s exited with %d%s", self.namespace, self.pod_name, container.name,
                status, f": {message.strip()[:500]}" if message else "")  # fmt: skip
        return status

    def _termination_message(self, container: _Container, status: int) -> str:
        try:
            message = self._termination_file(container).read_bytes()[:TERMINATION_MESSAGE_BYTES]
        except OSError:
            message = b""
        policy = container.spec.get("terminationMessagePolicy")
        if not message and status != 0 and policy == "FallbackToLogsOnError":
            path = self.runner.logs / f"{self.namespace}_{self.pod_name}_{container.name}.log"
            lines = path.read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-2048:]
        return message.decode(errors="replace")

    def _back_off(self, container: _Container) -> None:
        """After a failed run: CrashLoopBackOff until ``next_start``."""
        ran = time.monotonic() - container.started_at
        if ran >= BACKOFF_RESET_S:
            container.backoff = 0.0
        container.backoff = (
            BACKOFF_START_S if not container.backoff else min(BACKOFF_MAX_S, container.backoff * 2)
        )
        container.restarts += 1
        container.next_start = time.monotonic() + container.backoff
        container.last_state = container.state
        container.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {container.backoff:.0f}s restarting failed container="
                f"{container.name} pod={self.pod_name}",
            }
        }

    def _run_inits(self) -> bool:
        """Each init container to completion, in order, retried after failures."""
        for container in [*([self.stand_in] if self.stand_in else []), *self.inits]:
            while True:
                if self._halt.is_set():
                    return False
                if not self._start_or_report(container):
                    if self._halt.wait(BACKOFF_START_S):
                        return False
                    continue
                self._publish()
                while (status := self._reap(container)) is None:
                    if self._halt.wait(TICK_S):
                        return False
                if status == 0:
                    self._publish()
                    break
                if self.restart_policy == "Never":
                    self._publish()
                    return False
                self._back_off(container)
                self._publish()
                if self._halt.wait(container.backoff):
                    return False
        return True

    def _start_or_report(self, container: _Container) -> bool:
        try:
            self._start(container)
        except (PodConfigError, OSError) as error:
            log.warning("pod %s/%s: %s", self.namespace, self.pod_name, error)
            container.state = {
                "waiting": {"reason": "CreateContainerConfigError", "message": str(error)}
            }
            container.next_start = time.monotonic() + BACKOFF_START_S
            self._publish()
            return False
        return True

    def _serve(self) -> None:
        """Start the containers, restart them per policy, probe readiness, until stopped."""
        for container in self.containers:
            container.state = {"waiting": {"reason": "ContainerCreating"}}
        while not self._halt.is_set():
            now = time.monotonic()
            for container in self.containers:
                if container.process is None:
                    # Not started yet, or waiting out a back-off; a finished one stays so.
                    if "waiting" in container.state and now >= container.next_start:
                        self._start_or_report(container)
                elif (status := self._reap(container)) is not None:
                    if self.restart_policy == "Always" or (
                        self.restart_policy == "OnFailure" and status != 0
                    ):
                        self._back_off(container)
                elif now >= container.probe_due:
                    self._probe(container, now)
            self._publish()
            self._halt.wait(TICK_S)

    def _probe(self, container: _Container, now: float) -> None:
        probe = container.spec.get("readinessProbe")
        if not probe:
            container.ready = True
            return
        ok = _probe_once(probe, self.pod_ip, container.spec.get("ports") or [])
        period = float(probe.get("periodSeconds") or 10)
        if ok:
            container.probe_failures = 0
            container.ready = True
            container.probe_due = now + period
        else:
            container.probe_failures += 1
            if container.probe_failures >= int(probe.get("failureThreshold") or 3):
                container.ready = False
            container.probe_due = now + (period if container.ready else 1.0)

    def _terminate(self, containers: Sequence[_Container]) -> None:
        """SIGTERM every running process group; SIGKILL what is left after the grace."""
        running = [c for c in containers if c.process is not None and c.process.poll() is None]
        for container in running:
            assert container.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(container.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for container in running:
            assert container.process is not None
            try:
                container.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pod %s/%s: %s outlived the %gs grace period; SIGKILL",
                            self.namespace, self.pod_name, container.name, self.grace)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(container.process.pid, signal.SIGKILL)
                container.process.wait()
        for container in running:
            pgid = container.process.pid if container.process is not None else None
            self._reap(container)
            if pgid is not None:
                # Whatever else is left in the process group (a child that ignored SIGTERM).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)

    # -- status --------------------------------------------------------------------------

    def observe(self, pod: Any) -> None:
        """Report our status again on the next tick if someone else changed the pod's Ready."""
        # kube-controller-manager marks the pods of an unreachable node not ready; a kubelet
        # that is still there reports its own view again.
        published = self._published
        if published is None:
            return
        ours = next(c["status"] for c in published["conditions"] if c["type"] == "Ready")
        theirs = next((c.status for c in pod.status.conditions or [] if c.type == "Ready"), None)
        if theirs is not None and theirs != ours:
            self._published = None

    def _publish(self) -> None:
        """Patch the pod's status with the runner's view, when it changed."""
        engine_waiting: dict[str, str] | None = None
        if self.stand_in is not None and not self.initialized:
            # The stand-in is not in the pod's spec: its state shows on the engine container.
            state, last = self.stand_in.state, self.stand_in.last_state
            waiting = state.get("waiting", {})
            if waiting and "terminated" in last:
                exited = last["terminated"]
                message = f"exited {exited['exitCode']}: {exited.get('message', '')}".strip()
            else:
                message = str(waiting.get("message", ""))
            reason = waiting.get("reason") or "PodInitializing"
            engine_waiting = {"reason": reason}
            if reason != "PodInitializing":
                engine_waiting["message"] = (
                    f"stand-in init container {STAND_IN_FETCH}: {message}"
                )[:TERMINATION_MESSAGE_BYTES]
        containers = []
        for container in self.containers:
            entry = container.status()
            if engine_waiting is not None:
                entry["state"] = {"waiting": engine_waiting}
            containers.append(entry)
        ready = bool(self.containers) and all(c.ready for c in self.containers)
        status: dict[str, Any] = {
            "conditions": [
                self._condition("Initialized", self.initialized, "ContainersNotInitialized"),
                self._condition("ContainersReady", ready, "ContainersNotReady"),
                self._condition("Ready", ready, "ContainersNotReady"),
            ],
            "containerStatuses": containers,
        }
        if self.inits:
            status["initContainerStatuses"] = [
                {**c.status(), "ready": "terminated" in c.state and c.exits[-1:] == [0]}
                for c in self.inits
            ]
        if status == self._published:
            return
        try:
            self.core.patch_namespaced_pod_status(
                self.pod_name,
                self.namespace,
                {"status": status},
                _content_type="application/strategic-merge-patch+json",
            )
        except client.ApiException as error:
            if error.status != 404:
                log.warning("pod %s/%s: status patch failed: %s", self.namespace,
                            self.pod_name, error.reason)  # fmt: skip
            return
        self._published = status

    def _condition(self, type_: str, ok: bool, reason: str) -> dict[str, Any]:
        value = "True" if ok else "False"
        previous = self._transitions.get(type_)
        if previous is None or previous[0] != value:
            self._transitions[type_] = (value, _now())
        condition = {
            "type": type_,
            "status": value,
            "lastTransitionTime": self._transitions[type_][1],
        }
        if not ok:
            condition["reason"] = reason
        return condition


def _write_items(
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


def _resource_field(spec: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    kind, _, resource = str(ref["resource"]).partition(".")
    value = (spec.get("resources") or {}).get(kind, {}).get(resource)
    if value is None:
        raise PodConfigError(f"resourceFieldRef {ref['resource']}: not set on the container")
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(math.ceil(parse_quantity(value) / divisor))


def _probe_once(probe: Mapping[str, Any], pod_ip: str, ports: Sequence[Mapping[str, Any]]) -> bool:
    named = {p.get("name"): p["containerPort"] for p in ports if p.get("name")}
    timeout = float(probe.get("timeoutSeconds") or 1)
    check = probe.get("httpGet") or probe.get("tcpSocket")
    if check is None:  # exec and grpc probes are not run: ready once started
        return True
    port = check["port"]
    port = int(named.get(port, port))
    host = check.get("host") or pod_ip
    if "httpGet" in probe:
        scheme = str(check.get("scheme") or "HTTP").lower()
        url = f"{scheme}://{host}:{port}{check.get('path') or '/'}"
        try:
            response = httpx.get(url, timeout=timeout, verify=False, trust_env=False)
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 400
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- the watcher ---------------------------------------------------------------------------


class PodRunner:
    """Watch the cluster's pods and run ours that land on simulated nodes."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        namespace: str | None = None,
        selector: str | None = None,
        node_env: Mapping[str, str] | None = None,
        images: Collection[str] | None = None,
        path_dirs: Sequence[Path] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir.resolve()
        self.logs = self.workdir / "logs" / "pods"
        self.namespace = namespace
        self.selector = selector
        self.node_env = dict(node_env or {})
        self.images = frozenset(images) if images is not None else our_repositories()
        self.operator_image = OperatorConfig().operator_image
        if path_dirs is None:
            found = llama_server_dir()
            path_dirs = [found] if found else []
        self.path = image_path(path_dirs)
        self.api = config.new_client_from_config(str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self._workers: dict[str, PodWorker] = {}
        self._kwok_nodes: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="pod-runner", daemon=True)

    def start(self) -> PodRunner:
        """Start watching in a background thread."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop every pod's processes (each within its grace period) and the watch."""
        self._stop.set()
        self._thread.join(timeout=WATCH_TIMEOUT_S + 5)
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            worker.join(timeout=worker.grace + 30)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def runs(self) -> list[PodRun]:
        """A snapshot of every pod started so far (finished ones included)."""
        with self._lock:
            return [worker.snapshot() for worker in self._workers.values()]

    def run_of(self, pod_name: str) -> PodRun | None:
        """The newest run of a pod by name, if any."""
        found = [run for run in self.runs() if run.name == pod_name]
        return found[-1] if found else None

    # -- watch ---------------------------------------------------------------------------

    def _watch(self) -> None:
        # Bound methods, not partials: the watch reads the return type from the docstring.
        if self.namespace:
            list_pods: Callable[..., Any] = self.core.list_namespaced_pod
            args: tuple[str, ...] = (self.namespace,)
        else:
            list_pods, args = self.core.list_pod_for_all_namespaces, ()
        selector = {"label_selector": self.selector} if self.selector else {}
        while not self._stop.is_set():
            try:
                listed = list_pods(*args, **selector)
                self._sync_all(listed.items)
                stream = watch.Watch().stream(
                    list_pods,
                    *args,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                    **selector,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        break
                    self._sync(event["type"], event["object"])
                    if self._stop.is_set():
                        break
            except Exception as error:  # the API server may be restarting or stopping
                if self._stop.wait(1):
                    return
                log.warning("pod watch failed (%s); listing again", error)

    def _sync_all(self, pods: Sequence[Any]) -> None:
        live = {pod.metadata.uid for pod in pods}
        with self._lock:
            gone = [w for uid, w in self._workers.items() if uid not in live]
        for worker in gone:
            worker.request_stop()
        for pod in pods:
            self._sync("ADDED", pod)

    def _sync(self, event_type: str, pod: Any) -> None:
        uid = pod.metadata.uid
        with self._lock:
            worker = self._workers.get(uid)
        if event_type == "DELETED" or pod.metadata.deletion_timestamp:
            if worker is not None and not worker.stopping:
                grace = pod.metadata.deletion_grace_period_seconds
                worker.request_stop(float(grace) if grace else None)
            return
        if worker is not None:
            worker.observe(pod)
            return
        if not self._wanted(pod):
            return
        body = self.api.sanitize_for_serialization(pod)
        worker = PodWorker(self, body)
        with self._lock:
            self._workers[uid] = worker
        worker.start()

    def _wanted(self, pod: Any) -> bool:
        if pod.status.phase in ("Succeeded", "Failed") or not pod.status.pod_ip:
            return False
        node = pod.spec.node_name
        if not node or not self._is_kwok(node):
            return False
        containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
        return any(image_repository(c.image or "") in self.images for c in containers)

    def _is_kwok(self, node: str) -> bool:
        if node not in self._kwok_nodes:
            key, _, value = KWOK_NODE_SELECTOR.partition("=")
            labels = self.core.read_node(node).metadata.labels or {}
            self._kwok_nodes[node] = labels.get(key) == value
        return self._kwok_nodes[node]


# -- background process for `make demo` ----------------------------------------------------


def start_background(
    workdir: Path,
    *,
    namespace: str | None = None,
    selector: str | None = None,
    mirror: Path | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Start ``python -m e2e.podrunner`` detached; return its state once it is watching."""
    stop_background(workdir)
    state_file = workdir / STATE_FILE
    state_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "e2e.podrunner", "--workdir", str(workdir)]
    if namespace:
        argv += ["--namespace", namespace]
    if selector:
        argv += ["--selector", selector]
    if mirror:
        argv += ["--mirror", str(mirror)]
    log_file = (workdir / "logs" / "podrunner.log").open("ab")
    process = subprocess.Popen(
        argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    (workdir / PID_FILE).write_text(str(process.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the pod runner exited ({process.returncode}); see {log_file.name}")
        with contextlib.suppress(FileNotFoundError, ValueError):
            state: dict[str, Any] = json.loads(state_file.read_text())
            if state.get("pid") == process.pid:
                return state
        time.sleep(0.2)
    process.terminate()
    raise TimeoutError(f"the pod runner did not start within {timeout:.0f}s")


def stop_background(workdir: Path, timeout: float = 90.0) -> None:
    """Stop a background pod runner (its pods get their grace period) and wait for it."""
    pid_file = workdir / PID_FILE
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    (workdir / STATE_FILE).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    """Run the pod runner (and optionally a model mirror) until SIGTERM or SIGINT."""
    from e2e.mirror import ModelMirror

    parser = argparse.ArgumentParser(prog="python -m e2e.podrunner", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="the local cluster's dir")
    parser.add_argument("--namespace", help="only pods in this namespace")
    parser.add_argument("--selector", help="only pods matching this label selector")
    parser.add_argument("--mirror", type=Path, action="append", default=[],
                        help="serve this file from a stand-in https:// mirror")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpcore", "kubernetes", "urllib3"):  # one line per probe otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    workdir: Path = args.workdir.resolve()
    mirror = ModelMirror({p.name: p for p in args.mirror}).start() if args.mirror else None
    runner = PodRunner(
        workdir / "kubeconfig",
        workdir,
        namespace=args.namespace,
        selector=args.selector,
        node_env=mirror.plain_http_env() if mirror else None,
    ).start()
    state = {
        "pid": os.getpid(),
        "mirror": {p.name: mirror.url(p.name) for p in args.mirror} if mirror else {},
        "logs": str(runner.logs),
    }
    (workdir / STATE_FILE).write_text(json.dumps(state, indent=2))
    try:
        stop.wait()
        log.info("stopping")
    finally:
        runner.stop()
        if mirror:
            mirror.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
