"""What e2e tests hold on to: a handle on a cluster (local or existing) and polling helpers.

The same tests run against the local control plane that ``LocalCluster`` starts and,
with ``MODELDEPLOY_E2E_CLUSTER=existing``, against whatever ``KUBECONFIG`` points at
(a kind cluster with the kwok pool, see ``e2e/kind/``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from e2e.cluster.local import NODES_FILE, POD_CIDR, REPO, free_port
from e2e.cluster.tools import client_bin_dir
from modeldeploy.api import API_GROUP, API_VERSION, PLURAL

T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll ``probe`` until it returns a truthy value; raise with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except client.ApiException as error:  # transient while objects appear
            last_error = error
        else:
            if value:
                return value
        time.sleep(0.2)
    suffix = f" (last error: {last_error})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


@dataclass
class ClusterHandle:
    """A reachable cluster: kubeconfig, API clients, kubectl and helm bound to it."""

    kubeconfig: Path
    pod_cidr: str | None
    workdir: Path | None = None  # local clusters only: logs/, audit log

    def api_client(self) -> client.ApiClient:
        """A fresh kubernetes ApiClient for this cluster."""
        return config.new_client_from_config(str(self.kubeconfig))

    def _run(
        self, tool: str, args: tuple[str, ...], check: bool
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(client_bin_dir() / tool), "--kubeconfig", str(self.kubeconfig), *args],
            check=check,
            capture_output=True,
            text=True,
        )

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the project's kubectl against this cluster."""
        return self._run("kubectl", args, check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the project's helm against this cluster."""
        return self._run("helm", args, check)

    def in_pod_cidr(self, ip: str) -> bool:
        """True when ``ip`` lies in the range the simulated nodes hand pod IPs from."""
        if self.pod_cidr is None:
            return True
        return ipaddress.ip_address(ip) in ipaddress.ip_network(self.pod_cidr)

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log of write calls (local clusters only)."""
        return self.workdir / "logs" / "audit.log" if self.workdir else None


CRD_FILE = REPO / "crds" / "modeldeploy.io_modeldeployments.yaml"
CRD_NAME = "modeldeployments.modeldeploy.io"
POLICY_CRD_FILE = REPO / "crds" / "modeldeploy.io_modelpolicies.yaml"
POLICY_CRD_NAME = "modelpolicies.modeldeploy.io"
# The operator's own CRDs (crds/modeldeploy.io_*.yaml): name, file, short name, a field to
# explain.
OWN_CRDS = (
    (CRD_NAME, CRD_FILE, "mdep", "mdep.spec.model"),
    (POLICY_CRD_NAME, POLICY_CRD_FILE, "mpol", "mpol.spec.allowedSources"),
)
CRD_NAMES = tuple(name for name, *_ in OWN_CRDS)


def install_crds(cluster: ClusterHandle) -> None:
    """Server-side apply the CRDs (safe to repeat); wait until they are served and explained."""
    files = [arg for _, path, *_ in OWN_CRDS for arg in ("-f", str(path))]
    applied = cluster.kubectl("apply", "--server-side", "--force-conflicts", *files, check=False)
    assert applied.returncode == 0, applied.stderr
    extensions = client.ApiextensionsV1Api(cluster.api_client())

    def established(name: str) -> bool:
        crd = extensions.read_custom_resource_definition(name)
        found = (crd.status.conditions if crd.status else None) or []
        conditions = {condition.type: condition.status for condition in found}
        return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"

    for name, _, short_name, field in OWN_CRDS:
        wait_until(lambda n=name: established(n), timeout=60, what=f"CRD {name} Established")
        wait_until(
            lambda s=short_name: cluster.kubectl("get", s, "-A", check=False).returncode == 0,
            timeout=60,
            what=f"the {short_name} short name in discovery",
        )
        # The API server publishes a new CRD's OpenAPI (what kubectl explain reads) a moment
        # after Established.
        wait_until(
            lambda f=field: cluster.kubectl("explain", f, check=False).returncode == 0,
            timeout=60,
            what=f"the {name} schema in the published OpenAPI",
        )


PEERING_CRD_FILE = REPO / "crds" / "kopf-peering.yaml"


def install_peering_crds(cluster: ClusterHandle) -> None:
    """Server-side apply Kopf's peering CRDs (safe to repeat); wait until they are served."""
    applied = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(PEERING_CRD_FILE), check=False
    )
    assert applied.returncode == 0, applied.stderr
    for crd in ("kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"):
        waited = cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", check=False
        )
        assert waited.returncode == 0, waited.stderr


