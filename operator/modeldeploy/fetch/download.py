"""Downloading one file over HTTP: parallel ranges, resume, streaming sha256, retries.

The file is cut into fixed chunks fetched by ``connections`` workers with Range requests
(through ``transport.Transport``) and written in place (``pwrite``) into ``NAME.part`` as
the bytes arrive. A single hasher thread feeds sha256 the chunks strictly in order, from
memory, so the digest is ready the moment the last byte lands (no second pass). Workers
never run more than ``window`` chunks ahead of the hasher: memory stays under
``window * chunk_size``.

Resume: ``NAME.part.json`` (the sidecar) records the chunks already written and how far
each unfinished chunk got, with the size, chunk size and the source's validator they
belong to. After an interruption those bytes are read back from local disk for the digest
(the only re-read, and only after a crash) and only the rest is requested again. A sidecar
for other bytes (a different validator or size) is discarded.

Transient failures (connection reset, timeouts, 5xx, 429) are retried per chunk with
exponential backoff and jitter. Nothing here logs a URL or a header: both may carry
credentials (signed URLs, bearer tokens).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from modeldeploy.fetch.errors import (
    CredentialError,
    FetchError,
    MissingFileError,
    SourceChangedError,
    TransientError,
)
from modeldeploy.fetch.transport import Transport, TransportError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
SIDECAR_SUFFIX = ".part.json"
PART_SUFFIX = ".part"
_READ_SIZE = 1 * MIB
_T = TypeVar("_T")


@dataclass(frozen=True)
class HttpLocation:
    """Where to GET a file: a URL and the headers that authorise it (both secret-bearing)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "HttpLocation(<redacted>)"


@dataclass(frozen=True)
class DownloadOptions:
    """Tuning of the transfer; the defaults suit multi-GiB files on a fast network."""

    connections: int = 4
    chunk_size: int = 8 * MIB
    window: int = 0  # chunks buffered ahead of the hasher; 0 means connections + 4
    attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    connect_timeout: float = 30.0
    read_timeout: float = 60.0

    @property
    def effective_window(self) -> int:
        """How many chunks workers may hold before the hasher catches up."""
        return self.window or self.connections + 4


@dataclass
class DownloadResult:
    """What one download did: the digest, and how many bytes crossed the network."""

    sha256: str
    bytes_transferred: int
    bytes_reused: int


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
            f"{self.label}: {_size(done)} of {_size(self.total)} ({percent:.0f}%), "
            f"{_size(int(rate))}/s, eta {eta_text}"
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


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{n} B"


def part_paths(dest: Path) -> tuple[Path, Path]:
    """The partial file and its sidecar for a destination path."""
    return dest.with_name(dest.name + PART_SUFFIX), dest.with_name(dest.name + SIDECAR_SUFFIX)


