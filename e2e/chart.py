"""The Helm chart in e2e tests: render it, run the operator as the chart's ServiceAccount.

The local cluster's pods are simulated (kwok), so the chart's operator pod is admitted and
scheduled but runs nothing. ``ChartOperator`` runs the real operator on this machine in
its place, with exactly what the pod would have: the settings file from the chart's
ConfigMap and a token of the chart's ServiceAccount from the TokenRequest API, so every
call it makes is authorised by the chart's RBAC and nothing else.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client

from e2e.cluster.local import REPO, free_port
from e2e.cluster.tools import client_bin_dir
from e2e.harness import ClusterHandle, stop_process, wait_until

CHART = REPO / "charts" / "modeldeploy"
VALUE_SETS = CHART / "ci"  # the value sets every chart check renders (*-values.yaml)


def helm_template(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "modeldeploy",
    namespace: str = "modeldeploy-system",
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values``, as a list of objects."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(dict(values or {}), file)
        file.flush()
        result = subprocess.run(
            [str(client_bin_dir() / "helm"), "template", release, str(CHART),
             "--namespace", namespace, "--values", file.name, *extra],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def service_account_kubeconfig(
    cluster: ClusterHandle, namespace: str, account: str, path: Path, seconds: int = 3600
) -> Path:
    """Write a kubeconfig that authenticates as a ServiceAccount with a TokenRequest token
    (the cluster's server and CA from the admin kubeconfig)."""
    core = client.CoreV1Api(cluster.api_client())
    request = {"spec": {"expirationSeconds": seconds}}
    token = core.create_namespaced_service_account_token(account, namespace, request).status.token
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    contexts = {c["name"]: c["context"] for c in admin["contexts"]}
    clusters = {c["name"]: c["cluster"] for c in admin["clusters"]}
    server = clusters[contexts[admin["current-context"]]["cluster"]]
    user = f"system:serviceaccount:{namespace}:{account}"
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


class ChartOperator:
    """``modeldeploy run --config <the chart's settings>`` as a given ServiceAccount.

    Ports and bind address are overridden by flags (the settings file says 0.0.0.0:9090,
    as in the pod); everything else comes from the settings file.
    """

    def __init__(self, kubeconfig: Path, settings: str, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.metrics_port = free_port()
        self.health_port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="modeldeploy-chart-operator-"))
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(settings)
        self.log_path = workdir / "operator.log"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ChartOperator:
        """Start the operator; with ``wait``, until its health endpoint answers."""
        argv = [
            sys.executable, "-m", "modeldeploy", "run",
            "--config", str(self.config_path),
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--bind-address", "127.0.0.1",
            "--log-format", "plain",
            *self.extra,
        ]  # fmt: skip
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            wait_until(self.healthy, timeout=60, what="the operator's health endpoint")
        return self

    def healthy(self) -> bool:
        """True once the liveness endpoint answers; raises if the process has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited early:\n{self.log()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).is_success
        except httpx.HTTPError:
            return False

    def health(self) -> dict[str, Any]:
        """The health endpoint's JSON body (healthy, leader, problems); {} when it is down."""
        try:
            found = httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def log(self) -> str:
        """Everything the operator printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM the operator and wait for it to exit."""
        stop_process(self.process)


def scan(checkov: Path, out: Path) -> int:
    """Render the chart with every value set into ``out`` and scan it with checkov, offline
    (its settings, and the reason for each skipped check: charts/modeldeploy/.checkov.yaml)."""
    out.mkdir(parents=True, exist_ok=True)
    for values in sorted(VALUE_SETS.glob("*-values.yaml")):
        result = subprocess.run(
            [str(client_bin_dir() / "helm"), "template", "modeldeploy", str(CHART),
             "--namespace", "modeldeploy-system", "--values", str(values)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        (out / values.name.replace("-values", "")).write_text(result.stdout)
    config = CHART / ".checkov.yaml"
    command = [str(checkov), "--config-file", str(config), "--directory", str(out)]
    print("[chart-check] " + " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m e2e.chart scan``: the chart's security scan."""
    parser = argparse.ArgumentParser(prog="python -m e2e.chart")
    commands = parser.add_subparsers(dest="command", required=True)
    scan_parser = commands.add_parser("scan", help="render every value set and run checkov")
    scan_parser.add_argument("--checkov", type=Path, required=True, help="the checkov binary")
    scan_parser.add_argument("--out", type=Path, required=True, help="where to render")
    args = parser.parse_args(argv)
    return scan(args.checkov, args.out)


if __name__ == "__main__":
    sys.exit(main())
