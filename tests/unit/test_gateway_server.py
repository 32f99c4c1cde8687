"""The gateway over 127.0.0.1, in front of stand-ins for llama-server.

``StandInLlamaServer`` is a small aiohttp app on its own event loop and thread that speaks
llama-server's OpenAI wire: JSON answers, SSE ``data: {...}`` chunks ending ``data:
[DONE]``, and its 503 ``Loading model`` error; it records what it got and names itself in
an ``X-Stand-In`` header. Clients are ``http.client``, independent of the gateway's aiohttp.
Every wait is on an event or polls with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from e2e.runtime import free_port
from threaded_app import ThreadedApp, held_stream_events, wait_for

from modeldeploy.gateway.keys import Grant, KeyRing, key_digest
from modeldeploy.gateway.routing import Backend, ModelTarget, RoutingTable
from modeldeploy.gateway.server import Gateway, GatewaySettings

pytestmark = pytest.mark.timeout(60)

DEADLINE = 10.0
Answer = tuple[int, http.client.HTTPMessage, bytes]


@dataclass
class StandInLlamaServer(ThreadedApp):
    """A stand-in for llama-server; ``loading`` answers 503, ``breaks`` drops its streams."""

    name: str
    loading: bool = False
    breaks: bool = False
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    stream_cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def backend(self) -> Backend:
        """This stand-in as a routing backend."""
        return Backend(f"team/{self.name}", "127.0.0.1", self.port)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.received.append((request.path, dict(request.headers), raw))
        named = {"X-Stand-In": self.name}
        if self.loading:
            error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            return web.json_response({"error": error}, status=503, headers=named)
        body = json.loads(raw)
        if not body.get("stream"):
            choice = {"index": 0, "text": " hello", "finish_reason": "stop"}
            answer = {"object": "text_completion", "model": body["model"], "choices": [choice]}
            return web.json_response(answer, headers=named)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **named})
        await response.prepare(request)
        try:
            for index, text in enumerate([" hel", "lo"]):
                if index and self.breaks:
                    assert request.transport is not None
                    request.transport.abort()  # the pod dies mid-stream
                    return response
                if index:
                    await asyncio.wait_for(self._release.wait(), DEADLINE)
                chunk = {"object": "text_completion", "choices": [{"index": 0, "text": text}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except asyncio.CancelledError:
            self.stream_cancelled.set()
            raise
        return response

    def routes(self, app: web.Application) -> None:
        """The OpenAI inference paths."""
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
            app.router.add_post(path, self.infer)


@pytest.fixture
def alpha() -> Iterator[StandInLlamaServer]:
    with StandInLlamaServer("alpha-0") as server:
        yield server


@pytest.fixture
def beta() -> Iterator[StandInLlamaServer]:
    with StandInLlamaServer("beta-0") as server:
        yield server


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(targets: list[ModelTarget], keys: KeyRing | None = None, **kw: Any) -> Gateway:
        wake = kw.pop("wake", None)
        gateway = Gateway(RoutingTable(targets), keys or KeyRing(), GatewaySettings(**kw), wake)
        gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def call(
    gateway: Gateway,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to the gateway: status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
    try:
        raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(method, path, body=raw, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def error_of(answer: Answer) -> dict[str, Any]:
    """The OpenAI error of an answer, checking its shape."""
    error: dict[str, Any] = json.loads(answer[2])["error"]
    assert set(error) == {"message", "type", "code"}
    return error


def sample(gateway: Gateway, name: str, **labels: str) -> float | None:
    """One sample of the gateway's metrics."""
    return gateway.metrics.registry.get_sample_value(name, labels)


def upstream_errors(gateway: Gateway, kind: str) -> float | None:
    """The failed attempts of model alpha's requests of one kind."""
    return sample(gateway, "modeldeploy_gateway_upstream_errors_total", model="alpha", kind=kind)


