"""``modeldeploy fetch`` killed with SIGKILL mid-transfer resumes with only what it lacked.

The server sends a budget of body bytes that ends inside chunks (not on any read or
record boundary) and then holds every response open. Once the fetcher's journal covers
every byte sent, the process is SIGKILLed: no ``finally``, no flush. The second run must
ask for exactly the rest of the file, and the result must still verify.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.unit.fetch.conftest import sha256
from tests.unit.fetch.standins import Blob, RangeServer, _Handler, wait_until

from modeldeploy.fetch.journal import JOURNAL_SUFFIX, PART_SUFFIX, journaled_bytes

NAME = "killed-Q4_K_M.gguf"
MIB = 1024 * 1024


class StallingServer(RangeServer):
    """Sends at most ``budget`` body bytes in all, then holds each response open until released."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget: int | None = budget
        self.release = threading.Event()

    def _write_body(self, handler: _Handler, key: str, blob: Blob, start: int, length: int) -> None:
        assert blob.data is not None
        with self.lock:
            allowed = length
            if self.budget is not None:
                allowed = max(0, min(length, self.budget - sum(self.bytes_served.values())))
            self.bytes_served[key] += allowed
        handler.connection.sendall(memoryview(blob.data)[start : start + allowed])
        if allowed < length:
            self.release.wait(60)
            raise ConnectionResetError("stalled response abandoned")


def _cli(server: RangeServer, cache: Path, digest: str) -> list[str]:
    return [
        sys.executable, "-m", "modeldeploy.fetch",
        "--source", server.https(NAME),
        "--digest", f"{NAME}={digest}",
        "--cache", str(cache),
        "--chunk-mib", "1",
        "--connections", "2",
        "--progress-interval", "0",
        "--lock-stale-after", "0.5",  # the killed run's lock is left behind; see lock.py
    ]  # fmt: skip


def test_a_fetch_killed_mid_chunk_refetches_only_the_bytes_it_had_not_received(
    tmp_path: Path,
) -> None:
    data = os.urandom(6 * MIB)
    budget = 2 * MIB + 777_777  # ends inside chunks, on no 64 KiB or 256 KiB boundary
    server = StallingServer(budget)
    server.add(NAME, data)
    server.start()
    env = {"PATH": os.environ.get("PATH", ""), **server.env}
    cache = tmp_path / "cache"
    victim = subprocess.Popen(
        _cli(server, cache, sha256(data)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def journaled() -> int:
            if victim.poll() is not None:
                raise AssertionError(f"the fetch ended early: {victim.stderr.read()}")  # type: ignore[union-attr]
            return sum(journaled_bytes(p) for p in cache.rglob("*" + JOURNAL_SUFFIX))

        # Every byte the server sent has been received, written and journaled.
        wait_until(lambda: server.total_served() == budget and journaled() == budget)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL
        assert [p.name for p in cache.rglob("*" + PART_SUFFIX)] == [NAME + PART_SUFFIX]

        server.budget = None
        server.release.set()
        server.reset_counters()
        done = subprocess.run(
            _cli(server, cache, sha256(data)),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["files"][0]["sha256"] == sha256(data)
        assert result["bytesTransferred"] == len(data) - budget
        assert server.total_served() == len(data) - budget
        assert (Path(result["path"]) / NAME).read_bytes() == data
        assert not list(cache.rglob("*" + PART_SUFFIX)) and not list(cache.rglob("*.journal"))
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(30)
        if victim.stderr is not None:
            victim.stderr.close()
        server.release.set()
        server.stop()
