"""``make demo``: the operator doing its job on the local cluster.

Installs the CRD, starts the operator in the background (stopped by ``make cluster-down``),
applies every example into the ``demo`` namespace, waits until each one is Ready or
honestly refused, and prints the ModelDeployments and where their pods landed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, install_crds, wait_until

NAMESPACE = "demo"
OPERATOR_PID = "operator.pid"


def _print(cluster: ClusterHandle, *args: str) -> None:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    print(cluster.kubectl(*args).stdout, flush=True)


def start_operator(workdir: Path) -> int:
    """Start ``modeldeploy run`` detached, logging under the cluster's logs/."""
    stop_operator(workdir)
    log = (workdir / "logs" / "operator.log").open("ab")
    env = {**os.environ, "KUBECONFIG": str(workdir / "kubeconfig")}
    process = subprocess.Popen(
        [sys.executable, "-m", "modeldeploy", "run", "--standalone", "--resync-seconds", "30",
         "--metrics-port", "0", "--health-port", "0"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    (workdir / OPERATOR_PID).write_text(str(process.pid))
    return process.pid


def stop_operator(workdir: Path) -> None:
    """Stop a demo operator started earlier, if any."""
    pid_file = workdir / OPERATOR_PID
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def settled(cluster: ClusterHandle, name: str) -> bool:
    """Ready, or refused with a reason a person can read."""
    out = cluster.kubectl(
        "get", "mdep", name, "-n", NAMESPACE, "-o",
        "jsonpath={.status.phase}", check=False,
    ).stdout  # fmt: skip
    return out in {"Ready", "Degraded", "Failed", "Pending"}


def run_demo(workdir: Path) -> int:
    """Run the demo against the cluster in ``workdir``."""
    cluster = ClusterHandle(workdir / "kubeconfig", None, workdir=workdir)
    _print(cluster, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count")
    install_crds(cluster)
    pid = start_operator(workdir)
    print(f"operator running (pid {pid}), log: {workdir / 'logs' / 'operator.log'}", flush=True)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    examples = sorted((REPO / "examples").glob("*.yaml"))
    _print(cluster, "apply", "-n", NAMESPACE, *(arg for e in examples for arg in ("-f", str(e))))
    listed = cluster.kubectl(
        "get", "mdep", "-n", NAMESPACE, "-o", "jsonpath={.items[*].metadata.name}"
    )
    names = listed.stdout.split()
    started = time.monotonic()
    for name in names:
        wait_until(lambda n=name: settled(cluster, n), timeout=120, what=f"{name} to settle")
    print(f"all {len(names)} ModelDeployments settled in {time.monotonic() - started:.1f}s\n")
    _print(cluster, "get", "mdep", "-n", NAMESPACE, "-o", "wide")
    _print(cluster, "get", "pods", "-n", NAMESPACE, "-o", "wide")
    print("Why each one is where it is:  kubectl describe mdep -n demo NAME", flush=True)
    print("Stop everything:              make cluster-down", flush=True)
    return 0