class _Sidecar:
    """The record of which bytes of ``.part`` are final: whole chunks and partial prefixes."""

    def __init__(self, path: Path, size: int, chunk_size: int, validator: str) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        self.validator = validator
        self.done: set[int] = set()
        self.partial: dict[int, int] = {}
        self._lock = threading.Lock()

    def load(self) -> bool:
        """Adopt what a previous run recorded, if it is for the same bytes."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if (
            not isinstance(data, dict)
            or data.get("size") != self.size
            or data.get("chunkSize") != self.chunk_size
            or data.get("validator") != self.validator
        ):
            return False
        done: set[int] = set()
        for start, end in data.get("done", []):
            done.update(range(int(start), int(end)))
        self.done = done
        self.partial = {int(k): int(v) for k, v in data.get("partial", {}).items()}
        return True

    def record(self, index: int, written: int, complete: bool) -> None:
        """Record that chunk ``index`` holds ``written`` final bytes (all of it if complete)."""
        with self._lock:
            if complete:
                self.done.add(index)
                self.partial.pop(index, None)
            else:
                self.partial[index] = written
            ranges: list[list[int]] = []
            for i in sorted(self.done):
                if ranges and ranges[-1][1] == i:
                    ranges[-1][1] = i + 1
                else:
                    ranges.append([i, i + 1])
            payload = {
                "size": self.size,
                "chunkSize": self.chunk_size,
                "validator": self.validator,
                "done": ranges,
                "partial": {str(k): v for k, v in sorted(self.partial.items())},
            }
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(payload))
            os.replace(tmp, self.path)

    def final_bytes(self) -> int:
        """How many bytes of the file are already in place."""
        whole = sum(min(self.chunk_size, self.size - i * self.chunk_size) for i in self.done)
        return whole + sum(self.partial.values())


def is_transient_status(status: int) -> bool:
    """True for HTTP statuses worth retrying."""
    return status >= 500 or status in (408, 429)


def status_error(status: int, name: str) -> FetchError:
    """The FetchError for a non-transient HTTP status while fetching ``name``."""
    if status in (401, 403):
        return CredentialError(f"{name}: access denied (HTTP {status}); check the credentials")
    if status == 404:
        return MissingFileError(f"{name}: not found at the source (HTTP 404)")
    if status in (409, 412, 416):
        return SourceChangedError(
            f"{name}: the source no longer serves the resolved revision (HTTP {status})"
        )
    return FetchError(f"{name}: unexpected HTTP {status}")


def retry_call(
    action: Callable[[], _T],
    *,
    what: str,
    options: DownloadOptions,
    abort: threading.Event | None = None,
) -> _T:
    """Run ``action`` and retry it on transient failures with exponential backoff."""
    import httpx

    last = ""
    for attempt in range(options.attempts):
        if abort is not None and abort.is_set():
            raise FetchError(f"{what}: aborted")
        try:
            return action()
        except RetryableError as error:
            last = str(error)
        except (httpx.TransportError, TransportError) as error:
            last = type(error).__name__ + (f": {error}" if str(error) else "")
        if attempt + 1 < options.attempts:
            delay = min(options.backoff_max, options.backoff_base * 2**attempt)
            delay *= 0.5 + random.random() / 2
            log.warning("%s: %s; retry %d of %d", what, last, attempt + 1, options.attempts - 1)
            if abort is not None:
                abort.wait(delay)
            else:
                time.sleep(delay)
    raise TransientError(f"{what}: failed after {options.attempts} attempts: {last}")


class RetryableError(Exception):
    """A failure worth retrying: a transient HTTP status or a short body."""


def download(
    location: HttpLocation,
    dest: Path,
    size: int,
    *,
    name: str,
    validator: str,
    options: DownloadOptions | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Download ``location`` into ``dest`` (via ``dest.part``) and return its sha256."""
    options = options or DownloadOptions()
    part, sidecar_path = part_paths(dest)
    chunk = max(1, options.chunk_size)
    count = (size + chunk - 1) // chunk
    sidecar = _Sidecar(sidecar_path, size, chunk, validator)
    if not (part.exists() and sidecar.load()):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        sidecar.done, sidecar.partial = set(), {}
    elif sidecar.done or sidecar.partial:
        log.info("%s: resuming, %s already on disk", name, _size(sidecar.final_bytes()))
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    transport = Transport(options.read_timeout)
    try:
        os.ftruncate(fd, size)
        job = _Job(
            transport=transport,
            location=location,
            fd=fd,
            size=size,
            chunk=chunk,
            count=count,
            name=name,
            sidecar=sidecar,
            options=options,
            progress=progress,
        )
        digest, transferred, reused = job.run()
    finally:
        transport.close()
        os.close(fd)
    os.replace(part, dest)
    with contextlib.suppress(FileNotFoundError):
        sidecar_path.unlink()
    return DownloadResult(digest, transferred, reused)


_RECORD_EVERY = 256 * 1024  # sidecar granularity inside a chunk: what a crash costs per worker


