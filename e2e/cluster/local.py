"""A real Kubernetes control plane as local processes on 127.0.0.1, with a kwok node pool.

``LocalCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok from the binaries that ``build-binaries.sh`` caches, waits for each one's health
endpoint (with a deadline and an error naming the component and its log), registers the
simulated nodes of ``nodes.yaml`` and waits until kwok reports them Ready.

Every component runs in its own process group with ``PR_SET_PDEATHSIG``: if the process
that started the cluster dies, even by SIGKILL, the kernel sends the components SIGTERM,
so a crashed test run leaves no process and no listening port behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import yaml
from kubernetes import client, config

from e2e.cluster.pki import Pki, ensure_pki, write_kubeconfig
from e2e.cluster.provisioner import STORAGE_CLASS, LocalPathProvisioner
from modeldeploy.serve.parent_death import die_with_parent

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
NODES_FILE = HERE / "nodes.yaml"

# kwok hands out pod IPs from this range; it lies inside 127.0.0.0/8, so a test-side
# runner can bind a pod's real process to its pod IP on this machine.
POD_CIDR = "127.1.0.0/16"
SERVICE_CIDR = "10.96.0.0/12"
KWOK_NODE_SELECTOR = "type=kwok"
START_TIMEOUT_S = 120.0


class ClusterError(RuntimeError):
    """A component failed to start or to become healthy."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    """One running control-plane process."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, lines: int = 25) -> str:
        """Return the last lines of the component's log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Ports:
    """The loopback ports one cluster instance listens on, chosen free at start."""

    etcd_client: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)
    kwok: int = field(default_factory=free_port)

    def all(self) -> list[int]:
        """Every port, for checking that a stopped cluster released them."""
        return list(vars(self).values())


class LocalCluster:
    """Start and stop the local control plane in one work directory."""

    def __init__(self, workdir: Path, bin_dir: Path, nodes_file: Path = NODES_FILE) -> None:
        self.workdir = workdir.resolve()
        self.bin_dir = bin_dir
        self.nodes_file = nodes_file
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.state_file = self.workdir / "state.json"
        self.ports = Ports()
        self.components: list[Component] = []
        self._pki: Pki | None = None
        self._provisioner: LocalPathProvisioner | None = None

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def pki(self) -> Pki:
        """The cluster's key material (created by ``start``)."""
        assert self._pki is not None, "cluster not started"
        return self._pki

    # -- lifecycle -------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda _: None) -> None:
        """Start every component and the node pool; raise ClusterError on any failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)  # every start is a fresh cluster
        self._pki = ensure_pki(self.workdir / "pki")
        self._write_audit_policy()
        try:
            started = time.monotonic()
            self._start_etcd()
            progress("etcd ready")
            self._start_apiserver()
            write_kubeconfig(self.kubeconfig, self.server, self.pki)
            progress(f"kube-apiserver ready at {self.server}")
            self._start_controller_manager()
            progress("kube-controller-manager running its controllers")
            self._start_scheduler()
            progress("kube-scheduler healthy")
            self._start_kwok()
            self._register_nodes()
            progress(f"{len(self.node_names())} kwok nodes Ready")
            self._provisioner = LocalPathProvisioner(self._client(), self.workdir / "volumes")
            self._provisioner.start()
            progress(f"default StorageClass {STORAGE_CLASS} (stand-in provisioner)")
            self._write_state(time.monotonic() - started)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component (reverse order), then make sure none of them survived."""
        if self._provisioner is not None:
            self._provisioner.stop()
            self._provisioner = None
        for component in reversed(self.components):
            _terminate(component.process)
            component.log_file.close()
        self.components.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- outages (tests) -------------------------------------------------------------

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (etcd and the other components keep running)."""
        component = next(c for c in self.components if c.name == "kube-apiserver")
        _terminate(component.process)
        component.log_file.close()
        self._apiserver_slot = self.components.index(component)
        self.components.remove(component)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again, on its port and with its etcd; wait until it is ready
        (in its place among the components, so ``stop`` keeps its order)."""
        self._start_apiserver()
        slot = getattr(self, "_apiserver_slot", len(self.components) - 1)
        self.components.insert(slot, self.components.pop())

    # -- components ------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Component:
        log_path = self.logs / f"{name}.log"
        log_file = log_path.open("ab")
        process = subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            # The cluster owner starts components from its main thread only (the kernel
            # signals the child when the forking thread exits); prctl is resolved pre-fork.
            preexec_fn=die_with_parent(signal.SIGTERM),  # noqa: PLW1509
        )
        component = Component(name, process, log_path, log_file)
        self.components.append(component)
        return component

    def _wait_healthy(self, component: Component, probe: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                raise ClusterError(
                    f"{component.name} exited with code {component.process.returncode}; "
                    f"log {component.log_path}:\n{component.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError, OSError):
                if probe():
                    return
            time.sleep(0.2)
        raise ClusterError(
            f"{component.name} not healthy within {START_TIMEOUT_S:.0f}s; "
            f"log {component.log_path}:\n{component.log_tail()}"
        )

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports.etcd_client}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        etcd = self._spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # throwaway test data: trade durability for speed
                "--log-level=warn",
            ],
        )
        self._wait_healthy(etcd, lambda: httpx.get(f"{client}/readyz", timeout=2).is_success)

    def _start_apiserver(self) -> None:
        p = self.pki
        apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--tls-cert-file={p.admin_cert}",
                f"--tls-private-key-file={p.admin_key}",
                f"--client-ca-file={p.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--enable-admission-plugins=PodSecurity",
                "--allow-privileged=true",
                # Endpoints may not hold loopback addresses, so the `kubernetes` Service
                # cannot point at 127.0.0.1: do not reconcile it.
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.logs / 'audit.log'}",
                "--audit-log-maxsize=200",
                "--audit-log-maxbackup=1",
            ],
        )
        context = ssl.create_default_context(cafile=str(p.ca_cert))
        context.load_cert_chain(str(p.admin_cert), str(p.admin_key))

        def ready() -> bool:
            return httpx.get(f"{self.server}/readyz", verify=context, timeout=2).is_success

        self._wait_healthy(apiserver, ready)

    def _component_kubeconfig_args(self) -> list[str]:
        kc = str(self.kubeconfig)
        return [
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics",
        ]

    def _wait_https_healthz(self, component: Component, port: int) -> None:
        # Controller-manager and scheduler serve a self-signed cert on loopback.
        url = f"https://127.0.0.1:{port}/healthz"
        self._wait_healthy(component, lambda: httpx.get(url, verify=False, timeout=2).is_success)

    def _start_controller_manager(self) -> None:
        p = self.pki
        kcm = self._spawn(
            "kube-controller-manager",
            [
                *self._component_kubeconfig_args(),
                f"--secure-port={self.ports.controller_manager}",
                f"--root-ca-file={p.ca_cert}",
                f"--service-account-private-key-file={p.sa_key}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-signing-cert-file={p.ca_cert}",
                f"--cluster-signing-key-file={p.ca_key}",
                # kwok renews node leases from this one busy machine; a generous grace
                # keeps a CPU-starved moment from tainting the pool NotReady mid-test.
                "--node-monitor-grace-period=120s",
            ],
        )
        # /healthz is 200 before any controller runs; kube-controller-manager adds one check
        # per controller once it has started them all (controllermanager.go, after
        # StartControllers). Until then it builds each controller's client by creating a
        # ServiceAccount, and a failure there is fatal (client_builder_dynamic.go): an API
        # server stopped in that window would kill it. So the cluster is up once they run.
        url = f"https://127.0.0.1:{self.ports.controller_manager}/healthz?verbose"
        self._wait_healthy(
            kcm,
            lambda: "[+]deployment-controller ok" in httpx.get(url, verify=False, timeout=2).text,
        )

    def _start_scheduler(self) -> None:
        scheduler = self._spawn(
            "kube-scheduler",
            [*self._component_kubeconfig_args(), f"--secure-port={self.ports.scheduler}"],
        )
        self._wait_https_healthz(scheduler, self.ports.scheduler)

    def _start_kwok(self) -> None:
        kwok = self._spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-label-selector={KWOK_NODE_SELECTOR}",
                f"--cidr={POD_CIDR}",
                # Node heartbeats are leases (the heartbeat stage patches status only every
                # ~10 min); without them the pool goes Unknown after the grace period.
                "--node-lease-duration-seconds=40",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
            ],
        )
        url = f"http://127.0.0.1:{self.ports.kwok}/healthz"
        self._wait_healthy(kwok, lambda: httpx.get(url, timeout=2).is_success)

    def _write_audit_policy(self) -> None:
        # Writes only, at Metadata level: tests count a controller's write calls from it.
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {
                    "level": "Metadata",
                    "verbs": ["create", "update", "patch", "delete", "deletecollection"],
                },
                {"level": "None"},
            ],
        }
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(policy))

    # -- nodes -----------------------------------------------------------------------

    def node_manifests(self) -> list[dict[str, Any]]:
        """The Node objects of the simulated pool."""
        with self.nodes_file.open() as f:
            return [doc for doc in yaml.safe_load_all(f) if doc]

    def node_names(self) -> list[str]:
        """Names of the simulated nodes."""
        return [n["metadata"]["name"] for n in self.node_manifests()]

    def _register_nodes(self) -> None:
        api = client.CoreV1Api(self._client())
        for node in self.node_manifests():
            # Node create accepts status (kubelets register that way), so capacity,
            # allocatable GPUs and nodeInfo arrive in one call.
            api.create_node(node)
        kwok = next(c for c in self.components if c.name == "kwok")
        wanted = set(self.node_names())

        def all_ready() -> bool:
            nodes = api.list_node(label_selector=KWOK_NODE_SELECTOR).items
            ready = {
                n.metadata.name
                for n in nodes
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            }
            return wanted <= ready

        self._wait_healthy(kwok, all_ready)

    def _client(self) -> client.ApiClient:
        return config.new_client_from_config(str(self.kubeconfig))

    # -- state -----------------------------------------------------------------------

    def _write_state(self, start_seconds: float) -> None:
        state = {
            "supervisorPid": os.getpid(),
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "ports": vars(self.ports),
            "pids": {c.name: c.process.pid for c in self.components},
            "startSeconds": round(start_seconds, 2),
            "podCIDR": POD_CIDR,
        }
        self.state_file.write_text(json.dumps(state, indent=2))


def _terminate(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM the process group, SIGKILL it after the grace period, reap it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    # Reap anything else left in the group (a component's own children).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def listening_ports(ports: list[int]) -> list[int]:
    """Return those of ``ports`` that something still listens on at 127.0.0.1."""
    busy = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


@contextlib.contextmanager
def running_cluster(workdir: Path, bin_dir: Path) -> Iterator[LocalCluster]:
    """Start a cluster for the duration of the block."""
    cluster = LocalCluster(workdir, bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
