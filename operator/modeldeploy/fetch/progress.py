"""Progress of a fetch: bytes in place and bytes transferred, logged at an interval."""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Progress:
    """Counts bytes for a set of files and logs one line every ``interval`` seconds."""

    def __init__(self, total: int, interval: float = 10.0, label: str = "fetch") -> None:
        self.total = total
        self.interval = interval
        self.label = label
        self._done = 0
        self._transferred = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread: threading.Thread | None = None

    def add(self, done: int, transferred: int) -> None:
        """Count bytes that are now in place, and how many of them came over the network."""
        with self._lock:
            self._done += done
            self._transferred += transferred

    @property
    def transferred(self) -> int:
        """Bytes received over the network so far."""
        with self._lock:
            return self._transferred

    def line(self) -> str:
        """The progress line as it would be logged now."""
        with self._lock:
            done, transferred = self._done, self._transferred
        elapsed = max(time.monotonic() - self._start, 1e-6)
        rate = transferred / elapsed
        percent = 100.0 * done / self.total if self.total else 100.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (
            f"{self.label}: {format_size(done)} of {format_size(self.total)} ({percent:.0f}%), "
            f"{format_size(int(rate))}/s, eta {eta_text}"
        )

    def __enter__(self) -> Progress:
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="fetch-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info("%s", self.line())


def format_size(n: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"
