"""What the gateway costs, side by side in one run (not a test; prints JSON, then ratios).

One ``modeldeploy serve`` of gemma 270M (examples/local/gemma-270m.yaml) and one gateway
process in front of it, with a static routing table (no cluster: the same ``Gateway`` the
``modeldeploy gateway`` command runs, without its discovery):

- throughput and time to first token of streaming chat completions at concurrency 1 and 4,
  straight to the engine and through the gateway, alternating round by round so load from
  other work falls on both alike (``bench.runtime``'s rounds and summary);
- time to first token in pairs at concurrency 1 (``--pairs``, 40): each pair is one request
  straight to the engine and one through the gateway with prompts alike, back to back,
  in alternating order; the median of the pairs' differences is what the gateway adds, with
  the engine's drift between rounds taken out;
- the gateway's resident memory while it holds ``--idle-streams`` requests (500) for a
  model at zero replicas, against its memory idle.

The time from a request at zero replicas to its first token, split into decision,
scheduling, fetch from a warm cache and engine start, needs a cluster, the operator and the
pod runner: its sibling ``bench/scale_from_zero.py`` measures it (docs/gateway.md).

    .venv/bin/python -m bench.gateway [--rounds 3] [--tokens 32] [--idle-streams 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from e2e.models import claims_root, ensure_gemma
from e2e.runtime import LocalServe, free_port, llama_server_binary, wait_until

from bench.runtime import EXAMPLE, SERVED, round_at, stream_one, summary

IDLE_MODEL = "sleeping-model"


def serve_gateway(port: int, backend: str, max_held: int) -> None:
    """The gateway process: ``SERVED`` on ``backend``, and a model at zero that is held."""
    from modeldeploy.gateway.keys import KeyRing
    from modeldeploy.gateway.routing import Backend, ModelTarget, RoutingTable
    from modeldeploy.gateway.server import Gateway, GatewaySettings

    host, _, backend_port = backend.rpartition(":")
    table = RoutingTable(
        [
            ModelTarget(
                SERVED, "bench", "gemma", (Backend("bench/gemma-0", host, int(backend_port)),)
            ),
            ModelTarget(IDLE_MODEL, "bench", "sleeping", (), scale_from_zero=True),
        ]
    )
    settings = GatewaySettings(hold_seconds=3600, max_held_per_model=max_held)
    asyncio.run(Gateway(table, KeyRing(), settings).serve("127.0.0.1", port))


def rss_mib(pid: int) -> float:
    """A process's resident memory (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def held(base: str) -> float:
    """The gateway's held-requests gauge, summed."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("modeldeploy_gateway_held_requests")
    )


async def hold_idle_streams(base: str, count: int, pid: int) -> dict[str, float]:
    """Open ``count`` streams to the model at zero; the gateway's RSS while it holds them."""
    idle = rss_mib(pid)
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    body = {"model": IDLE_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(timeout=httpx.Timeout(3600, connect=30), limits=limits) as client:
        tasks = [
            asyncio.create_task(client.post(f"{base}/v1/chat/completions", json=body))
            for _ in range(count)
        ]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None,
            lambda: wait_until(lambda: held(base) >= count, timeout=120, what="streams held"),
        )
        holding = rss_mib(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "streams": count,
        "idle_rss_mib": round(idle, 1),
        "holding_rss_mib": round(holding, 1),
        "kib_per_stream": round((holding - idle) * 1024 / count, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; JSON on stdout, the ratios on stderr."""
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests-per-stream", type=int, default=2)
    parser.add_argument("--idle-streams", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--serve-gateway", nargs=2, metavar=("PORT", "BACKEND"))
    args = parser.parse_args(argv)
    if args.serve_gateway:
        serve_gateway(int(args.serve_gateway[0]), args.serve_gateway[1], args.idle_streams + 10)
        return 0
    ensure_gemma()
    env = {"MODELDEPLOY_LLAMA_SERVER": str(llama_server_binary())}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        engine = LocalServe(
            EXAMPLE, cache=Path(tmp) / "cache", pvc_root=claims_root(), extra_env=env
        )
        with engine:
            direct = engine.url.removesuffix("/v1")
            port = free_port()
            backend = direct.removeprefix("http://")
            command = [sys.executable, "-m", "bench.gateway", "--serve-gateway", str(port), backend]
            command += ["--idle-streams", str(args.idle_streams)]
            gateway = subprocess.Popen(command, env=dict(os.environ))
            through = f"http://127.0.0.1:{port}"
            try:
                wait_until(lambda: _healthy(through), timeout=60, what="the gateway")
                results = _throughput(direct, through, args)
                results["paired_ttft"] = _paired_ttft(direct, through, args.pairs)
                results["idle_streams"] = asyncio.run(
                    hold_idle_streams(through, args.idle_streams, gateway.pid)
                )
            finally:
                gateway.terminate()
                gateway.wait(timeout=30)
    print(json.dumps(results, indent=2))
    for concurrency in (1, 4):
        one = results[f"concurrency_{concurrency}"]
        ratio = one["gateway"]["tokens_per_s"] / one["direct"]["tokens_per_s"]
        added = one["gateway"]["ttft_ms_p50"] - one["direct"]["ttft_ms_p50"]
        print(
            f"concurrency {concurrency}: gateway/direct tokens/s {ratio:.3f} (target >= 0.97); "
            f"added median TTFT {added:+.1f} ms (target <= 5 ms)",
            file=sys.stderr,
        )
    paired = results["paired_ttft"]
    print(
        f"paired TTFT at concurrency 1 ({paired['pairs']} pairs): added median "
        f"{paired['added_ms_median']:+.1f} ms (target <= 5 ms; direct p50 "
        f"{paired['direct_ms_p50']} ms)",
        file=sys.stderr,
    )
    idle = results["idle_streams"]
    print(
        f"{idle['streams']} held streams: {idle['holding_rss_mib']} MiB "
        f"(idle {idle['idle_rss_mib']} MiB, {idle['kib_per_stream']} KiB each)",
        file=sys.stderr,
    )
    return 0


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _paired_ttft(direct: str, through: str, pairs: int) -> dict[str, Any]:
    """Time to first token of one request each way per pair, the order alternating."""
    differences, straight, gated = [], [], []
    for index in range(pairs):
        order = [("direct", direct), ("gateway", through)]
        if index % 2:
            order.reverse()
        # A prompt of its own for each request, alike up to the number: llama-server reuses
        # the cached prefix of the request before, so an identical prompt would make the
        # second of a pair faster whichever way it went.
        firsts = {
            name: stream_one(base, f"Name a colour, number {2 * index + leg}.", 2)[1]
            for leg, (name, base) in enumerate(order)
        }
        straight.append(firsts["direct"])
        gated.append(firsts["gateway"])
        differences.append(firsts["gateway"] - firsts["direct"])
    return {
        "pairs": pairs,
        "direct_ms_p50": round(statistics.median(straight) * 1000, 1),
        "gateway_ms_p50": round(statistics.median(gated) * 1000, 1),
        "added_ms_median": round(statistics.median(differences) * 1000, 2),
    }


def _throughput(direct: str, through: str, args: argparse.Namespace) -> dict[str, Any]:
    """Rounds at concurrency 1 and 4, direct and through the gateway alternately."""
    out: dict[str, Any] = {}
    for concurrency in (1, 4):
        samples: dict[str, list[Any]] = {"direct": [], "gateway": []}
        requests = concurrency * args.requests_per_stream
        for _ in range(args.rounds):
            for name, base in (("direct", direct), ("gateway", through)):
                samples[name] += round_at(base, concurrency, requests, args.tokens)
        out[f"concurrency_{concurrency}"] = {
            name: summary(found, args.tokens) for name, found in samples.items()
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