def served(model: str, *stand_ins: StandInLlamaServer, **kw: Any) -> ModelTarget:
    return ModelTarget(model, "team", model, tuple(s.backend for s in stand_ins), **kw)


COMPLETION = {"model": "alpha", "prompt": "Once upon a time", "max_tokens": 4}


def test_requests_are_routed_by_model(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer, beta: StandInLlamaServer
) -> None:
    gateway = start_gateway([served("alpha", alpha), served("beta", beta)])
    for path, model in [
        ("/v1/completions", "alpha"),
        ("/v1/chat/completions", "beta"),
        ("/v1/embeddings", "beta"),
    ]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        status, headers, answer = call(gateway, "POST", path, body, {"X-Custom": "1"})
        assert status == 200
        assert headers["X-Stand-In"] == f"{model}-0"
        assert json.loads(answer)["model"] == model
    assert [r[0] for r in alpha.received] == ["/v1/completions"]
    assert [r[0] for r in beta.received] == ["/v1/chat/completions", "/v1/embeddings"]
    path, headers, raw = beta.received[0]
    assert json.loads(raw)["model"] == "beta"  # the body goes on as it came
    assert headers["X-Custom"] == "1"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ({"prompt": "x"}, 400, "model_required"),
        (b"{not json", 400, "invalid_request_body"),
        ({"model": "idle", "prompt": "x"}, 503, "model_unavailable"),
        ({"model": "alpha", "prompt": "x" * 4096}, 413, "request_too_large"),
    ],
)
def test_refused_requests_get_openai_errors(
    start_gateway: Callable[..., Gateway],
    alpha: StandInLlamaServer,
    body: Any,
    status: int,
    code: str,
) -> None:
    idle = ModelTarget("idle", "team", "idle", ())
    gateway = start_gateway([served("alpha", alpha), idle], max_body_bytes=1024)
    answer = call(gateway, "POST", "/v1/completions", body)
    assert answer[0] == status
    assert error_of(answer)["code"] == code
    assert ("Retry-After" in answer[1]) == (status == 503)
    assert alpha.received == []
    assert error_of(call(gateway, "GET", "/v1/nothing"))["code"] == "unknown_url"
    assert call(gateway, "GET", "/healthz")[0] == 200


