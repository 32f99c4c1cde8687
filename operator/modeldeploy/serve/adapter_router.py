"""The in-pod OpenAI front that serves llama-server's LoRA adapters by model name.

llama-server serves one model and ignores a request's ``model``. It loads adapters with
``--lora FILE`` (ids 0, 1, ... in flag order; ``--lora-init-without-apply`` sets their global
scale to 0) and applies them per request from a body field ``"lora": [{"id": I, "scale":
S}]``: a non-empty list sets every unlisted adapter to 0, an absent or empty one means the
global scales. This module owns the mapping from OpenAI model names to that field: the pure
part (``RouteTable``, ``parse_body``, ``route_body``, ``models_listing``) and
``AdapterRouter``, an aiohttp proxy in front of llama-server that answers ``/v1/models``
itself, rewrites inference bodies and passes everything else through, streaming responses
as they arrive. llama-server names its own alias as every response's ``model``; for an
adapter request the router puts the adapter's name there (``rename_model``,
``EventStreamRenamer``), as OpenAI and vLLM answer. It never logs bodies or headers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
# A response body or one event line longer than this passes through with its ``model``
# as llama-server wrote it: the router holds no more than this of a response to rename it.
MAX_RENAMED_BYTES = 4 * 1024 * 1024
MODELS_PATHS = frozenset({"/models", "/v1/models"})
# llama-server builds these tasks from the body's parameters (eval_llama_cmpl_schema), so
# the per-request ``lora`` applies; /responses keeps the field when converting to chat.
LORA_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/chat/completions"}
    | {"/v1/chat/completions", "/responses", "/v1/responses", "/infill"}
)
# These run with the global scales whatever the body says: embedding and rerank tasks take
# no body parameters, and the Anthropic converter drops ``lora``. Only the base is served.
GLOBAL_SCALE_PATHS = frozenset(
    {"/embedding", "/embeddings", "/v1/embeddings", "/rerank", "/reranking"}
    | {"/v1/rerank", "/v1/reranking", "/v1/messages"}
)
ROUTED_PATHS = LORA_PATHS | GLOBAL_SCALE_PATHS
# POST /lora-adapters sets the global scales, which the GLOBAL_SCALE_PATHS run with: the
# ModelDeployment fixes them at 0, so the router refuses to change them.
GLOBAL_SCALE_WRITE = "/lora-adapters"
# Hop-by-hop headers, and those aiohttp sets itself: bodies are rewritten or streamed.
_DROP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer"}
    | {"transfer-encoding", "upgrade", "expect", "host", "content-length"}
)


class RoutingError(ValueError):
    """A request the router refuses, with its HTTP status and OpenAI error code."""

    status = 400
    code = "invalid_request_body"


class UnknownModelError(RoutingError):
    """The body names a model this pod does not serve."""

    status = 404
    code = "model_not_found"


class InvalidBodyError(RoutingError):
    """The body is not a JSON object."""


class AdapterNotApplicableError(RoutingError):
    """An adapter named on an endpoint where llama-server applies no per-request adapter."""

    code = "adapter_not_supported"


@dataclass(frozen=True)
class AdapterRoute:
    """An OpenAI model name served as llama-server adapter ``index`` at ``scale``."""

    name: str
    index: int
    scale: float


@dataclass(frozen=True)
class RouteTable:
    """The base model's name and the adapters loaded with it."""

    base_name: str
    adapters: tuple[AdapterRoute, ...] = ()

    def __post_init__(self) -> None:
        names = [adapter.name for adapter in self.adapters]
        indexes = [adapter.index for adapter in self.adapters]
        if not self.base_name or not all(names):
            raise ValueError("model names must not be empty")
        if self.base_name in names:
            raise ValueError(f"adapter name {self.base_name!r} is the base model's name")
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names are not unique: {names}")
        if len(set(indexes)) != len(indexes) or any(i < 0 for i in indexes):
            raise ValueError(f"adapter indexes must be unique and non-negative: {indexes}")
        if not all(math.isfinite(adapter.scale) for adapter in self.adapters):
            raise ValueError("adapter scales must be finite")

    def adapter(self, model: object) -> AdapterRoute | None:
        """The adapter served under the name ``model``, if one is."""
        return next((a for a in self.adapters if a.name == model), None)

    def served(self) -> tuple[str, ...]:
        """Every model name served: the base, then the adapters."""
        return (self.base_name, *(adapter.name for adapter in self.adapters))


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body; ``InvalidBodyError`` if it is not one."""
    try:
        body = json.loads(raw)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidBodyError(f"The request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise InvalidBodyError("The request body must be a JSON object.")
    return body


def route_body(
    table: RouteTable, body: Mapping[str, Any], *, applies_lora: bool = True
) -> dict[str, Any]:
    """``body`` with the ``lora`` field that serves the model it names.

    The base (or no ``model``) gets every adapter at scale 0, explicitly, so a global scale
    changed through POST /lora-adapters does not leak into base requests. ``applies_lora``
    is false for endpoints that ignore ``lora``, where naming an adapter is refused.
    """
    model = body.get("model")
    if model is None or model == table.base_name:
        return {**body, "lora": [{"id": a.index, "scale": 0.0} for a in table.adapters]}
    adapter = table.adapter(model)
    if adapter is None:
        served = ", ".join(f"`{name}`" for name in table.served())
        raise UnknownModelError(f"The model `{model}` does not exist. Served: {served}.")
    if not applies_lora:
        raise AdapterNotApplicableError(
            f"The model `{model}` is a LoRA adapter, which this endpoint does not apply;"
            f" use `{table.base_name}`."
        )
    return {**body, "lora": [{"id": adapter.index, "scale": adapter.scale}]}


def rename_model(payload: bytes, name: str) -> bytes:
    """A JSON object's bytes with its ``model`` set to ``name``; anything else unchanged."""
    try:
        document = json.loads(payload)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return payload
    if not isinstance(document, dict) or "model" not in document:
        return payload
    document["model"] = name
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class EventStreamRenamer:
    """Sets ``model`` to ``name`` in each ``data:`` line of a server-sent event stream.

    Fed the stream's chunks in order, it returns every complete line at once (renamed) and
    holds back only a line not yet ended, so events still reach the client as they arrive.
    """

    name: str
    _pending: bytes = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete lines of what arrived so far, renamed."""
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        out = b"".join(self._rename_line(line) + b"\n" for line in lines)
        if len(self._pending) > MAX_RENAMED_BYTES:
            out, self._pending = out + self._pending, b""
        return out

    def flush(self) -> bytes:
        """What is held back at the end of the stream (a last line with no newline)."""
        out, self._pending = self._pending, b""
        return self._rename_line(out) if out else out

    def _rename_line(self, line: bytes) -> bytes:
        # An SSE field line is "data:" then one optional space (WHATWG HTML, 9.2.6).
        if not line.startswith(b"data:"):
            return line
        ending = b"\r" if line.endswith(b"\r") else b""
        value = line[5 : len(line) - len(ending)]
        space = b" " if value.startswith(b" ") else b""
        renamed = rename_model(value[len(space) :], self.name)
        return b"data:" + space + renamed + ending


def models_listing(table: RouteTable, created: int) -> dict[str, Any]:
    """The OpenAI model list: the base, then each adapter with ``parent`` the base."""
    cards = [(table.base_name, None)] + [(a.name, table.base_name) for a in table.adapters]
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "modeldeploy"}
        | {"parent": parent}
        for name, parent in cards
    ]
    return {"object": "list", "data": data}


def openai_error(
    status: int, message: str, code: str, kind: str = "invalid_request_error"
) -> web.Response:
    """An OpenAI-style error response: ``{"error": {"message", "type", "code"}}``."""
    error = {"message": message, "type": kind, "code": code}
    return web.json_response({"error": error}, status=status)


def forwardable_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """``headers`` less the hop-by-hop ones (and those named by ``Connection``)."""
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _DROP | named)


class AdapterRouter:
    """The proxy: serves on its own event loop in a daemon thread, forwards to llama-server."""

    def __init__(
        self,
        table: RouteTable,
        *,
        listen_host: str,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        max_body_bytes: int = MAX_BODY_BYTES,
        connect_seconds: float = 5.0,
        drain_seconds: float = 5.0,
    ) -> None:
        self.table = table
        self.port = listen_port
        self._host = listen_host
        self._upstream = (upstream_host, upstream_port)
        self._max_body_bytes = max_body_bytes
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_seconds)
        self._drain_seconds = drain_seconds
        self._created = int(time.time())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = asyncio.Event()

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a daemon thread; returns once listening (``port`` is then the bound one)."""
        if self._thread is not None:
            raise RuntimeError("the adapter router was already started")
        started: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(started),), name="adapter-router", daemon=True
        )
        self._thread.start()
        self._loop = started.result(timeout)  # re-raises the bind error

    def stop(self) -> None:
        """Stop listening and end open requests, within ``drain_seconds`` and a margin."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(self._drain_seconds + 5.0)
        if self._thread.is_alive():
            log.warning("the adapter router did not stop in time")

    async def _serve(self, started: concurrent.futures.Future[asyncio.AbstractEventLoop]) -> None:
        connector = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(
            timeout=self._timeout, auto_decompress=False, connector=connector
        )
        app = web.Application(client_max_size=self._max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", functools.partial(self._handle, session))
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=self._drain_seconds
        )
        try:
            await runner.setup()
            await web.TCPSite(runner, self._host, self.port).start()
            self.port = int(runner.addresses[0][1])
            log.info("adapter router on port %d serves %s", self.port, self.table.served())
            started.set_result(asyncio.get_running_loop())
            await self._stopping.wait()
        except BaseException as error:
            if started.done():
                raise
            started.set_exception(error)  # start() raises it
        finally:
            await runner.cleanup()
            await session.close()

    async def _handle(
        self, session: aiohttp.ClientSession, request: web.Request
    ) -> web.StreamResponse:
        if request.method == "GET" and request.path in MODELS_PATHS:
            return web.json_response(models_listing(self.table, self._created))
        if request.method == "POST" and request.path == GLOBAL_SCALE_WRITE:
            message = "Adapter scales are set by the ModelDeployment; name an adapter as the model."
            return openai_error(403, message, "adapter_scales_fixed")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            message = f"The request body exceeds {self._max_body_bytes} bytes."
            return openai_error(413, message, "request_too_large")
        adapter: AdapterRoute | None = None
        if request.method == "POST" and request.path in ROUTED_PATHS:
            applies = request.path in LORA_PATHS
            try:
                routed = route_body(self.table, parse_body(body), applies_lora=applies)
            except RoutingError as error:
                return openai_error(error.status, str(error), error.code)
            body = json.dumps(routed).encode()
            adapter = self.table.adapter(routed.get("model"))
        host, port = self._upstream
        path, query = request.rel_url.raw_path, request.rel_url.raw_query_string
        # Only the path and query come from the client: the host is always the upstream.
        url = URL.build(
            scheme="http", host=host, port=port, path=path, query_string=query, encoded=True
        )
        headers = forwardable_headers(request.headers)
        try:
            upstream = await session.request(
                request.method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except aiohttp.ClientError as error:
            log.warning("llama-server at %s:%d unreachable: %s", host, port, error)
            message = f"The model server is unreachable: {error}"
            return openai_error(502, message, "upstream_unavailable", "server_error")
        async with upstream:
            headers = forwardable_headers(upstream.headers)
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            await response.prepare(request)
            # An upstream error from here on propagates: aiohttp then drops the connection,
            # so the client sees a truncated response rather than a complete one.
            # A compressed body passes as it is: the router does not decompress (above).
            rename = (
                None if adapter is None or "Content-Encoding" in upstream.headers else adapter.name
            )
            if rename is not None and upstream.content_type == "text/event-stream":
                renamer = EventStreamRenamer(rename)
                async for chunk in upstream.content.iter_any():
                    await response.write(renamer.feed(chunk))  # aiohttp skips empty writes
                await response.write(renamer.flush())
            elif rename is not None and upstream.content_type == "application/json":
                await self._relay_renamed(upstream, response, rename)
            else:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            await response.write_eof()
        return response

    @staticmethod
    async def _relay_renamed(
        upstream: aiohttp.ClientResponse, response: web.StreamResponse, adapter: str
    ) -> None:
        """Relay a whole JSON body with its ``model`` renamed; past the bound, as it is."""
        held = bytearray()
        chunks = upstream.content.iter_any()
        async for chunk in chunks:
            held += chunk
            if len(held) > MAX_RENAMED_BYTES:
                await response.write(bytes(held))
                async for rest in chunks:
                    await response.write(rest)
                return
        await response.write(rename_model(bytes(held), adapter))
