"""The gateway setup shared by ``tests/e2e/test_gateway*.py`` and ``bench/scale_from_zero.py``.

``GatewayProcess`` runs ``modeldeploy gateway`` as a subprocess on 127.0.0.1 for one
namespace (its log in a temporary file, ``POD_NAME`` its identity on the demand Lease);
``small_gemma`` is the ModelDeployment those tests and the bench serve through it: gemma
270M (GGUF, CPU) from a stand-in mirror with its sha256 pinned, one slot of 512 tokens and
one CPU, small enough for two on the local cluster's CPU node.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from e2e.cluster.local import REPO, free_port
from e2e.harness import stop_process, wait_until
from e2e.mirror import ModelMirror
from e2e.models import GEMMA_FILE, GEMMA_SHA256

PROMPT = [{"role": "user", "content": "Name a colour of the sky."}]


def small_gemma(mirror: ModelMirror, name: str) -> dict[str, Any]:
    """The CPU GGUF example from the mirror, named and served as ``name``, one slot of 512
    tokens, 1 CPU."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"] = {"name": name}
    md["spec"]["model"].update(mirror.pinned_model(GEMMA_FILE, GEMMA_SHA256), servedName=name)
    small = {"cpu": "1", "memory": "1536Mi"}
    md["spec"]["serving"] = {
        "contextLength": 512,
        "maxConcurrentRequests": 1,
        "resources": {"requests": small, "limits": small},
    }
    return md


def gemma_at_zero(mirror: ModelMirror, name: str, idle_seconds: float) -> dict[str, Any]:
    """``small_gemma`` autoscaled between 0 and 1 replicas, starting at zero, back to zero
    after ``idle_seconds`` without load."""
    md = small_gemma(mirror, name)
    md["spec"]["replicas"] = 0
    md["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 1,
        "scaleDownDelaySeconds": idle_seconds,
    }
    return md


def bearer(key: str | None) -> dict[str, str]:
    """The Authorization header for ``key`` (none for None)."""
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


class GatewayProcess:
    """``modeldeploy gateway`` as a subprocess on 127.0.0.1, for one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str, *flags: str) -> None:
        self.kubeconfig, self.namespace, self.flags = kubeconfig, namespace, flags
        self.port = free_port()
        self.identity = f"gateway-e2e-{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="modeldeploy-gateway-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """The gateway's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GatewayProcess:
        """Start the gateway and wait (bounded) until its /healthz answers."""
        argv = [
            sys.executable, "-m", "modeldeploy", "gateway",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--namespace", self.namespace, "--kubeconfig", str(self.kubeconfig),
            *self.flags,
        ]  # fmt: skip
        env = {**os.environ, "POD_NAME": self.identity, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited early:\n{self.log()}")
            try:
                return httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="the gateway's /healthz")
        return self

    def models(self, key: str | None = None) -> httpx.Response:
        """GET /v1/models, with ``key`` as a bearer token when given."""
        return httpx.get(f"{self.base}/v1/models", headers=bearer(key), timeout=10)

    def listed(self, key: str | None = None) -> list[str] | None:
        """The model ids /v1/models lists, None unless it answers 200."""
        response = self.models(key)
        return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else None

    def chat(self, model: str, key: str | None = None, timeout: float = 120) -> httpx.Response:
        """A short greedy chat completion through the gateway."""
        body = {"model": model, "messages": PROMPT, "max_tokens": 8, "temperature": 0}
        return httpx.post(
            f"{self.base}/v1/chat/completions", json=body, headers=bearer(key), timeout=timeout
        )

    def openai(self, key: str = "unused") -> openai.OpenAI:
        """The OpenAI client on the gateway (no retries: every answer is the gateway's)."""
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key=key, max_retries=0, timeout=120)

    def log(self) -> str:
        """Everything the gateway printed so far."""
        return self.log_path.read_text(errors="replace")

    def assert_watched_without_failure(self) -> None:
        """No list or watch of discovery failed (it would have retried after a backoff)."""
        assert "listing or watching" not in self.log(), self.log()[-3000:]

    def stop(self) -> None:
        """SIGTERM the gateway; it must exit within the grace period."""
        stop_process(self.process, grace=20)