def test_a_stream_arrives_chunk_by_chunk(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    gateway = start_gateway([served("alpha", alpha)])
    events = held_stream_events(gateway.port, {**COMPLETION, "stream": True}, alpha)
    assert json.loads(events[1].removeprefix(b"data: "))["choices"][0]["text"] == "lo"
    assert events[2:] == [b"data: [DONE]"]


def test_a_client_that_disconnects_cancels_the_upstream_request(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    gateway = start_gateway([served("alpha", alpha)])
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
    connection.request("POST", "/v1/completions", json.dumps({**COMPLETION, "stream": True}))
    assert connection.getresponse().readline().startswith(b"data: ")
    assert connection.sock is not None
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    wait_for(alpha.stream_cancelled.is_set, "the stand-in's stream to be cancelled")
    wait_for(lambda: gateway.balancer.inflight() == {}, "the in-flight count to drop")


def test_a_dead_or_loading_pod_is_retried_elsewhere_and_ejected(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    dead = Backend("team/dead", "127.0.0.1", free_port())
    with StandInLlamaServer("loading", loading=True) as loading:
        backends = (dead, loading.backend, alpha.backend)
        gateway = start_gateway([ModelTarget("alpha", "team", "alpha", backends)])
        for _ in range(4):
            status, headers, _ = call(gateway, "POST", "/v1/completions", COMPLETION)
            assert (status, headers["X-Stand-In"]) == (200, "alpha-0")
        assert len(loading.received) == 1  # tried once, then ejected
    assert len(alpha.received) == 4
    assert (upstream_errors(gateway, "connect"), upstream_errors(gateway, "status")) == (1, 1)


class _ClosesKeptAliveConnections(socketserver.BaseRequestHandler):
    """Answers the first request of each connection and keeps it open, then reads the next
    request on it and closes the connection unanswered: a pod closing an idle kept-alive
    connection just as the gateway sends on it."""

    def handle(self) -> None:
        reader = self.request.makefile("rb")
        _read_request(reader)
        body = json.dumps({"model": "alpha", "choices": []}).encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
        self.request.sendall(f"{head}\r\nConnection: keep-alive\r\n\r\n".encode() + body)
        _read_request(reader)  # then the connection closes, unanswered


def _read_request(reader: Any) -> None:
    length = 0
    for line in iter(reader.readline, b"\r\n"):
        if not line:
            return
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    reader.read(length)


class _PodServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False  # a connection the gateway keeps open does not hold up close


def test_a_kept_alive_connection_closed_by_the_pod_is_not_a_failure(
    start_gateway: Callable[..., Gateway],
) -> None:
    with _PodServer(("127.0.0.1", 0), _ClosesKeptAliveConnections) as pod:
        threading.Thread(target=pod.serve_forever, daemon=True).start()
        try:
            backend = Backend("team/pod", "127.0.0.1", pod.server_address[1])
            gateway = start_gateway([ModelTarget("alpha", "team", "alpha", (backend,))])
            # The second request goes out on the first one's connection, which the pod
            # closes: it is sent again on a new one, and the pod is not ejected.
            for _ in range(3):
                assert call(gateway, "POST", "/v1/completions", COMPLETION)[0] == 200
        finally:
            pod.shutdown()
    assert upstream_errors(gateway, "connect") is None


def test_the_last_pods_error_reaches_the_client(start_gateway: Callable[..., Gateway]) -> None:
    with StandInLlamaServer("loading", loading=True) as loading:
        gateway = start_gateway([served("alpha", loading)])
        answer = call(gateway, "POST", "/v1/completions", COMPLETION)
    assert answer[0] == 503 and answer[1]["Retry-After"] == "10"
    assert json.loads(answer[2])["error"]["message"] == "Loading model"
    unreachable = ModelTarget("alpha", "team", "a", (Backend("team/x", "127.0.0.1", free_port()),))
    gateway.table.replace([unreachable])
    answer = call(gateway, "POST", "/v1/completions", COMPLETION)
    assert (answer[0], error_of(answer)["code"]) == (502, "upstream_unavailable")


def test_no_retry_once_the_stream_started(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    with StandInLlamaServer("breaks", breaks=True) as breaks:
        gateway = start_gateway([served("alpha", breaks, alpha)])
        gateway.balancer.begin(alpha.backend)  # the least in-flight pick is the one that breaks
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
        try:
            connection.request(
                "POST", "/v1/completions", json.dumps({**COMPLETION, "stream": True})
            )
            response = connection.getresponse()
            assert response.readline().startswith(b"data: ")
            with pytest.raises((http.client.HTTPException, OSError)):
                response.read()  # truncated: no end of the chunked body
        finally:
            connection.close()
    assert alpha.received == [] and len(breaks.received) == 1
    wait_for(lambda: upstream_errors(gateway, "stream") == 1, "the stream failure to be counted")


def test_the_request_header_chooses_prefix_affinity(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer, beta: StandInLlamaServer
) -> None:
    gateway = start_gateway([served("alpha", alpha, beta)])
    header = {"X-Modeldeploy-Affinity": "prefix"}
    pods = {
        call(gateway, "POST", "/v1/completions", COMPLETION, header)[1]["X-Stand-In"]
        for _ in range(6)
    }
    assert len(pods) == 1
    pods = {call(gateway, "POST", "/v1/completions", COMPLETION)[1]["X-Stand-In"] for _ in range(6)}
    assert pods == {"alpha-0", "beta-0"}  # least in-flight: idle ties take turns
    assert all(
        "X-Modeldeploy-Affinity" not in headers for _, headers, _ in alpha.received + beta.received
    )


KEYS = {
    "sk-all": Grant("all"),
    "sk-alpha": Grant("alpha-only", models=frozenset({"alpha"})),
    "sk-team-b": Grant("team-b", namespaces=frozenset({"team-b"})),
}


@pytest.fixture
def keyed(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer, beta: StandInLlamaServer
) -> Gateway:
    """A gateway that requires the keys of ``KEYS``; beta is in namespace team-b."""
    keys = KeyRing(required=True)
    keys.replace({key_digest(key): grant for key, grant in KEYS.items()})
    beta_target = ModelTarget("beta", "team-b", "beta", (beta.backend,))
    return start_gateway([served("alpha", alpha), beta_target], keys)


@pytest.mark.parametrize("authorization", [None, "Bearer sk-wrong", "sk-all", "Basic sk-all"])
def test_a_missing_or_wrong_key_gets_401_and_no_listing(
    keyed: Gateway,
    alpha: StandInLlamaServer,
    authorization: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = keyed
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/completions", COMPLETION),
    ]:
        answer = call(gateway, method, path, body, headers)
        assert answer[0] == 401
        assert error_of(answer)["code"] == "invalid_api_key"
        assert "data" not in json.loads(answer[2])
    assert alpha.received == []
    assert "sk-" not in caplog.text


@pytest.mark.parametrize(
    "case", [("sk-all", ["alpha", "beta"]), ("sk-alpha", ["alpha"]), ("sk-team-b", ["beta"])]
)
def test_a_key_sees_and_reaches_only_its_grant(
    keyed: Gateway,
    alpha: StandInLlamaServer,
    beta: StandInLlamaServer,
    case: tuple[str, list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, listed = case
    caplog.set_level(logging.DEBUG)
    gateway = keyed
    auth = {"Authorization": f"Bearer {key}"}
    status, _, answer = call(gateway, "GET", "/v1/models", None, auth)
    assert status == 200
    listing = json.loads(answer)
    assert listing["object"] == "list"
    assert [card["id"] for card in listing["data"]] == listed
    assert {card["object"] for card in listing["data"]} == {"model"}
    for model in ("alpha", "beta"):
        answer = call(gateway, "POST", "/v1/completions", {**COMPLETION, "model": model}, auth)
        if model in listed:
            assert answer[0] == 200
        else:  # as if the model did not exist
            assert (answer[0], error_of(answer)["code"]) == (404, "model_not_found")
    assert all("Authorization" not in headers for _, headers, _ in alpha.received + beta.received)
    assert key not in caplog.text


def test_without_keys_everything_is_listed(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    gateway = start_gateway(
        [served("alpha", alpha), ModelTarget("zero", "t", "z", (), scale_from_zero=True)]
    )
    listing = json.loads(call(gateway, "GET", "/v1/models")[2])
    assert [card["id"] for card in listing["data"]] == ["alpha", "zero"]


class Waker:
    """A wake callback that records its calls: the target and the count held for it."""

    def __init__(self) -> None:
        self.calls: list[tuple[ModelTarget, int]] = []
        self.called = threading.Event()

    def __call__(self, target: ModelTarget, held: int) -> None:
        self.calls.append((target, held))
        self.called.set()

    def counts(self) -> list[int]:
        """The counts signalled so far."""
        return [held for _, held in list(self.calls)]


SLEEPY = ModelTarget("sleepy", "team", "sleepy", (), scale_from_zero=True)


def test_a_model_at_zero_is_woken_and_its_held_requests_answered(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    waker = Waker()
    gateway = start_gateway([SLEEPY], wake=waker)
    body = {**COMPLETION, "model": "sleepy"}
    with concurrent.futures.ThreadPoolExecutor(2) as clients:
        held = [clients.submit(call, gateway, "POST", "/v1/completions", body) for _ in range(2)]
        assert waker.called.wait(DEADLINE)
        wait_for(
            lambda: sample(gateway, "modeldeploy_gateway_held_requests", model="sleepy") == 2,
            "two held requests",
        )
        assert not any(future.done() for future in held)
        awake = ModelTarget("sleepy", "team", "sleepy", (alpha.backend,), scale_from_zero=True)
        gateway.table.replace([awake])
        answers = [future.result(DEADLINE) for future in held]
    assert [status for status, _, _ in answers] == [200, 200]
    assert waker.calls[0] == (SLEEPY, 1)  # at once, for the first held request
    assert max(waker.counts()) <= 2
    assert sample(gateway, "modeldeploy_gateway_held_requests", model="sleepy") == 0
    assert sample(gateway, "modeldeploy_gateway_wake_seconds_count", model="sleepy") == 1
    assert sample(gateway, "modeldeploy_gateway_hold_seconds_count", model="sleepy") == 2


def test_a_woken_pod_that_does_not_listen_yet_is_tried_again_until_it_does(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    # Ready before it listens (a readiness flap; kwok's first Ready on the local cluster):
    # nothing was sent, so the request waits for the pods to change and goes on.
    deaf = Backend("team/sleepy-0", "127.0.0.1", free_port())
    early = ModelTarget("sleepy", "team", "sleepy", (deaf,), scale_from_zero=True)
    gateway = start_gateway([early])
    with concurrent.futures.ThreadPoolExecutor(1) as clients:
        answer = clients.submit(
            call, gateway, "POST", "/v1/completions", {**COMPLETION, "model": "sleepy"}
        )
        wait_for(
            lambda: (sample(gateway, "modeldeploy_gateway_upstream_errors_total",
                            model="sleepy", kind="connect") or 0) >= 1,
            "the first connect error",
        )  # fmt: skip
        assert not answer.done()
        listening = ModelTarget("sleepy", "team", "sleepy", (alpha.backend,), scale_from_zero=True)
        gateway.table.replace([listening])
        assert answer.result(DEADLINE)[0] == 200


def test_without_scale_from_zero_an_unreachable_pod_is_a_502_at_once(
    start_gateway: Callable[..., Gateway],
) -> None:
    deaf = Backend("team/busy-0", "127.0.0.1", free_port())
    gateway = start_gateway([ModelTarget("busy", "team", "busy", (deaf,))])
    answer = call(gateway, "POST", "/v1/completions", {**COMPLETION, "model": "busy"})
    assert (answer[0], error_of(answer)["code"]) == (502, "upstream_unavailable")


def test_a_hold_times_out_with_503_and_retry_after(start_gateway: Callable[..., Gateway]) -> None:
    waker = Waker()
    gateway = start_gateway([SLEEPY], wake=waker, hold_seconds=0.3, retry_after_seconds=7)
    began = time.monotonic()
    answer = call(gateway, "POST", "/v1/completions", {**COMPLETION, "model": "sleepy"})
    assert time.monotonic() - began >= 0.3
    assert (answer[0], answer[1]["Retry-After"]) == (503, "7")
    assert error_of(answer)["code"] == "model_starting"
    assert waker.calls[0] == (SLEEPY, 1)
    assert sample(gateway, "modeldeploy_gateway_wake_seconds_count", model="sleepy") is None


def test_the_held_count_follows_and_drops_to_zero_once_answered(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    waker = Waker()
    adapter = replace(SLEEPY, model="sleepy-sql")  # another name of the same ModelDeployment
    gateway = start_gateway([SLEEPY, adapter], wake=waker, wake_interval_seconds=0.05)
    with concurrent.futures.ThreadPoolExecutor(2) as clients:
        first = clients.submit(
            call, gateway, "POST", "/v1/completions", {**COMPLETION, "model": "sleepy"}
        )
        wait_for(lambda: waker.counts()[:1] == [1], "the first wake, with one held")
        second = clients.submit(
            call, gateway, "POST", "/v1/completions", {**COMPLETION, "model": "sleepy-sql"}
        )
        wait_for(lambda: 2 in waker.counts(), "a wake that counts both names' requests")
        gateway.table.replace(
            [replace(target, backends=(alpha.backend,)) for target in (SLEEPY, adapter)]
        )
        assert [first.result(DEADLINE)[0], second.result(DEADLINE)[0]] == [200, 200]
        wait_for(lambda: waker.counts()[-1:] == [0], "a last wake that says none is held")
    assert {(target.namespace, target.deployment) for target, _ in waker.calls} == {
        ("team", "sleepy")
    }
    assert max(waker.counts()) == 2


def test_past_the_queue_bound_a_request_gets_503_at_once(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer
) -> None:
    gateway = start_gateway([SLEEPY], max_held_per_model=1)
    body = {**COMPLETION, "model": "sleepy"}
    with concurrent.futures.ThreadPoolExecutor(1) as clients:
        first = clients.submit(call, gateway, "POST", "/v1/completions", body)
        wait_for(
            lambda: sample(gateway, "modeldeploy_gateway_held_requests", model="sleepy") == 1,
            "the first request to be held",
        )
        answer = call(gateway, "POST", "/v1/completions", body)
        assert (answer[0], error_of(answer)["code"]) == (503, "hold_queue_full")
        assert answer[1]["Retry-After"] == "10"
        gateway.table.replace([ModelTarget("sleepy", "team", "s", (alpha.backend,))])
        assert first.result(DEADLINE)[0] == 200


def test_a_held_request_whose_client_leaves_frees_its_place(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway([SLEEPY], max_held_per_model=1)

    def held() -> float | None:
        return sample(gateway, "modeldeploy_gateway_held_requests", model="sleepy")

    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=DEADLINE)
    connection.request("POST", "/v1/completions", json.dumps({**COMPLETION, "model": "sleepy"}))
    wait_for(lambda: held() == 1, "the request to be held")
    assert connection.sock is not None
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    wait_for(lambda: held() == 0, "the held request to be let go")


def test_held_requests_are_answered_when_the_gateway_stops(
    start_gateway: Callable[..., Gateway],
) -> None:
    gateway = start_gateway([SLEEPY])
    with concurrent.futures.ThreadPoolExecutor(1) as clients:
        body = {**COMPLETION, "model": "sleepy"}
        held = clients.submit(call, gateway, "POST", "/v1/completions", body)
        wait_for(
            lambda: sample(gateway, "modeldeploy_gateway_held_requests", model="sleepy") == 1,
            "the request to be held",
        )
        gateway.stop()  # bounded: the held request is answered, not left to time out
        answer = held.result(DEADLINE)
    assert (answer[0], error_of(answer)["code"]) == (503, "shutting_down")


def test_metrics_are_exposed(
    start_gateway: Callable[..., Gateway], alpha: StandInLlamaServer, beta: StandInLlamaServer
) -> None:
    gateway = start_gateway([served("alpha", alpha), served("beta", beta)])
    assert call(gateway, "POST", "/v1/completions", COMPLETION)[0] == 200
    assert call(gateway, "POST", "/v1/completions", {"model": "nope"})[0] == 404
    status, headers, text = call(gateway, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = text.decode().splitlines()
    for line in [
        'modeldeploy_gateway_requests_total{code="200",model="alpha"} 1.0',
        'modeldeploy_gateway_requests_total{code="404",model=""} 1.0',
        'modeldeploy_gateway_time_to_first_byte_seconds_count{model="alpha"} 1.0',
        'modeldeploy_gateway_inflight_requests{backend="team/alpha-0"} 0.0',
        'modeldeploy_gateway_inflight_requests{backend="team/beta-0"} 0.0',
    ]:
        assert line in lines
    for name in ("held_requests", "hold_seconds", "wake_seconds", "upstream_errors_total"):
        assert f"# TYPE modeldeploy_gateway_{name.removesuffix('_total')}" in text.decode()


def test_start_raises_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            Gateway(RoutingTable(), KeyRing()).start(port=taken.getsockname()[1])
