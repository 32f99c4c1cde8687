"""The adapter router: its routing table, and the proxy in front of a stand-in llama-server.

``StandInLlamaServer`` is a small aiohttp app standing in for llama-server on 127.0.0.1: it
speaks its wire format (OpenAI JSON, SSE ``data: {...}`` chunks ending ``data: [DONE]``,
``/health``, Prometheus ``/metrics``) and records every request it got. The clients are
``http.client``, independent of the router's aiohttp. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from e2e.runtime import free_port
from threaded_app import ThreadedApp, held_stream_events, wait_for

from modeldeploy.serve.adapter_router import (
    AdapterNotApplicableError,
    AdapterRoute,
    AdapterRouter,
    EventStreamRenamer,
    InvalidBodyError,
    RouteTable,
    UnknownModelError,
    models_listing,
    parse_body,
    rename_model,
    route_body,
)

pytestmark = pytest.mark.timeout(60)

TABLE = RouteTable(
    "gemma-3-270m",
    (AdapterRoute("sql", 0, 1.0), AdapterRoute("poet", 1, 0.5)),
)
BASE_LORA = [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
DEADLINE = 10.0


# ---- the pure part ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "lora"),
    [
        ({"model": "sql", "prompt": "x"}, [{"id": 0, "scale": 1.0}]),
        ({"model": "poet", "prompt": "x"}, [{"id": 1, "scale": 0.5}]),
        ({"model": "gemma-3-270m", "prompt": "x"}, BASE_LORA),
        ({"prompt": "x"}, BASE_LORA),
        ({"model": None, "prompt": "x"}, BASE_LORA),
        # A client's own lora ids never survive: the model name is the only selector.
        ({"model": "gemma-3-270m", "lora": [{"id": 1, "scale": 2.0}]}, BASE_LORA),
        ({"model": "sql", "lora": [{"id": 1, "scale": 2.0}]}, [{"id": 0, "scale": 1.0}]),
    ],
)
def test_route_body_sets_the_lora_field(body: dict[str, Any], lora: list[Any]) -> None:
    original = json.loads(json.dumps(body))
    routed = route_body(TABLE, body)
    assert routed == {**body, "lora": lora}
    assert body == original  # the input is not changed


def test_route_body_without_adapters_sends_an_empty_list() -> None:
    assert route_body(RouteTable("base"), {"model": "base"})["lora"] == []


@pytest.mark.parametrize("model", ["nope", "", "SQL", 7])
def test_an_unknown_model_is_refused_with_what_is_served(model: object) -> None:
    with pytest.raises(UnknownModelError) as raised:
        route_body(TABLE, {"model": model})
    assert str(raised.value) == (
        f"The model `{model}` does not exist. Served: `gemma-3-270m`, `sql`, `poet`."
    )
    assert (raised.value.status, raised.value.code) == (404, "model_not_found")


def test_endpoints_that_ignore_lora_serve_the_base_only() -> None:
    assert route_body(TABLE, {"model": "gemma-3-270m"}, applies_lora=False)["lora"] == BASE_LORA
    with pytest.raises(AdapterNotApplicableError, match="`sql` is a LoRA adapter"):
        route_body(TABLE, {"model": "sql"}, applies_lora=False)
    with pytest.raises(UnknownModelError):
        route_body(TABLE, {"model": "nope"}, applies_lora=False)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
def test_parse_body_accepts_only_a_json_object(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidBodyError, match=message):
        parse_body(raw)


def test_parse_body_returns_the_object() -> None:
    assert parse_body(b'{"model": "sql"}') == {"model": "sql"}


@pytest.mark.parametrize(
    ("base", "adapters", "message"),
    [
        ("base", (AdapterRoute("a", 0, 1.0), AdapterRoute("a", 1, 1.0)), "not unique"),
        ("base", (AdapterRoute("base", 0, 1.0),), "base model's name"),
        ("base", (AdapterRoute("a", 0, 1.0), AdapterRoute("b", 0, 1.0)), "indexes"),
        ("base", (AdapterRoute("a", -1, 1.0),), "indexes"),
        ("base", (AdapterRoute("a", 0, float("nan")),), "finite"),
        ("", (), "empty"),
        ("base", (AdapterRoute("", 0, 1.0),), "empty"),
    ],
)
def test_route_table_validation(
    base: str, adapters: tuple[AdapterRoute, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RouteTable(base, adapters)


def test_models_listing_is_the_openai_list_with_parents() -> None:
    assert models_listing(TABLE, created=1700000000) == {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": 1700000000,
                "owned_by": "modeldeploy",
                "parent": parent,
            }
            for name, parent in [
                ("gemma-3-270m", None),
                ("sql", "gemma-3-270m"),
                ("poet", "gemma-3-270m"),
            ]
        ],
    }


@pytest.mark.parametrize(
    ("payload", "renamed"),
    [
        (b'{"model":"gemma-3-270m","choices":[]}', {"model": "sql", "choices": []}),
        ('{"model": "g", "text": "caf\u00e9 \u2603"}'.encode(), {"model": "sql", "text": "café ☃"}),
    ],
)
def test_rename_model_sets_the_model_of_a_json_object(payload: bytes, renamed: Any) -> None:
    assert json.loads(rename_model(payload, "sql")) == renamed


@pytest.mark.parametrize(
    "payload",
    [b'{"choices": []}', b"[DONE]", b'["model"]', b"not json", b"\xff\xfe", b'{"model": 1'],
)
def test_rename_model_leaves_anything_else_as_it_is(payload: bytes) -> None:
    assert rename_model(payload, "sql") == payload


def test_event_stream_renamer_renames_data_lines_split_anywhere() -> None:
    stream = (
        b'data: {"model":"base","choices":[{"text":"hel"}]}\n\n'
        b'data:{"model":"base","choices":[{"text":"lo"}]}\r\n\r\n'
        b": a comment\nevent: message\ndata: [DONE]\n\n"
    )
    expected = stream.replace(b'"base"', b'"sql"')
    for cut in range(len(stream) + 1):
        renamer = EventStreamRenamer("sql")
        out = renamer.feed(stream[:cut]) + renamer.feed(stream[cut:]) + renamer.flush()
        assert out == expected, cut


def test_event_stream_renamer_passes_complete_lines_at_once() -> None:
    renamer = EventStreamRenamer("sql")
    assert renamer.feed(b'data: {"model":"b"}\n\ndata: {"mo') == b'data: {"model":"sql"}\n\n'
    assert renamer.feed(b'del":"b"}') == b""
    assert renamer.flush() == b'data: {"model":"sql"}'


def test_event_stream_renamer_does_not_hold_an_unbounded_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("modeldeploy.serve.adapter_router.MAX_RENAMED_BYTES", 20)
    renamer = EventStreamRenamer("sql")
    assert renamer.feed(b'data: {"model":"b"') == b""
    assert renamer.feed(b',"x":"0123456789"') == b'data: {"model":"b","x":"0123456789"'
    assert renamer.feed(b"}\n") == b"}\n"  # the rest of that line, as it came


# ---- the proxy over 127.0.0.1 ----------------------------------------------------------


@dataclass
class Received:
    """One request the stand-in got."""

    method: str
    raw_path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class StandInLlamaServer(ThreadedApp):
    """A stand-in for llama-server on 127.0.0.1, on an event loop in its own thread."""

    received: list[Received] = field(default_factory=list)
    stream_cancelled: threading.Event = field(default_factory=threading.Event)

    async def _record(self, request: web.Request) -> Received:
        received = Received(
            request.method, request.raw_path, dict(request.headers), await request.read()
        )
        self.received.append(received)
        return received

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = (await self._record(request)).json()
        if not body.get("stream"):
            choice = {"index": 0, "text": " hello", "finish_reason": "stop"}
            return web.json_response(
                {"object": "text_completion", "model": "gemma-3-270m", "choices": [choice]}
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for index, text in enumerate([" hel", "lo"]):
                if index:
                    await asyncio.wait_for(self._release.wait(), DEADLINE)
                chunk = {"object": "text_completion", "model": "gemma-3-270m"}
                chunk["choices"] = [{"index": 0, "text": text}]
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise
        return response

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        received = await self._record(request)
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/metrics":
            text = "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 0\n"
            return web.Response(text=text, content_type="text/plain")
        if request.path == "/slots":
            error = {"code": 501, "message": "This server does not support slots endpoint.",
                     "type": "not_supported_error"}  # fmt: skip
            return web.json_response({"error": error}, status=501)
        return web.Response(body=received.body, headers={"X-Stand-In": "echo"})

    def routes(self, app: web.Application) -> None:
        """The inference paths, and everything else passed through."""
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            app.router.add_post(path, self.completion)
        app.router.add_route("*", "/{tail:.*}", self.passthrough)


@pytest.fixture
def standin() -> Iterator[StandInLlamaServer]:
    with StandInLlamaServer() as server:
        yield server


def start_router(upstream_port: int, **kwargs: Any) -> AdapterRouter:
    router = AdapterRouter(
        TABLE,
        listen_host="127.0.0.1",
        listen_port=free_port(),
        upstream_host="127.0.0.1",
        upstream_port=upstream_port,
        **kwargs,
    )
    router.start()
    return router


@pytest.fixture
def router(standin: StandInLlamaServer) -> Iterator[AdapterRouter]:
    router = start_router(standin.port)
    yield router
    router.stop()


def call(
    router: AdapterRouter,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request to the router: status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=DEADLINE)
    try:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=raw, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("path", "model", "lora"),
    [
        ("/v1/completions", "sql", [{"id": 0, "scale": 1.0}]),
        ("/v1/completions", "poet", [{"id": 1, "scale": 0.5}]),
        ("/v1/completions", "gemma-3-270m", BASE_LORA),
        ("/v1/chat/completions", None, BASE_LORA),
        ("/v1/chat/completions", "poet", [{"id": 1, "scale": 0.5}]),
        ("/completion", "sql", [{"id": 0, "scale": 1.0}]),
        ("/v1/embeddings", "gemma-3-270m", BASE_LORA),
    ],
)
def test_inference_bodies_are_rewritten_per_model(
    router: AdapterRouter,
    standin: StandInLlamaServer,
    path: str,
    model: str | None,
    lora: list[Any],
) -> None:
    body: dict[str, Any] = {"prompt": "hi", "max_tokens": 4}
    if model is not None:
        body["model"] = model
    status, _, answer = call(router, "POST", path, body, {"Authorization": "Bearer k"})
    assert status == 200
    [received] = standin.received
    assert received.json() == {**body, "lora": lora}
    assert received.headers["Authorization"] == "Bearer k"
    assert received.headers["Content-Length"] == str(len(received.body))
    if path == "/v1/completions":
        answered = json.loads(answer)
        assert answered["choices"][0]["text"] == " hello"
        # The response names the model asked for, not llama-server's alias for the base.
        assert answered["model"] == (model or "gemma-3-270m")


@pytest.mark.parametrize(
    "case",
    [
        ("/v1/chat/completions", {"model": "nope"}, 404, "model_not_found"),
        ("/v1/embeddings", {"model": "nope", "input": "x"}, 404, "model_not_found"),
        ("/v1/completions", [1, 2], 400, "invalid_request_body"),
        ("/v1/completions", b"{not json", 400, "invalid_request_body"),
        ("/v1/embeddings", {"model": "sql", "input": "x"}, 400, "adapter_not_supported"),
        ("/lora-adapters", [{"id": 0, "scale": 1.0}], 403, "adapter_scales_fixed"),
    ],
)
def test_refused_requests_get_openai_errors_and_are_not_forwarded(
    router: AdapterRouter, standin: StandInLlamaServer, case: tuple[str, Any, int, str]
) -> None:
    path, body, status, code = case
    got, headers, answer = call(router, "POST", path, body)
    assert got == status
    assert headers["Content-Type"].startswith("application/json")
    error = json.loads(answer)["error"]
    assert set(error) == {"message", "type", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", code)
    if code == "model_not_found":
        assert error["message"].startswith("The model `nope` does not exist.")
    assert standin.received == []


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_are_listed_locally(
    router: AdapterRouter, standin: StandInLlamaServer, path: str
) -> None:
    status, _, answer = call(router, "GET", path)
    assert status == 200
    listing = json.loads(answer)
    assert [card["id"] for card in listing["data"]] == ["gemma-3-270m", "sql", "poet"]
    assert [card["parent"] for card in listing["data"]] == [None, "gemma-3-270m", "gemma-3-270m"]
    assert standin.received == []


def test_a_stream_arrives_chunk_by_chunk(
    router: AdapterRouter, standin: StandInLlamaServer
) -> None:
    body = {"model": "poet", "prompt": "hi", "stream": True}
    events = held_stream_events(router.port, body, standin)
    assert json.loads(events[1].removeprefix(b"data: "))["choices"][0]["text"] == "lo"
    assert events[2:] == [b"data: [DONE]"]
    assert standin.received[0].json()["lora"] == [{"id": 1, "scale": 0.5}]
    assert [json.loads(event.removeprefix(b"data: "))["model"] for event in events[:2]] == [
        "poet",
        "poet",
    ]


def test_a_client_that_disconnects_cancels_the_upstream_request(
    router: AdapterRouter, standin: StandInLlamaServer
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=DEADLINE)
    body = json.dumps({"model": "sql", "prompt": "hi", "stream": True})
    connection.request("POST", "/v1/completions", body=body)
    response = connection.getresponse()
    assert response.readline().startswith(b"data: ")
    assert connection.sock is not None
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    wait_for(standin.stream_cancelled.is_set, "the stand-in's stream to be cancelled")


def test_other_requests_pass_through_unchanged(
    router: AdapterRouter, standin: StandInLlamaServer
) -> None:
    status, _, answer = call(router, "GET", "/health")
    assert (status, json.loads(answer)) == (200, {"status": "ok"})
    status, metrics_headers, answer = call(router, "GET", "/metrics")
    assert status == 200
    assert metrics_headers["Content-Type"].startswith("text/plain")
    assert b"llamacpp:requests_processing 0\n" in answer
    status, _, answer = call(router, "GET", "/slots?fail_on_no_slot=1&q=a%20b%2F")
    assert (status, json.loads(answer)["error"]["code"]) == (501, 501)
    raw = b'{"content": "hi", "model": "nope"}'  # not an inference path: not routed
    headers = {"X-Custom": "1", "Connection": "keep-alive, X-Hop", "X-Hop": "1"}
    status, answer_headers, answer = call(router, "POST", "/tokenize", raw, headers)
    assert (status, answer, answer_headers["X-Stand-In"]) == (200, raw, "echo")
    tokenize = standin.received[-1]
    assert (tokenize.body, tokenize.headers["X-Custom"]) == (raw, "1")
    assert "X-Hop" not in tokenize.headers  # named by Connection: hop-by-hop
    # The client names a path only: a network-path reference still goes to the stand-in.
    assert call(router, "GET", "//example.invalid/health")[0] == 200
    assert [r.raw_path for r in standin.received] == [
        "/health",
        "/metrics",
        "/slots?fail_on_no_slot=1&q=a%20b%2F",
        "/tokenize",
        "//example.invalid/health",
    ]


def test_an_unreachable_upstream_is_a_502() -> None:
    router = start_router(free_port())
    try:
        for method, path in [("POST", "/v1/completions"), ("GET", "/health")]:
            status, _, answer = call(router, method, path, b"{}" if method == "POST" else None)
            assert status == 502
            assert json.loads(answer)["error"]["code"] == "upstream_unavailable"
        assert call(router, "GET", "/v1/models")[0] == 200
    finally:
        router.stop()


def test_an_oversized_body_is_a_413(standin: StandInLlamaServer) -> None:
    router = start_router(standin.port, max_body_bytes=1024)
    try:
        body = {"model": "sql", "prompt": "x" * 2048}
        status, _, answer = call(router, "POST", "/v1/completions", body)
        assert (status, json.loads(answer)["error"]["code"]) == (413, "request_too_large")
        assert call(router, "POST", "/v1/completions", {"model": "sql"})[0] == 200
    finally:
        router.stop()
    assert [r.json()["model"] for r in standin.received] == ["sql"]


def test_a_response_past_the_rename_bound_passes_as_it_came(
    router: AdapterRouter, standin: StandInLlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("modeldeploy.serve.adapter_router.MAX_RENAMED_BYTES", 8)
    status, _, answer = call(router, "POST", "/v1/completions", {"model": "sql"})
    assert (status, json.loads(answer)["model"]) == (200, "gemma-3-270m")


def test_start_raises_when_the_port_is_taken(standin: StandInLlamaServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        router = AdapterRouter(
            TABLE,
            listen_host="127.0.0.1",
            listen_port=taken.getsockname()[1],
            upstream_host="127.0.0.1",
            upstream_port=standin.port,
        )
        with pytest.raises(OSError):
            router.start()


def test_port_zero_binds_a_free_port_and_stop_is_bounded(standin: StandInLlamaServer) -> None:
    router = AdapterRouter(
        TABLE,
        listen_host="127.0.0.1",
        listen_port=0,
        upstream_host="127.0.0.1",
        upstream_port=standin.port,
        drain_seconds=0.5,
    )
    router.start()
    assert router.port != 0
    connection = http.client.HTTPConnection("127.0.0.1", router.port, timeout=DEADLINE)
    try:
        body = json.dumps({"model": "sql", "prompt": "hi", "stream": True})
        connection.request("POST", "/v1/completions", body=body)
        assert connection.getresponse().readline().startswith(b"data: ")
        router.stop()  # returns, with a stream held open by the stand-in (test timeout)
    finally:
        connection.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", router.port), timeout=1.0).close()
