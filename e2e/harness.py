"""What e2e tests hold on to: a handle on a cluster (local or existing) and polling helpers.

The same tests run against the local control plane that ``LocalCluster`` starts and,
with ``MODELDEPLOY_E2E_CLUSTER=existing``, against whatever ``KUBECONFIG`` points at
(a kind cluster with the kwok pool, see ``e2e/kind/``).
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config

from e2e.cluster.local import NODES_FILE, POD_CIDR
from e2e.cluster.tools import client_bin_dir

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
