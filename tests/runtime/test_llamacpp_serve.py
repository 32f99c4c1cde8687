"""`modeldeploy serve` with the real llama-server and the real gemma 270M model.

Requests go to 127.0.0.1 only, each bounded in tokens and time. Waits poll with deadlines;
nothing asserts on durations.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from e2e.runtime import LocalServe, port_open, wait_until
from gemma_serve import SERVED_NAME, SLOTS, local_serve

from modeldeploy.serve.supervisor import parse_gauges

TIMEOUT = httpx.Timeout(120.0, connect=10.0)


def _root(base_url: str) -> str:
    return base_url.removesuffix("/v1")


def _metrics(client: httpx.Client, base_url: str) -> str:
    response = client.get(f"{_root(base_url)}/metrics")
    assert response.status_code == 200
    return response.text


def _chat(base_url: str, content: str, max_tokens: int, **extra: Any) -> httpx.Response:
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **extra,
    }
    with httpx.Client(timeout=TIMEOUT) as client:
        return client.post(f"{base_url}/chat/completions", json=body)


def _sse(lines: Iterator[str]) -> Iterator[dict[str, Any] | None]:
    """The JSON events of a server-sent event stream; None for ``[DONE]``."""
    for line in lines:
        if not line.startswith("data: "):
            continue
        data = line.removeprefix("data: ").strip()
        yield None if data == "[DONE]" else json.loads(data)


def test_serves_openai_chat_completions(server: LocalServe) -> None:
    with httpx.Client(timeout=TIMEOUT) as client:
        assert client.get(f"{_root(server.url)}/health").status_code == 200
        models = client.get(f"{server.url}/models").json()
        assert SERVED_NAME in [m["id"] for m in models["data"]]
        before = parse_gauges(_metrics(client, server.url), ["llamacpp:tokens_predicted_total"])
    response = _chat(server.url, "Name three colours.", max_tokens=12)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == SERVED_NAME
    message = answer["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str) and message["content"].strip()
    assert 0 < answer["usage"]["completion_tokens"] <= 12
    with httpx.Client(timeout=TIMEOUT) as client:
        after = parse_gauges(_metrics(client, server.url), ["llamacpp:tokens_predicted_total"])
    assert (after or 0) - (before or 0) == answer["usage"]["completion_tokens"]


def test_gemma_chat_template_is_applied(server: LocalServe) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(f"{_root(server.url)}/apply-template", json={"messages": messages})
    assert response.status_code == 200
    assert response.json()["prompt"].endswith(
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    )


def test_requests_beyond_the_slots_queue_and_none_is_lost(server: LocalServe) -> None:
    count, tokens = 3 * SLOTS, 24
    busy: list[tuple[float, float]] = []
    with ThreadPoolExecutor(count) as pool, httpx.Client(timeout=TIMEOUT) as client:
        futures = [
            pool.submit(_chat, server.url, f"Count from {i} upwards.", tokens, ignore_eos=True)
            for i in range(count)
        ]

        def sample() -> bool | None:
            text = _metrics(client, server.url)
            busy.append(
                (
                    parse_gauges(text, ["llamacpp:requests_processing"]) or 0,
                    parse_gauges(text, ["llamacpp:requests_deferred"]) or 0,
                )
            )
            return True if all(f.done() for f in futures) else None

        wait_until(sample, timeout=300, what="all concurrent requests", interval=0.05)
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * count
    assert [r.json()["usage"]["completion_tokens"] for r in responses] == [tokens] * count
    assert len({r.json()["id"] for r in responses}) == count
    assert max(processing for processing, _ in busy) <= SLOTS
    assert max(deferred for _, deferred in busy) >= 1  # the rest waited in llama-server's queue


def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server: LocalServe) -> None:
    url = f"{server.url}/chat/completions"
    bad = [
        ({"messages": "nope"}, "'messages' to be an array"),
        ({"model": SERVED_NAME}, "'messages' is required"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "x"}, "max_tokens"),
    ]
    with httpx.Client(timeout=TIMEOUT) as client:
        for body, reason in bad:
            response = client.post(url, json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error" and reason in error["message"]
        # Malformed JSON: llama-server answers 500 (its JSON parser's exception), with the
        # parse error spelled out; what matters here is the message and that it stays up.
        garbled = client.post(
            url, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert "parse error" in garbled.json()["error"]["message"]
        assert client.get(f"{server.url}/no-such-endpoint").status_code == 404
        assert client.get(f"{_root(server.url)}/health").status_code == 200
    response = _chat(server.url, "Say hello.", max_tokens=4)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"]


def test_sigterm_during_a_streaming_completion_lets_it_finish(
    tmp_path: Path, runtime_env: dict[str, str]
) -> None:
    served = local_serve(tmp_path, runtime_env)
    served.start()
    try:
        tokens = 96
        body = {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": tokens,
            "ignore_eos": True,
            "stream": True,
        }
        events: list[dict[str, Any]] = []
        finished = False
        with (
            httpx.Client(timeout=TIMEOUT) as client,
            client.stream("POST", f"{served.url}/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200
            stream = _sse(response.iter_lines())
            for event in stream:  # the first generated token: the completion is in flight
                assert event is not None
                events.append(event)
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    break
            served.terminate()
            for event in stream:
                if event is None:
                    finished = True
                    break
                events.append(event)
        assert finished, "the stream ended without [DONE]"
        last = events[-1]
        assert last["choices"][0]["finish_reason"] == "length"
        assert last["timings"]["predicted_n"] == tokens
        assert served.wait(timeout=120) == 0
        host, port = re.findall(r"//([\d.]+):(\d+)", served.url)[0]
        assert not port_open(host, int(port))  # llama-server has exited too
        log = (tmp_path / "serve.log").read_text()
        assert "draining: 1 request(s) in flight" in log
    finally:
        served.stop()