def pool_nodes() -> list[dict[str, Any]]:
    """The Node manifests of the simulated pool."""
    with NODES_FILE.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def existing_cluster() -> ClusterHandle | None:
    """The cluster named by the environment, when MODELDEPLOY_E2E_CLUSTER=existing."""
    if os.environ.get("MODELDEPLOY_E2E_CLUSTER") != "existing":
        return None
    kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    pod_cidr = os.environ.get("MODELDEPLOY_E2E_POD_CIDR", POD_CIDR)
    return ClusterHandle(Path(kubeconfig), pod_cidr or None)


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 30) -> None:
    """SIGTERM a process and wait for it, SIGKILL after ``grace`` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class OperatorProcess:
    """``modeldeploy run`` as a subprocess serving one namespace, with its metrics."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        resync_seconds: float = 1.0,
        env: Mapping[str, str] | None = None,
        peering: str | None = None,
        *,
        autoscale_interval_seconds: float = 2.0,
        settings_file: Path | None = None,
        identity: str | None = None,
        lease: Mapping[str, str | float] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        # POD_ID names the process (its Lease holder identity, in its user agent).
        self.identity = identity
        # Leader election (--leader-elect) with these flags, e.g. {"lease-namespace": ns}.
        self.lease = dict(lease) if lease is not None else None
        self.namespace = namespace
        self.resync_seconds = resync_seconds
        self.autoscale_interval_seconds = autoscale_interval_seconds
        self.settings_file = settings_file  # modeldeploy run --config (e.g. the webhook)
        self.peering = peering  # a KopfPeering of the namespace; None: --standalone
        self.env = dict(env or {})  # added to the operator's environment (HF_ENDPOINT, ...)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="modeldeploy-operator-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> OperatorProcess:
        """Start the operator; with ``wait``, until its health endpoint answers 200."""
        argv = [
            sys.executable, "-m", "modeldeploy", "run",
            *self._coordination(),
            *(["--config", str(self.settings_file)] if self.settings_file else []),
            "--namespace", self.namespace,
            "--resync-seconds", str(self.resync_seconds),
            "--autoscale-interval-seconds", str(self.autoscale_interval_seconds),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--bind-address", "127.0.0.1",
        ]  # fmt: skip
        env = {
            **os.environ,
            **self.env,
            **({"POD_ID": self.identity} if self.identity else {}),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.log()}")
            return self.health()[0] == 200

        if wait:
            wait_until(healthy, timeout=60, what="the operator's health endpoint")
        return self

    def _coordination(self) -> list[str]:
        if self.lease is not None:
            flags = [(f"--{name}", str(value)) for name, value in self.lease.items()]
            return ["--leader-elect", *(part for flag in flags for part in flag)]
        return ["--peering", self.peering] if self.peering else ["--standalone"]

    def health(self, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
        """The health endpoint's status code and JSON body; (0, {}) when it does not answer."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.health_port}{path}", timeout=2)
        except httpx.HTTPError:
            return 0, {}
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the Prometheus samples ``name`` whose labels include ``labels``."""
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        return sum(
            float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    def reconciles(self) -> float:
        """Reconcile passes so far, whatever their result."""
        return self.metric("modeldeploy_reconcile_total")

    def kill(self) -> None:
        """SIGKILL the operator (a crash)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM the operator and wait for it to exit."""
        stop_process(self.process)


class ModelDeploymentApi:
    """ModelDeployments of one namespace, and the typed clients tests read children with."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        api = cluster.api_client()
        self.cluster, self.namespace = cluster, namespace
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def create(self, md: dict[str, Any]) -> None:
        """Create a ModelDeployment."""
        self.custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, md
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        """Merge-patch a ModelDeployment's spec."""
        self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def md(self, name: str) -> dict[str, Any]:
        """A ModelDeployment as the API server holds it."""
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, name
        )
        return found

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        """One condition of a ModelDeployment's status, None when absent."""
        conditions = self.md(name).get("status", {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)
