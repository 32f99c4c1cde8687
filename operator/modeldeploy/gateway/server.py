"""The gateway's HTTP server: one OpenAI endpoint that proxies each request to a Ready pod.

It owns the HTTP surface and a request's way in: the API key (``keys``), the target the
body's ``model`` names (``routing``), holding it while the model is at zero (``holding``),
then ``proxy`` forwards it. Also ``/v1/models`` (what the key may reach), ``/healthz`` and
``/metrics``, and the life cycle: ``serve`` on the caller's loop, or ``start``/``stop`` on a
thread of its own. aiohttp serves and proxies, as in ``serve.adapter_router``, whose OpenAI
errors and body parsing are reused. Keys, headers and bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from aiohttp import web

from modeldeploy.gateway.holding import WAKE_INTERVAL_SECONDS, HoldError, HoldQueue, Wake
from modeldeploy.gateway.keys import Grant, KeyRing
from modeldeploy.gateway.metrics import GatewayMetrics
from modeldeploy.gateway.proxy import Forwarder
from modeldeploy.gateway.routing import INFERENCE_PATHS, Balancer, ModelTarget, RoutingTable
from modeldeploy.serve.adapter_router import InvalidBodyError, openai_error, parse_body

log = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0
UPSTREAM_KEEPALIVE_S = 3.0  # below the engines' 5 s keep-alive (_upstream_session)
_MODEL = web.RequestKey("model", str)  # the target's name, once the request may reach it


@dataclass(frozen=True)
class GatewaySettings:
    """How long and how many requests are held, the body limit, the connect timeout, and
    how often the held count is signalled."""

    hold_seconds: float = 300.0
    max_held_per_model: int = 64
    retry_after_seconds: int = 10
    max_body_bytes: int = 16 << 20
    connect_timeout: float = 5.0
    # Keep it above wake.MIN_INTERVAL_S, or the Lease writer drops the calls in between.
    wake_interval_seconds: float = WAKE_INTERVAL_SECONDS


class _RefusedError(Exception):
    """A request answered with an OpenAI error of the gateway's own."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Gateway:
    """The gateway's aiohttp application, served by ``serve`` or on a thread by ``start``.

    ``wake(target, held)`` is called on the event loop for a model at zero, with the
    requests held for its ModelDeployment, and must return at once (``holding``).
    """

    def __init__(
        self,
        table: RoutingTable,
        keys: KeyRing,
        settings: GatewaySettings = GatewaySettings(),
        wake: Wake | None = None,
    ) -> None:
        self.table, self.keys, self.settings = table, keys, settings
        self.port = 0
        self.balancer = Balancer()
        self.metrics = GatewayMetrics(self._inflight)
        self._holds = HoldQueue(
            table,
            self.metrics,
            settings.hold_seconds,
            settings.max_held_per_model,
            wake,
            wake_interval=settings.wake_interval_seconds,
        )
        self._forwarder = Forwarder(self.balancer, self.metrics, settings.retry_after_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._created = int(time.time())
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        table.subscribe(self._on_table_replaced)

    def application(self) -> web.Application:
        """The aiohttp application; it opens its upstream session on startup."""
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        for path in INFERENCE_PATHS:
            app.router.add_post(path, self._infer)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        app.cleanup_ctx.append(self._upstream_session)
        app.on_shutdown.append(self._shut_down)
        return app

    async def serve(self, host: str, port: int) -> None:
        """Serve on ``host``:``port`` until cancelled."""
        runner = await self._listen(host, port)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            await runner.cleanup()

    def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on a daemon thread; returns the bound port (a bind error is raised here)."""
        if self._thread is not None:
            raise RuntimeError("the gateway was already started")
        loop = asyncio.new_event_loop()
        try:
            self._runner = loop.run_until_complete(self._listen(host, port))
        except BaseException:
            loop.close()
            raise
        self._thread = threading.Thread(target=loop.run_forever, name="gateway", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        """Stop serving, ending open requests within ``DRAIN_SECONDS`` and a margin."""
        if self._loop is None or self._thread is None or self._runner is None:
            return
        loop, cleanup = self._loop, self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(cleanup, loop).result(DRAIN_SECONDS + 5.0)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(DRAIN_SECONDS)
        loop.close()
        self._runner = None

    async def _listen(self, host: str, port: int) -> web.AppRunner:
        app = self.application()
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=DRAIN_SECONDS
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = int(runner.addresses[0][1])
        log.info("gateway listening on %s:%d", host, self.port)
        return runner

    async def _upstream_session(self, _: web.Application) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout)
        # Idle upstream connections are let go before the engines' own keep-alive timeout
        # (5 s in llama-server's cpp-httplib and in vLLM's uvicorn), not after it (aiohttp's
        # default is 15 s), so few requests go out on a connection the pod already closed.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE_S)
        async with aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, connector=connector
        ) as self._session:
            yield

    async def _shut_down(self, _: web.Application) -> None:
        self._holds.close()  # held requests answer 503 and their clients retry elsewhere

    def _on_table_replaced(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                self._loop.call_soon_threadsafe(self._table_changed)

    def _table_changed(self) -> None:
        targets = self.table.targets()
        self.balancer.retain(b.name for target in targets for b in target.backends)
        self._holds.table_changed()

    def _inflight(self) -> dict[str, int]:
        idle = {b.name: 0 for target in self.table.targets() for b in target.backends}
        return idle | self.balancer.inflight()

    def _grant(self, request: web.Request) -> Grant | None:
        """The key's grant, or None where keys are not enforced; a 401 refusal otherwise."""
        if not self.keys.enforced:
            return None
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        grant = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if grant is None:
            message = "A valid API key is required: send `Authorization: Bearer KEY`."
            raise _RefusedError(401, message, "invalid_api_key")
        return grant

    async def _models(self, request: web.Request) -> web.Response:
        try:
            grant = self._grant(request)
        except _RefusedError as refused:
            return self._refusal(refused)
        card = {"object": "model", "created": self._created, "owned_by": "modeldeploy"}
        cards = [
            {"id": target.model, **card}
            for target in self.table.targets()
            if grant is None or grant.allows(target)
        ]
        return web.json_response({"object": "list", "data": cards})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _metrics(self, _: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _unknown(self, request: web.Request) -> web.Response:
        message = f"Unknown request URL: {request.method} {request.path}."
        return openai_error(404, message, "unknown_url")

    async def _infer(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        code = "aborted"  # what a request that ends in an exception counts as
        try:
            response = await self._answer(request, arrived)
            code = str(response.status)
            return response
        finally:
            self.metrics.requests.labels(request.get(_MODEL, ""), code).inc()

    async def _answer(self, request: web.Request, arrived: float) -> web.StreamResponse:
        try:
            grant = self._grant(request)
            raw = await request.read()
            body = parse_body(raw)
            target = self._target(body, grant)
            request[_MODEL] = target.model
            if not target.backends:
                target = await self._holds.hold(target)
        except web.HTTPRequestEntityTooLarge:
            message = f"The request body exceeds {self.settings.max_body_bytes} bytes."
            return openai_error(413, message, "request_too_large")
        except InvalidBodyError as error:
            return openai_error(400, str(error), "invalid_request_body")
        except HoldError as error:
            status = 404 if error.code == "model_not_found" else 503
            return self._refusal(_RefusedError(status, str(error), error.code))
        except _RefusedError as refused:
            return self._refusal(refused)
        session = cast(aiohttp.ClientSession, self._session)
        # A model that scales from zero: a pod that has just turned Ready may not accept
        # connections yet (or is being replaced); while the hold time lasts, wait for its
        # pods to change (at most a second) and try again, since nothing was sent yet.
        deadline = arrived + self.settings.hold_seconds
        while True:
            loop = asyncio.get_running_loop()
            patient = target.scale_from_zero and loop.time() < deadline
            answer = await self._forwarder.forward(
                session, request, target, raw=raw, body=body, arrived=arrived,
                wait_if_unreached=patient,
            )  # fmt: skip
            if answer is not None:
                return answer
            await self._holds.next_change(min(1.0, deadline - loop.time()))
            target = self.table.get(target.model) or target

    def _target(self, body: dict[str, Any], grant: Grant | None) -> ModelTarget:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _RefusedError(400, "The request body must name a `model`.", "model_required")
        target = self.table.get(name)
        if target is None or (grant is not None and not grant.allows(target)):
            raise _RefusedError(404, f"The model `{name}` does not exist.", "model_not_found")
        if not target.backends and not target.scale_from_zero:
            message = f"The model `{name}` has no Ready pod."
            raise _RefusedError(503, message, "model_unavailable")
        return target

    def _refusal(self, refused: _RefusedError) -> web.Response:
        kind = "server_error" if refused.status >= 500 else "invalid_request_error"
        response = openai_error(refused.status, str(refused), refused.code, kind)
        if refused.status == 503:
            response.headers["Retry-After"] = str(self.settings.retry_after_seconds)
        return response
