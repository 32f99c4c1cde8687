"""An aiohttp application on 127.0.0.1, served from an event loop of its own thread: the
base of the unit tests' stand-ins for llama-server (adapter router, gateway); and
``wait_for``, their poll with a deadline."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from e2e.runtime import free_port

DEADLINE = 10.0


def wait_for(check: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Poll ``check`` until it holds, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass(kw_only=True)
class ThreadedApp:
    """Serves ``routes(app)`` while entered; ``release_stream`` lets a held stream go on."""

    port: int = field(default_factory=free_port)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def __post_init__(self) -> None:
        self._release = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def routes(self, app: web.Application) -> None:
        """Add the stand-in's handlers."""
        raise NotImplementedError

    def release_stream(self) -> None:
        """Let a waiting stream send the rest of its chunks."""
        self.loop.call_soon_threadsafe(self._release.set)

    def __enter__(self) -> ThreadedApp:
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        self._thread.start()

        async def start() -> None:
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(DEADLINE)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(DEADLINE)
        self.loop.close()


def held_stream_events(port: int, body: Mapping[str, object], app: ThreadedApp) -> list[bytes]:
    """POST a streaming completion to ``port`` while ``app`` holds its second chunk: assert
    the first event came through alone, release the rest, return every event."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body))
        response = connection.getresponse()
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        first = response.readline()
        assert json.loads(first.removeprefix(b"data: "))["choices"][0]["text"] == " hel"
        assert response.readline() == b"\n"
        app.release_stream()
        rest = response.read()
    finally:
        connection.close()
    return [first.rstrip(b"\n"), *(event for event in rest.split(b"\n\n") if event)]