class _Job:
    """One file's transfer: workers fetch chunks, one hasher digests them in order."""

    def __init__(
        self,
        *,
        transport: Transport,
        location: HttpLocation,
        fd: int,
        size: int,
        chunk: int,
        count: int,
        name: str,
        sidecar: _Sidecar,
        options: DownloadOptions,
        progress: Progress | None,
    ) -> None:
        self.transport = transport
        self.url = location.url
        self.headers = dict(location.headers)
        self.fd = fd
        self.size = size
        self.chunk = chunk
        self.count = count
        self.name = name
        self.sidecar = sidecar
        self.options = options
        self.progress = progress
        self.cond = threading.Condition()
        self.pending: dict[int, bytearray] = {}
        self.next_to_hash = 0
        self.next_to_take = 0
        self.abort = threading.Event()
        self.error: BaseException | None = None
        self.transferred = 0
        self.reused = 0
        self.hasher = hashlib.sha256()
        self.whole_body = False  # the server ignored Range: one stream wrote everything

    def run(self) -> tuple[str, int, int]:
        if self.count == 0:
            return self.hasher.hexdigest(), 0, 0
        hasher = threading.Thread(target=self._hash_loop, name=f"sha256-{self.name}", daemon=True)
        hasher.start()
        try:
            # The first chunk runs alone: it follows redirects once and tells whether the
            # server honours Range at all.
            self._worker(first_only=True)
            workers = max(1, min(self.options.connections, self.count))
            if not self.whole_body and not self.abort.is_set():
                with ThreadPoolExecutor(workers, thread_name_prefix="fetch") as pool:
                    for future in [pool.submit(self._worker) for _ in range(workers)]:
                        future.result()
        except BaseException as error:
            self._fail(error)
        finally:
            with self.cond:
                while (
                    self.error is None
                    and self.next_to_hash < self.count
                    and not self.abort.is_set()
                ):
                    self.cond.wait(1.0)
                if self.error is not None:
                    self.abort.set()
                self.cond.notify_all()
            hasher.join()
        if self.error is not None:
            raise self.error
        return self.hasher.hexdigest(), self.transferred, self.reused

    def _fail(self, error: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = error
            self.abort.set()
            self.cond.notify_all()

    def _take(self) -> int | None:
        with self.cond:
            while True:
                if self.abort.is_set() or self.next_to_take >= self.count:
                    return None
                if self.next_to_take < self.next_to_hash + self.options.effective_window:
                    index = self.next_to_take
                    self.next_to_take += 1
                    return index
                self.cond.wait(1.0)

    def _worker(self, first_only: bool = False) -> None:
        try:
            while (index := self._take()) is not None:
                start = index * self.chunk
                length = min(self.chunk, self.size - start)
                buffer = bytearray(length)
                view = memoryview(buffer)
                have = length if index in self.sidecar.done else self.sidecar.partial.get(index, 0)
                if have:
                    # Bytes a previous run wrote: read back for the digest, not refetched.
                    got = os.preadv(self.fd, [view[:have]], start)
                    if got != have:
                        have = 0
                    with self.cond:
                        self.reused += have
                    if self.progress:
                        self.progress.add(have, 0)
                if have < length:
                    retry_call(
                        functools.partial(self._fetch, index, start, view, have),
                        what=self.name,
                        options=self.options,
                        abort=self.abort,
                    )
                    if self.whole_body:
                        return
                with self.cond:
                    self.pending[index] = buffer
                    self.cond.notify_all()
                if first_only:
                    return
        except BaseException as error:
            self._fail(error)
            raise

    def _fetch(self, index: int, start: int, view: memoryview, have: int) -> None:
        """Fill ``view`` from byte ``have`` on with one Range request; resumable on retry."""
        length = len(view)
        progress = self.sidecar.partial.get(index, have)
        first = start + progress
        headers = {
            **self.headers,
            "Range": f"bytes={first}-{start + length - 1}",
            "Accept-Encoding": "identity",
        }
        response, url, sent = self.transport.get(self.url, headers)
        try:
            status = response.status
            if is_transient_status(status):
                response.read()
                raise RetryableError(f"HTTP {status}")
            if status == 200 and first == 0:
                self._stream_whole(response)
                return
            if status != 206:
                response.read()
                raise status_error(status, self.name)
            expected = f"bytes {first}-{start + length - 1}/"
            content_range = response.getheader("Content-Range") or ""
            if not content_range.startswith(expected):
                raise SourceChangedError(
                    f"{self.name}: the server answered range {content_range!r} for {expected}…"
                )
            if url != self.url:
                # Later chunks go straight to where the redirect led (the CDN).
                self.url = url
                self.headers = {
                    k: v for k, v in sent.items() if k not in ("Range", "Accept-Encoding")
                }
            recorded = progress
            while progress < length:
                if self.abort.is_set():
                    raise FetchError(f"{self.name}: aborted")
                # Bounded reads: BufferedReader.readinto fills the whole slice it is given.
                got = response.readinto(view[progress : progress + _RECORD_EVERY])
                if not got:
                    raise RetryableError(f"short body: {progress} of {length} bytes")
                os.pwrite(self.fd, view[progress : progress + got], start + progress)
                progress += got
                with self.cond:
                    self.transferred += got
                if self.progress:
                    self.progress.add(got, got)
                if progress - recorded >= _RECORD_EVERY and progress < length:
                    self.sidecar.record(index, progress, complete=False)
                    recorded = progress
            self.sidecar.record(index, length, complete=True)
        except (OSError, http.client.HTTPException) as error:
            self.transport.discard(url)
            raise TransportError(type(error).__name__) from None
        except BaseException:
            self.transport.discard(url)
            raise
        finally:
            if have < progress < length:
                self.sidecar.record(index, progress, complete=False)

    def _stream_whole(self, response: http.client.HTTPResponse) -> None:
        """Write and digest a full-body 200 answer in one pass (a server without Range)."""
        log.info("%s: the server does not serve ranges; downloading in one stream", self.name)
        self.whole_body = True
        self.sidecar.done, self.sidecar.partial = set(), {}
        self.hasher = hashlib.sha256()  # a retry starts the stream over
        buffer = bytearray(_READ_SIZE)
        view = memoryview(buffer)
        offset = 0
        while got := response.readinto(view):
            if offset + got > self.size:
                raise SourceChangedError(f"{self.name}: the source serves more bytes than resolved")
            os.pwrite(self.fd, view[:got], offset)
            self.hasher.update(view[:got])
            offset += got
            with self.cond:
                self.transferred += got
            if self.progress:
                self.progress.add(got, got)
        if offset != self.size:
            raise RetryableError(f"short body: {offset} of {self.size} bytes")
        with self.cond:
            self.next_to_hash = self.count
            self.cond.notify_all()

    def _hash_loop(self) -> None:
        while True:
            with self.cond:
                while self.next_to_hash not in self.pending:
                    if self.abort.is_set() or self.next_to_hash >= self.count:
                        return
                    self.cond.wait(1.0)
                data = self.pending.pop(self.next_to_hash)
            self.hasher.update(data)
            with self.cond:
                self.next_to_hash += 1
                self.cond.notify_all()
