"""Downloading one file over HTTP: parallel ranges, resume, streaming sha256.

The file is cut into fixed chunks fetched by ``connections`` workers with Range requests
(through ``transport.Transport``) and written in place (``pwrite``) into ``NAME.part`` as
the bytes arrive. A single hasher thread feeds sha256 the chunks strictly in order, from
memory, so the digest is ready the moment the last byte lands (no second pass). Workers
never run more than ``window`` chunks ahead of the hasher: memory stays under
``window * chunk_size``.

Resume: workers read whatever has arrived (``transport.read_available``), ``pwrite`` it and
record it in the chunk's slot of the resume journal (``journal``), so a killed process
loses only what was still in socket buffers. After an interruption the recorded bytes are
read back from local disk for the digest (the only re-read, and only after a crash) and
only the rest is requested again. A journal for other bytes is discarded and the file
starts over.

Each chunk is retried on its own under the retry policy (``retry``), going on from the
last byte it wrote. Nothing here logs a URL or a header: both may carry credentials
(signed URLs, bearer tokens).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from modeldeploy.fetch.errors import FetchError, SourceChangedError
from modeldeploy.fetch.journal import Journal, part_paths
from modeldeploy.fetch.progress import Progress, format_size
from modeldeploy.fetch.retry import RetryableError, is_transient_status, retry_call, status_error
from modeldeploy.fetch.transport import Transport, TransportError, read_available

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_READ_SIZE = 1 * MIB


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
    part, journal_path = part_paths(dest)
    chunk = max(1, options.chunk_size)
    journal = Journal(journal_path, size, chunk, validator)
    if not (part.exists() and journal.load()):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        journal.create()
    elif journal.final_bytes():
        log.info("%s: resuming, %s already on disk", name, format_size(journal.final_bytes()))
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o644)
    transport = Transport(options.read_timeout)
    try:
        journal.open()
        os.ftruncate(fd, size)
        job = _Job(
            transport=transport,
            location=location,
            fd=fd,
            size=size,
            chunk=chunk,
            count=journal.count,
            name=name,
            journal=journal,
            options=options,
            progress=progress,
        )
        digest, transferred, reused = job.run()
    finally:
        transport.close()
        journal.close()
        os.close(fd)
    os.replace(part, dest)
    with contextlib.suppress(FileNotFoundError):
        journal_path.unlink()
    return DownloadResult(digest, transferred, reused)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


@dataclass(eq=False, repr=False)  # no repr: the URL and headers may carry credentials
class _Job:
    """One file's transfer: workers fetch chunks, one hasher digests them in order."""

    transport: Transport
    location: HttpLocation
    fd: int
    size: int
    chunk: int
    count: int
    name: str
    journal: Journal
    options: DownloadOptions
    progress: Progress | None

    def __post_init__(self) -> None:
        # Where the bytes come from (a redirect changes it), and what the threads share.
        self.url = self.location.url
        self.headers = dict(self.location.headers)
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
                length = self.journal.length(index)
                buffer = bytearray(length)
                view = memoryview(buffer)
                have = self.journal.have[index]
                if have:
                    # Bytes a previous run wrote: read back for the digest, not refetched.
                    got = os.preadv(self.fd, [view[:have]], start)
                    if got != have:
                        have = 0
                        self.journal.record(index, 0)
                    with self.cond:
                        self.reused += have
                    if self.progress:
                        self.progress.add(have, 0)
                if have < length:
                    retry_call(
                        functools.partial(self._fetch, index, start, view),
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

    def _fetch(self, index: int, start: int, view: memoryview) -> None:
        """Fill ``view`` from what the journal has on with one Range request; resumable."""
        length = len(view)
        progress = self.journal.have[index]  # a retry goes on where the last attempt stopped
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
            while progress < length:
                if self.abort.is_set():
                    raise FetchError(f"{self.name}: aborted")
                # Whatever has arrived, written and journaled at once: a kill loses nothing
                # this process had received.
                got = read_available(response, view[progress : progress + _READ_SIZE])
                if not got:
                    raise RetryableError(f"short body: {progress} of {length} bytes")
                _pwrite_all(self.fd, view[progress : progress + got], start + progress)
                progress += got
                self.journal.record(index, progress)
                with self.cond:
                    self.transferred += got
                if self.progress:
                    self.progress.add(got, got)
        except (OSError, http.client.HTTPException) as error:
            self.transport.discard(url)
            raise TransportError(type(error).__name__) from None
        except BaseException:
            self.transport.discard(url)
            raise

    def _stream_whole(self, response: http.client.HTTPResponse) -> None:
        """Write and digest a full-body 200 answer in one pass (a server without Range)."""
        log.info("%s: the server does not serve ranges; downloading in one stream", self.name)
        self.whole_body = True
        self.journal.reset()
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
