"""Running real model servers on this machine for tests, benchmarks and the demo.

``llama_server_binary`` returns the pinned ``llama-server`` build (built by
``runtime-images/llamacpp/build-llama-server.sh``, i.e. ``make llama-server``);
``LocalServe`` runs ``modeldeploy serve -f SPEC`` as a child process and hands back its
OpenAI base URL once the server answers; ``wait_until`` polls with a deadline. Every wait is
bounded; every server binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "runtime-images" / "llamacpp" / "build-llama-server.sh"
_T = TypeVar("_T")


class NotBuiltError(RuntimeError):
    """The pinned llama-server has not been built on this machine."""


def llama_server_binary(build: bool = False) -> Path:
    """The pinned llama-server; builds it (about 6 minutes) only when ``build`` is true."""
    args = [str(BUILD_SCRIPT)] + ([] if build else ["--check"])
    env = {**os.environ, "PYTHON": os.environ.get("PYTHON", sys.executable)}
    result = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise NotBuiltError(
            "the pinned llama-server is not built: run `make llama-server` (about 6 minutes)"
            + (f"\n{result.stderr.strip()}" if result.stderr.strip() else "")
        )
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], _T | None], timeout: float, what: str, interval: float = 0.1
) -> _T:
    """Poll ``check`` until it returns something other than None, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    """True when something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


class LocalServe:
    """``modeldeploy serve -f SPEC`` as a child process; ``url`` once it is ready."""

    def __init__(
        self,
        spec: Path,
        *,
        cache: Path,
        pvc_root: Path,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.command: Sequence[str] = [
            sys.executable,
            "-m",
            "modeldeploy",
            "serve",
            "-f",
            str(spec),
            "--cache",
            str(cache),
            "--pvc-root",
            str(pvc_root),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
        ]
        self.env = {**os.environ, **(extra_env or {})}
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 180.0) -> str:
        """Start and wait for the base URL line on stdout; return it."""
        stderr: IO[str] | int = subprocess.DEVNULL
        if self.log is not None:
            stderr = self.log.open("w")
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env
        )
        assert self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while not self.url:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stop()
                detail = self.log.read_text()[-3000:] if self.log else ""
                raise RuntimeError(f"`modeldeploy serve` did not become ready:\n{detail}")
            if selector.select(timeout=min(left, 1.0)):
                line = self.process.stdout.readline()
                if line.startswith("http"):
                    self.url = line.strip()
        selector.close()
        return self.url

    def terminate(self) -> None:
        """Send SIGTERM (what the kubelet sends a pod)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its status."""
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.process is None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalServe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
