"""Running an engine as a child process: signals, graceful drain, exit status.

The engine runs in its own session, so a terminal's Ctrl-C (sent to the whole foreground
process group) reaches only the supervisor, and dies with the supervisor (``PR_SET_PDEATHSIG``)
should that be killed outright. On the first SIGTERM or SIGINT the supervisor drains: it
polls the engine's Prometheus gauges of running and queued requests until they read zero
(or the drain time is up), then sends SIGTERM and waits for the engine to exit, with SIGKILL
after ``stop_seconds``. A second signal skips the drain. llama-server needs this: on SIGTERM
it stops its task loop at once and in-flight completions end mid-stream. The supervisor
exits with the engine's status (128 + N for a signal N, as a shell reports it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from modeldeploy.serve.parent_death import die_with_parent

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


@dataclass(frozen=True)
class Endpoint:
    """Where the engine answers, and which gauges say it is busy."""

    host: str
    port: int
    busy_gauges: tuple[str, ...]

    def url(self, path: str) -> str:
        """``http://HOST:PORT/path`` (IPv6 hosts bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


def parse_gauges(text: str, names: Sequence[str]) -> float | None:
    """Sum the samples of the named metrics in Prometheus text; None if none is present."""
    total: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, rest = line.partition(" ")
        name = name_part.split("{", 1)[0]
        if name not in names:
            continue
        if "{" in name_part and "}" not in name_part:
            # Label values may hold spaces: the value follows the closing brace.
            rest = line.split("}", 1)[1]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        total = (total or 0.0) + value
    return total


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET a URL: (status, body); (0, "") when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, ValueError):
        return 0, ""


def busy_requests(endpoint: Endpoint) -> float | None:
    """Requests running or queued in the engine, or None when it does not say."""
    status, body = http_get(endpoint.url("/metrics"))
    if status != 200:
        return None
    return parse_gauges(body, endpoint.busy_gauges)


def exit_status(returncode: int) -> int:
    """A child's return code as a process exit status (signals as 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    """Start an engine, wait for it, drain and stop it on a signal."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        endpoint: Endpoint,
        *,
        drain_seconds: float = 50.0,
        stop_seconds: float = 15.0,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.endpoint = endpoint
        self.drain_seconds = drain_seconds
        self.stop_seconds = stop_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self._signals = 0
        self._stopping = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1 and self.process is not None and self.process.poll() is None:
            # A second signal: no more waiting for in-flight requests.
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Run the engine until it exits or a signal stops it; return the exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                start_new_session=True,
                # Only the prctl call, resolved before the fork (see parent_death).
                preexec_fn=die_with_parent(signal.SIGKILL),  # noqa: PLW1509
            )
            if on_ready is not None:
                threading.Thread(target=self._watch_ready, args=(on_ready,), daemon=True).start()
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return exit_status(self.process.wait(timeout=POLL_SECONDS))
                if self._signals and not self._stopping:
                    self._stopping = True
                    self._drain()
                    self._stop()
        finally:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch_ready(self, on_ready: Callable[[], None]) -> None:
        process = self.process
        assert process is not None
        while process.poll() is None and not self._signals:
            if http_get(self.endpoint.url("/health"), timeout=1.0)[0] == 200:
                on_ready()
                return
            time.sleep(POLL_SECONDS)

    def _drain(self) -> None:
        """Wait until the engine reports no request running or queued, or the time is up."""
        process = self.process
        assert process is not None
        deadline = time.monotonic() + self.drain_seconds
        first = True
        while process.poll() is None and self._signals == 1:
            busy = busy_requests(self.endpoint)
            if busy is None:
                log.info("draining: the engine reports no request gauges; stopping it")
                return
            if busy == 0:
                if not first:
                    log.info("drained: no request in flight")
                return
            if first:
                log.info("draining: %g request(s) in flight, up to %gs", busy, self.drain_seconds)
                first = False
            if time.monotonic() >= deadline:
                log.warning("drain time is up with %g request(s) in flight", busy)
                return
            time.sleep(POLL_SECONDS)

    def _stop(self) -> None:
        process = self.process
        assert process is not None
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            log.warning("the engine did not stop in %gs; killing it", self.stop_seconds)
            process.kill()


def current_cpu_max() -> str | None:
    """The cgroup v2 ``cpu.max`` of this process, if readable."""
    try:
        return Path("/sys/fs/cgroup/cpu.max").read_text(encoding="ascii")
    except OSError:
        return None


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
