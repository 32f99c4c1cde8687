"""Forwarding one request to its target's pods: the pick, the retries, relaying the answer.

A request is tried on another pod only while nothing was sent to its client: when the
connection fails, or the pod answers 502 or 503 (its body is read, so nothing else is
lost). Any other answer is relayed as it arrives, chunk by chunk, so SSE streams pass
unbuffered; a client that goes away cancels the handler, which closes the upstream
connection, and a pod that fails mid-stream leaves its client a truncated answer. Failed
pods are ejected by the ``Balancer``. The client's key and affinity header stay here.

A kept-alive connection the pod closed as the request went out on it (servers close idle
ones: llama-server and uvicorn after 5 s) is not the pod failing: the request is sent
once more to the same pod on a new connection before it counts as a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import aiohttp
from aiohttp import web
from yarl import URL

from modeldeploy.gateway.metrics import GatewayMetrics
from modeldeploy.gateway.routing import (
    AFFINITIES,
    Affinity,
    Backend,
    Balancer,
    ModelTarget,
    prompt_prefix,
)
from modeldeploy.serve.adapter_router import forwardable_headers, openai_error

log = logging.getLogger(__name__)

AFFINITY_HEADER = "X-Modeldeploy-Affinity"
RETRIED_STATUSES = frozenset({502, 503})
_NOT_FORWARDED = ("Authorization", AFFINITY_HEADER)


class Forwarder:
    """Sends requests to the backends the balancer picks, and relays their answers."""

    def __init__(self, balancer: Balancer, metrics: GatewayMetrics, retry_after: int) -> None:
        self._balancer, self._metrics, self._retry_after = balancer, metrics, retry_after

    async def forward(
        self,
        session: aiohttp.ClientSession,
        request: web.Request,
        target: ModelTarget,
        *,
        raw: bytes,
        body: dict[str, Any],
        arrived: float,
        wait_if_unreached: bool = False,
    ) -> web.StreamResponse | None:
        """The first answer that is not a retried failure, trying each backend once; with
        ``wait_if_unreached``, None when no backend accepted the connection (nothing was
        sent: the caller may wait for the pods to change and try again)."""
        prefix = prompt_prefix(request.path, body)
        wanted = request.headers.get(AFFINITY_HEADER, "").strip().lower()
        affinity = cast(Affinity, wanted) if wanted in AFFINITIES else None
        headers = forwardable_headers(request.headers)
        for name in _NOT_FORWARDED:
            headers.popall(name, None)
        message = f"No pod of `{target.model}` could be reached."
        answer = openai_error(502, message, "upstream_unavailable", "server_error")
        tried: set[str] = set()
        reached = False
        while backend := self._balancer.pick(target, prefix, frozenset(tried), affinity):
            tried.add(backend.name)
            url = URL.build(scheme="http", host=backend.host, port=backend.port, path=request.path)
            self._balancer.begin(backend)
            try:
                try:
                    upstream = await _post(session, url, headers, raw)
                except aiohttp.ClientError as error:
                    self._failed(target, backend, "connect", error)
                    continue
                reached = True
                async with upstream:
                    if upstream.status not in RETRIED_STATUSES:
                        self._balancer.succeeded(backend)
                        return await self._relay(request, target, backend, upstream, arrived)
                    answer = await _upstream_error(upstream)
                    self._failed(target, backend, "status", f"HTTP {upstream.status}")
            finally:
                self._balancer.end(backend)
        if wait_if_unreached and not reached:
            return None
        if answer.status == 503:
            answer.headers.setdefault("Retry-After", str(self._retry_after))
        return answer

    async def _relay(
        self,
        request: web.Request,
        target: ModelTarget,
        backend: Backend,
        upstream: aiohttp.ClientResponse,
        arrived: float,
    ) -> web.StreamResponse:
        if upstream.status >= 400 and upstream.content_type != "application/json":
            return await _upstream_error(upstream)
        headers = forwardable_headers(upstream.headers)
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=headers
        )
        await response.prepare(request)
        timed = False
        while True:
            try:
                chunk = await upstream.content.readany()
            except aiohttp.ClientError as error:
                self._failed(target, backend, "stream", error)
                raise  # aiohttp drops the connection: the client sees a truncated answer
            if not timed:
                since = asyncio.get_running_loop().time() - arrived
                self._metrics.time_to_first_byte.labels(target.model).observe(since)
                timed = True
            if not chunk:
                break
            await response.write(chunk)
        await response.write_eof()
        return response

    def _failed(self, target: ModelTarget, backend: Backend, kind: str, error: object) -> None:
        self._balancer.failed(backend)
        self._metrics.upstream_errors.labels(target.model, kind).inc()
        log.warning("pod %s of %s failed (%s): %s", backend.name, target.model, kind, error)


async def _post(
    session: aiohttp.ClientSession, url: URL, headers: Any, raw: bytes
) -> aiohttp.ClientResponse:
    """POST, and once more when the connection was closed under the request (not refused)."""
    try:
        return await session.post(url, headers=headers, data=raw)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
        if isinstance(error, aiohttp.ClientConnectorError):
            raise  # no connection could be made: the pod is down
        # aiohttp drops the closed connection from its pool, so this one is new (or another
        # kept-alive one that is still open).
        return await session.post(url, headers=headers, data=raw)


async def _upstream_error(upstream: aiohttp.ClientResponse) -> web.Response:
    """The upstream's error as an OpenAI error: its own JSON one, else one worded here."""
    status = upstream.status
    with contextlib.suppress(aiohttp.ClientError, ValueError):
        body = await upstream.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return web.json_response(body, status=status)
    kind = "server_error" if status >= 500 else "invalid_request_error"
    message = f"The model server answered HTTP {status}."
    return openai_error(status, message, "upstream_error", kind)
