"""The operator's health endpoints, served by every replica (leader or standby), outside
Kopf, on the health port.

- ``GET /healthz``: 200 while the API server answers this process (a probe of
  ``/version`` every ``PROBE_INTERVAL_S``) and every request Kopf's watches make succeeds
  (no failed list, watch or discovery call within ``FAILURE_WINDOW_S``, none given up);
  503 otherwise, with the problems. Readiness and start-up probes. It turns unhealthy
  within a probe interval of the API server going away, and healthy again once the
  probe answers and Kopf's watches have reconnected (Kopf retries a failed watch request
  at most ``KOPF_BACKOFFS`` apart, so a watch still failing is seen within the window).
- ``GET /livez``: 200 while Kopf runs. The liveness probe: a restart brings back neither
  an API server nor a permission, so an outage makes replicas unready, not restarted.

Both answer JSON: ``healthy``, ``live``, ``leader`` (null without leader election),
``identity`` and ``problems``. Kopf's own liveness endpoint is not used: it answers 200
whatever its watches do. What Kopf's watches do is read from Kopf's log records (its
request retries and the observers that stop for want of a permission): ``KopfMonitor``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from kubernetes import client

from modeldeploy.metrics import HEALTHY

log = logging.getLogger("modeldeploy.health")

PROBE_INTERVAL_S = 2.0  # the API server probe's period...
PROBE_TIMEOUT_S = 2.0  # ...and timeout
FAILURE_WINDOW_S = 10.0  # a failed Kopf request counts this long (twice its retry cap)
# Kopf's retry delays for a failed API request (``settings.networking.error_backoffs``):
# about a minute in all, as Kopf's default, but never more than 5 s apart, so that a
# watch that keeps failing shows within the window and one that recovers resumes soon
# after its API server does.
KOPF_BACKOFFS = (1, 2, 3, *([5] * 11))

_REQUEST_FAILED = re.compile(
    r"^Request attempt \S+ failed; (?P<how>[^:]+): (?P<method>[A-Z]+) (?P<url>\S+)"
    r"(?: -> (?P<error>.*))?$",
    re.S,
)
_NO_PERMISSION = re.compile(r"^Not enough permissions to watch for (?P<what>\w+)")
_TASK_FAILED = re.compile(r"^(?P<task>[A-Z][\w ]*?(?:for \S+)?) has failed: (?P<error>.*)$", re.S)


@dataclass
class Health:
    """What the health endpoints answer from: the API server probe, Kopf's requests."""

    identity: str = ""
    leader: Callable[[], bool | None] = lambda: None
    api_ok_at: float | None = None  # when the probe last succeeded (monotonic)
    api_error: str | None = None  # the last probe's error; None when it succeeded
    failures: dict[str, tuple[float, str]] = field(default_factory=dict)  # by API path
    stopped: dict[str, str] = field(default_factory=dict)  # watches Kopf gave up
    kopf_stopped: str | None = None

    def api_answered(self, now: float) -> None:
        """The probe succeeded at ``now``."""
        self.api_ok_at, self.api_error = now, None

    def api_failed(self, error: str) -> None:
        """The probe failed."""
        self.api_error = error

    def request_failed(self, what: str, message: str, now: float) -> None:
        """A request of Kopf's watches failed at ``now`` (it retries)."""
        self.failures[what] = (now, message)

    def problems(self, now: float) -> list[str]:
        """Everything that makes this process unhealthy at ``now`` (empty: healthy)."""
        found = []
        if self.kopf_stopped is not None:
            found.append(f"Kopf stopped: {self.kopf_stopped}")
        if self.api_error is not None:
            found.append(f"cannot reach the API server: {self.api_error}")
        elif self.api_ok_at is None:
            found.append("the API server has not answered yet")
        elif now - self.api_ok_at > 2 * PROBE_INTERVAL_S + PROBE_TIMEOUT_S:
            found.append(f"no answer from the API server for {now - self.api_ok_at:.0f}s")
        for what, why in sorted(self.stopped.items()):
            found.append(f"the watch of {what} stopped: {why}")
        for what, (at, message) in sorted(self.failures.items()):
            if now - at <= FAILURE_WINDOW_S:
                found.append(f"Kopf's request for {what} failed {now - at:.0f}s ago: {message}")
        return found

    def live(self) -> bool:
        """Whether Kopf runs."""
        return self.kopf_stopped is None

    def report(self, now: float) -> dict[str, Any]:
        """The endpoints' JSON body."""
        problems = self.problems(now)
        return {
            "healthy": not problems,
            "live": self.live(),
            "leader": self.leader(),
            "identity": self.identity,
            "problems": problems,
        }


class KopfMonitor(logging.Handler):
    """Feeds ``Health`` from Kopf's log records: a failed request of its watches (Kopf logs
    each failed attempt before it retries), an observer's watch stopped for want of a
    permission, a root task failed (Kopf then stops)."""

    def __init__(self, health: Health, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(level=logging.WARNING)
        self.health, self.clock = health, clock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to report
            return
        if failed := _REQUEST_FAILED.match(message):
            if failed["method"] == "GET":  # lists, watches, discovery (Kopf writes nothing)
                path = urllib.parse.urlsplit(failed["url"]).path
                error = failed["error"] or failed["how"]
                self.health.request_failed(path, error, self.clock())
        elif no_permission := _NO_PERMISSION.match(message):
            self.health.stopped[no_permission["what"]] = message
        elif record.levelno >= logging.ERROR and (task := _TASK_FAILED.match(message)):
            self.health.kopf_stopped = f"{task['task']} has failed: {task['error']}"


async def probe_forever(
    health: Health, api: client.ApiClient, clock: Callable[[], float] = time.monotonic
) -> None:
    """Ask the API server for its version every ``PROBE_INTERVAL_S`` (on a thread of its
    own: passes that fill the default executor never delay it)."""
    version = client.VersionApi(api)
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe") as executor:
        while True:
            try:
                await loop.run_in_executor(
                    executor, lambda: version.get_code(_request_timeout=PROBE_TIMEOUT_S)
                )
            except Exception as error:
                if health.api_error is None:
                    log.warning("the API server does not answer: %s", _short(error))
                health.api_failed(_short(error))
            else:
                if health.api_error is not None:
                    log.info("the API server answers again")
                health.api_answered(clock())
            HEALTHY.set(0 if health.problems(clock()) else 1)
            await asyncio.sleep(PROBE_INTERVAL_S)


def _short(error: BaseException) -> str:
    """An exception in one line (urllib3's carry the whole retry history)."""
    if isinstance(error, client.ApiException):
        return f"HTTP {error.status} {error.reason}"
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:300]


async def serve(
    health: Health, address: str, port: int, clock: Callable[[], float] = time.monotonic
) -> web.AppRunner:
    """Serve ``/healthz`` and ``/livez`` on ``address:port``; the runner cleans it up."""

    def answer(healthy: bool) -> web.Response:
        body = json.dumps(health.report(clock()), indent=None) + "\n"
        return web.Response(
            status=200 if healthy else 503, text=body, content_type="application/json"
        )

    async def healthz(_: web.Request) -> web.Response:
        return answer(not health.problems(clock()))

    async def livez(_: web.Request) -> web.Response:
        return answer(health.live())

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    return runner
