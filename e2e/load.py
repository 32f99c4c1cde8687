"""A bounded load generator: streaming chat completions spread over a model's Ready pods.

``LoadGenerator`` keeps a target number of streaming ``/v1/chat/completions`` requests in
flight (changeable while it runs, from any thread), each sent to the least busy of the
endpoints it currently knows (ties go round-robin). It re-reads the endpoint list (for a
ModelDeployment, ``ready_pods``: its Ready pods' IPs) every ``refresh_seconds`` as pods
come and go, and admits a new endpoint only once the engine's own health path answers 200
there, so a pod that the API calls Ready before its engine listens gets no request.
Requests already in flight finish where they started.

Everything is bounded: at most ``max_requests`` requests and ``max_seconds`` of issuing,
each request at most ``request_timeout`` seconds, and the whole run at most
``max_seconds + request_timeout``. Every request is recorded (``RequestRecord``): the pod
and IP that answered, monotonic timestamps (start, first token, end), the HTTP status, the
chunks received, the finish reason, whether ``data: [DONE]`` arrived, and any error.

Only loopback addresses (127.0.0.0/8, ::1) are accepted as endpoints: the local cluster's
pod IPs lie in 127.1.0.0/16, and load goes nowhere else.

    load = LoadGenerator(ready_pods(core, namespace, selector), model="gemma",
                         max_requests=400, max_seconds=300).start()
    load.set_concurrency(8)
    ...
    load.stop()
    assert all(r.ok for r in load.records())
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import httpx
from kubernetes import client

log = logging.getLogger("e2e.load")

DEFAULT_PROMPT = "Tell a short story about island number {index}."


@dataclass(frozen=True)
class Endpoint:
    """One place requests go: a pod's name and its (loopback) IP."""

    name: str
    ip: str

    def __post_init__(self) -> None:
        if not ipaddress.ip_address(self.ip).is_loopback:
            raise ValueError(f"{self.name}: {self.ip} is not a loopback address; load stays local")

    def base(self, port: int) -> str:
        """The endpoint's base URL on ``port``."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{port}"


@dataclass(frozen=True)
class RequestRecord:
    """One request's outcome. Times are ``time.monotonic()`` seconds."""

    index: int
    pod: str
    ip: str
    concurrency: int  # the target concurrency when it was sent
    started: float
    first_token: float | None = None
    finished: float | None = None
    status_code: int | None = None
    chunks: int = 0  # content chunks received
    finish_reason: str | None = None
    done: bool = False  # the stream ended with data: [DONE]
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Answered in full: HTTP 200, a finish reason, ``[DONE]``, no error."""
        return (
            self.error is None
            and self.status_code == 200
            and self.finish_reason is not None
            and self.done
        )

    @property
    def seconds(self) -> float | None:
        """Start to end, when it ended."""
        return None if self.finished is None else self.finished - self.started


def pod_endpoint(pod: client.V1Pod) -> Endpoint | None:
    """The endpoint of a pod that is Ready, has an IP and is not being deleted; else None."""
    status = pod.status
    if pod.metadata.deletion_timestamp is not None or status is None or not status.pod_ip:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    containers = status.container_statuses or []
    if not ready or not all(c.ready for c in containers):
        return None
    return Endpoint(pod.metadata.name, status.pod_ip)


def ready_pods(
    core: client.CoreV1Api, namespace: str, selector: str
) -> Callable[[], list[Endpoint]]:
    """A reader of the Ready pods matching ``selector`` (what ``LoadGenerator`` polls)."""

    def read() -> list[Endpoint]:
        pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=10)
        found = (pod_endpoint(pod) for pod in pods.items)
        return sorted((e for e in found if e is not None), key=lambda e: e.name)

    return read


class LoadGenerator:
    """Streaming chat completions at a target concurrency over changing endpoints."""

    def __init__(
        self,
        endpoints: Callable[[], Sequence[Endpoint]],
        *,
        model: str,
        max_requests: int,
        max_seconds: float,
        port: int = 8000,
        max_tokens: int = 48,
        request_timeout: float = 120.0,
        refresh_seconds: float = 1.0,
        health_path: str = "/health",
        prompt: str = DEFAULT_PROMPT,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if max_requests < 1 or max_seconds <= 0 or request_timeout <= 0:
            raise ValueError("max_requests, max_seconds and request_timeout must be positive")
        self.read_endpoints = endpoints
        self.model = model
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.port = port
        self.max_tokens = max_tokens
        self.request_timeout = request_timeout
        self.refresh_seconds = refresh_seconds
        self.health_path = health_path
        self.prompt = prompt
        # Each request runs for max_tokens; the generator stops at the first EOS otherwise.
        self.extra_body = {"ignore_eos": True, "temperature": 0.8, **(extra_body or {})}
        self.started_at: float | None = None  # monotonic, when start() ran
        self.admitted: dict[Endpoint, float] = {}  # every endpoint ever admitted, and when
        self.concurrency_changes: list[tuple[float, int]] = []  # (monotonic, target)
        self._lock = threading.Lock()
        self._records: dict[int, RequestRecord] = {}
        self._current: list[Endpoint] = []  # admitted and still listed
        self._in_flight: Counter[Endpoint] = Counter()
        self._assigned: Counter[Endpoint] = Counter()
        self._concurrency = 0
        self._issued = 0
        self._stopping = False
        self._refresh_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._http: httpx.AsyncClient | None = None  # one pool for every worker
        self._thread: threading.Thread | None = None
        self._loop_ready = threading.Event()
        self._failure: BaseException | None = None

    # -- from any thread ---------------------------------------------------------------

    def start(self) -> LoadGenerator:
        """Run the generator's event loop in a background thread (concurrency 0 at first)."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="load-generator", daemon=True)
        self._thread.start()
        if not self._loop_ready.wait(30):
            raise RuntimeError("the load generator's loop did not start")
        return self

    def set_concurrency(self, target: int) -> None:
        """Keep ``target`` requests in flight from now on (lower: workers end after theirs)."""
        if target < 0:
            raise ValueError("concurrency must not be negative")
        loop = self._loop
        if loop is None:
            raise RuntimeError("not started")
        with self._lock:
            self.concurrency_changes.append((time.monotonic(), target))
        loop.call_soon_threadsafe(self._apply_concurrency, target)

    def stop(self, timeout: float | None = None) -> None:
        """Issue no more requests, wait for those in flight (bounded), end the loop."""
        with self._lock:
            self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended on its own meanwhile
                loop.call_soon_threadsafe(self._apply_concurrency, 0)
        if self._thread is not None:
            self._thread.join(self.request_timeout + 30 if timeout is None else timeout)
            if self._thread.is_alive():
                raise TimeoutError("the load generator did not stop in time")
        if self._failure is not None:
            raise RuntimeError("the load generator failed") from self._failure

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the loop still runs."""
        return self._thread is not None and self._thread.is_alive()

    def records(self) -> list[RequestRecord]:
        """Every request so far (finished or not), in the order they were sent."""
        with self._lock:
            return [self._records[i] for i in sorted(self._records)]

    def completed(self) -> list[RequestRecord]:
        """The requests that ended, successfully or not."""
        return [r for r in self.records() if r.finished is not None]

    def errors(self) -> list[RequestRecord]:
        """The requests that ended without a full answer."""
        return [r for r in self.completed() if not r.ok]

    def in_flight(self) -> int:
        """Requests sent and not yet ended."""
        with self._lock:
            return sum(self._in_flight.values())

    def endpoints(self) -> list[Endpoint]:
        """The endpoints requests may go to now."""
        with self._lock:
            return list(self._current)

    def answered_by(self) -> Counter[str]:
        """Successful requests per pod name."""
        return Counter(r.pod for r in self.records() if r.ok)

    def in_flight_at(self, at: float) -> int:
        """Requests in flight at monotonic time ``at`` (from the records)."""
        return sum(
            1 for r in self.records() if r.started <= at and (r.finished is None or r.finished > at)
        )

    def summary(self) -> dict[str, Any]:
        """Counts and latencies of the run so far (for reports and failure messages)."""
        records = self.records()
        done = [r for r in records if r.finished is not None]
        seconds = sorted(r.seconds for r in done if r.ok and r.seconds is not None)
        errors = [r for r in done if not r.ok]
        return {
            "requests": len(records),
            "completed": len(done),
            "ok": len(done) - len(errors),
            "errors": len(errors),
            "firstErrors": [_brief(r) for r in errors[:5]],
            "answeredBy": dict(self.answered_by()),
            "secondsP50": round(seconds[len(seconds) // 2], 3) if seconds else None,
            "secondsMax": round(seconds[-1], 3) if seconds else None,
            "refreshError": self._refresh_error,
        }

    # -- on the loop -------------------------------------------------------------------

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as error:  # reported by stop()
            self._failure = error
            self._loop_ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._loop_ready.set()
        # A fresh connection per request: reusing kept-alive connections to llama-server
        # after streamed answers, about one request in 15 failed with "Server disconnected
        # without sending a response" (the server had closed the connection); with fresh
        # connections none did. Loopback connections cost next to nothing.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        timeout = httpx.Timeout(self.request_timeout, connect=10)
        # trust_env=False: no proxy from the environment; the endpoints are loopback IPs.
        async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as http:
            self._http = http
            refresher = asyncio.create_task(self._refresh_forever(http))
            try:
                async with asyncio.timeout(self.max_seconds + self.request_timeout):
                    await self._until_stopped()
            except TimeoutError:
                log.warning("load generator: time cap reached with requests in flight")
            finally:
                refresher.cancel()
                for task in self._workers.values():
                    task.cancel()
                await asyncio.gather(refresher, *self._workers.values(), return_exceptions=True)

    async def _until_stopped(self) -> None:
        """Return once issuing has ended (stopped, capped) and no worker is left."""
        assert self._wake is not None
        deadline = self._deadline()
        while True:
            with self._lock:
                ended = self._stopping or self._issued >= self.max_requests
            if time.monotonic() >= deadline:
                ended = True
                with self._lock:
                    self._stopping = True
                self._wake.set()
            if ended and all(task.done() for task in self._workers.values()):
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(1.0, deadline - time.monotonic()))):
                    await self._wake.wait()

    def _deadline(self) -> float:
        assert self.started_at is not None
        return self.started_at + self.max_seconds

    def _apply_concurrency(self, target: int) -> None:
        with self._lock:
            self._concurrency = 0 if self._stopping else target
            target = self._concurrency
        for slot in range(target):
            task = self._workers.get(slot)
            if task is None or task.done():
                self._workers[slot] = asyncio.create_task(self._worker(slot))
        assert self._wake is not None
        self._wake.set()

    async def _refresh_forever(self, http: httpx.AsyncClient) -> None:
        while True:
            try:
                listed = await asyncio.to_thread(self.read_endpoints)
            except Exception as error:  # the API server, for a moment: keep the last list
                self._refresh_error = f"{type(error).__name__}: {error}"
                log.debug("load generator: reading endpoints failed: %s", error)
            else:
                await self._admit(http, list(listed))
            await asyncio.sleep(self.refresh_seconds)

    async def _admit(self, http: httpx.AsyncClient, listed: list[Endpoint]) -> None:
        """Keep the listed endpoints; admit new ones whose health path answers 200."""
        with self._lock:
            known = set(self._current)
        new = [e for e in listed if e not in known]
        healthy = await asyncio.gather(*(self._healthy(http, e) for e in new))
        admitted = {e for e, ok in zip(new, healthy, strict=True) if ok}
        now = time.monotonic()
        with self._lock:
            self._current = [e for e in listed if e in known or e in admitted]
            for endpoint in admitted:
                self.admitted.setdefault(endpoint, now)
        if admitted:
            assert self._wake is not None
            self._wake.set()

    async def _healthy(self, http: httpx.AsyncClient, endpoint: Endpoint) -> bool:
        try:
            response = await http.get(endpoint.base(self.port) + self.health_path, timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _pick(self) -> Endpoint | None:
        """The least busy current endpoint (fewest in flight, then fewest sent)."""
        with self._lock:
            if not self._current:
                return None
            return min(self._current, key=lambda e: (self._in_flight[e], self._assigned[e]))

    def _claim(self, slot: int) -> tuple[int, Endpoint] | bool:
        """A request number and endpoint for this worker; False: wait; True: end."""
        endpoint = self._pick()
        with self._lock:
            if self._stopping or slot >= self._concurrency or self._issued >= self.max_requests:
                return True
            if endpoint is None or endpoint not in self._current:
                return False
            index = self._issued
            self._issued += 1
            self._in_flight[endpoint] += 1
            self._assigned[endpoint] += 1
            self._records[index] = RequestRecord(
                index, endpoint.name, endpoint.ip, self._concurrency, time.monotonic()
            )
            return index, endpoint

    async def _worker(self, slot: int) -> None:
        assert self._wake is not None and self._http is not None
        http = self._http
        try:
            while True:
                if time.monotonic() >= self._deadline():
                    return
                claimed = self._claim(slot)
                if claimed is True:
                    return
                if claimed is False:  # no endpoint yet: wait for the refresher
                    await asyncio.sleep(0.1)
                    continue
                index, endpoint = claimed
                try:
                    await self._request(http, index, endpoint)
                finally:
                    with self._lock:
                        self._in_flight[endpoint] -= 1
        finally:
            self._wake.set()

    async def _request(self, http: httpx.AsyncClient, index: int, endpoint: Endpoint) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self.prompt.format(index=index)}],
            "max_tokens": self.max_tokens,
            "stream": True,
            **self.extra_body,
        }
        url = endpoint.base(self.port) + "/v1/chat/completions"
        outcome: dict[str, Any] = {}
        chunks = 0
        try:
            async with http.stream("POST", url, json=body) as response:
                outcome["status_code"] = response.status_code
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")
                    outcome["error"] = f"HTTP {response.status_code}: {text[:300]}"
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line.removeprefix("data:").strip()
                    if data == "[DONE]":
                        outcome["done"] = True
                        continue
                    event = json.loads(data)
                    if "error" in event:
                        outcome["error"] = f"error event: {json.dumps(event)[:300]}"
                        continue
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            chunks += 1
                            outcome.setdefault("first_token", time.monotonic())
                        if choice.get("finish_reason"):
                            outcome["finish_reason"] = choice["finish_reason"]
        except asyncio.CancelledError:
            outcome["error"] = "cancelled: the load generator's time cap"
            raise
        except (httpx.HTTPError, json.JSONDecodeError, OSError) as error:
            outcome["error"] = f"{type(error).__name__}: {error}"
        finally:
            if not outcome.get("done") and "error" not in outcome:
                outcome["error"] = "the stream ended without data: [DONE]"
            with self._lock:
                self._records[index] = replace(
                    self._records[index], finished=time.monotonic(), chunks=chunks, **outcome
                )


def _brief(record: RequestRecord) -> dict[str, Any]:
    """What a failure message shows of a failed request."""
    return {
        "pod": record.pod,
        "status": record.status_code,
        "error": record.error,
        "done": record.done,
        "finishReason": record.finish_reason,
        "chunks": record.chunks,
    }


__all__ = [
    "DEFAULT_PROMPT",
    "Endpoint",
    "LoadGenerator",
    "RequestRecord",
    "pod_endpoint",
    "ready_pods",
]
