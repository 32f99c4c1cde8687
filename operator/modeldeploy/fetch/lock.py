"""A cache lock that works on shared network filesystems and survives crashed holders.

``flock``/``fcntl`` locks are unreliable on NFS and similar volumes, so the lock is a file
created with ``O_CREAT | O_EXCL`` (atomic on NFSv3+ and every local filesystem). It holds
the owner's host, pid, a random token and a heartbeat counter that a background thread
rewrites every ``heartbeat_interval`` seconds, in place, padded to a fixed size with one
positional write (no truncate), so a reader never sees new content with an old tail.

Waiters never compare clocks across machines: a waiter judges the lock stale when its
content has not changed for ``stale_after`` seconds of the waiter's own monotonic clock.
It then renames the lock file aside (only one waiter's rename can succeed), checks that
what it moved is what it judged stale (else puts it back) and competes for a fresh lock.
A holder whose heartbeat finds its lock gone or owned by another token knows it lost the
lock and must not publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from modeldeploy.fetch.errors import LockLostError

log = logging.getLogger(__name__)
CONTENT_BYTES = 512  # JSON padded with spaces: every rewrite has the same length


class CacheLock:
    """An exclusive lock file with a heartbeat; see the module docstring for the protocol."""

    def __init__(
        self,
        path: Path,
        *,
        heartbeat_interval: float = 5.0,
        stale_after: float = 60.0,
        poll_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.poll_interval = poll_interval
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._beat = 0
        self._held = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> bytes:
        return (
            json.dumps(
                {
                    "host": self.host,
                    "pid": self.pid,
                    "token": self.token,
                    "beat": self._beat,
                    "time": time.time(),
                }
            )
            .encode()
            .ljust(CONTENT_BYTES)
        )

    def try_acquire(self) -> bool:
        """Create the lock file if nobody holds it; start the heartbeat on success."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._held = True
        self._lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="cache-lock", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_interval):
            try:
                with self.path.open("r+b") as handle:
                    current = json.loads(handle.read() or b"{}")
                    if current.get("token") != self.token:
                        raise LockLostError("taken over")
                    self._beat += 1
                    os.pwrite(handle.fileno(), self._content(), 0)
                    os.fsync(handle.fileno())
            except (OSError, ValueError, LockLostError):
                log.warning("cache lock %s was taken over by another fetcher", self.path.name)
                self._lost.set()
                return

    def check(self) -> None:
        """Raise LockLostError unless this fetcher still holds the lock."""
        if not self._held or self._lost.is_set():
            raise LockLostError(
                f"the cache lock {self.path.name} was taken over while downloading; "
                "another fetcher judged this one stale"
            )
        current: dict[str, object] = {}
        for _ in range(3):  # a read that raced a rewrite on a network filesystem: read again
            try:
                current = json.loads(self.path.read_bytes() or b"{}")
                break
            except ValueError:
                continue
            except OSError:
                break
        if current.get("token") != self.token:
            self._lost.set()
            raise LockLostError(f"the cache lock {self.path.name} is now held by another fetcher")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._held and not self._lost.is_set():
            with contextlib.suppress(OSError, ValueError):
                current = json.loads(self.path.read_bytes() or b"{}")
                if current.get("token") == self.token:
                    self.path.unlink()
        self._held = False

    def describe_holder(self) -> str:
        """``host pid N`` of the current holder, for log lines."""
        try:
            current = json.loads(self.path.read_bytes() or b"{}")
            return f"{current.get('host', '?')} pid {current.get('pid', '?')}"
        except (OSError, ValueError):
            return "unknown holder"

    def _break_if_stale(self, observed: bytes) -> bool:
        """Move a lock whose content is still ``observed`` aside; True if this call did."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            moved = aside.read_bytes()
            if moved != observed:
                # The holder beat between our read and the rename: give it back its lock.
                with contextlib.suppress(FileExistsError, OSError):
                    os.link(aside, self.path)
                return False
            log.warning("removed a stale cache lock (%s)", _holder(moved))
            return True
        finally:
            with contextlib.suppress(OSError):
                aside.unlink()

    def acquire_or_wait(self, done: Callable[[], bool], *, deadline: float | None = None) -> bool:
        """Take the lock (True), or return False once ``done()`` says another fetcher finished."""
        observed: bytes | None = None
        since = time.monotonic()
        announced = False
        while True:
            if done():
                return False
            if self.try_acquire():
                return True
            try:
                content = self.path.read_bytes()
            except FileNotFoundError:
                continue
            now = time.monotonic()
            if content != observed:
                observed, since = content, now
            elif now - since >= self.stale_after and self._break_if_stale(content):
                observed = None
                continue
            if not announced:
                log.info("waiting for the cache lock held by %s", _holder(content))
                announced = True
            if deadline is not None and now > deadline:
                raise LockLostError(f"gave up waiting for the cache lock {self.path.name}")
            time.sleep(self.poll_interval)


def _holder(content: bytes) -> str:
    try:
        data = json.loads(content or b"{}")
        return f"{data.get('host', '?')} pid {data.get('pid', '?')}"
    except ValueError:
        return "unknown holder"
