"""Downloading one file over HTTP: parallel ranges, resume, streaming sha256, retries.

The file is cut into fixed chunks fetched by ``connections`` workers with Range requests
(through ``transport.Transport``) and written in place (``pwrite``) into ``NAME.part`` as
the bytes arrive. A single hasher thread feeds sha256 the chunks strictly in order, from
memory, so the digest is ready the moment the last byte lands (no second pass). Workers
never run more than ``window`` chunks ahead of the hasher: memory stays under
``window * chunk_size``.

Resume: ``NAME.part.journal`` holds, after a header naming the size, chunk size and the
source's validator, one 8-byte slot per chunk: how many bytes at the chunk's start are in
``.part``. Workers read whatever has arrived (``transport.read_available``), ``pwrite`` it
and then update their chunk's slot with one aligned 8-byte ``pwrite``: no rewrite, no
rename, so it is done after every read. A killed process (SIGKILL, OOM, eviction) thus
leaves a journal that covers every byte it had received; what it loses is only what was
still in socket buffers. (Like the data, the journal is not fsynced: after a power loss
it may claim bytes that never reached the disk, and the sha256 check refuses the file.)
After an interruption the recorded bytes are read back from local disk for the digest (the
only re-read, and only after a crash) and only the rest is requested again. A journal for
other bytes (a different validator, size or chunk size) is discarded.

Transient failures (connection reset, timeouts, 5xx, 429) are retried per chunk with
exponential backoff and jitter. Nothing here logs a URL or a header: both may carry
credentials (signed URLs, bearer tokens).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import random
import struct
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
from modeldeploy.fetch.transport import Transport, TransportError, read_available

log = logging.getLogger(__name__)

MIB = 1024 * 1024
JOURNAL_SUFFIX = ".part.journal"
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
    """The partial file and its journal for a destination path."""
    return dest.with_name(dest.name + PART_SUFFIX), dest.with_name(dest.name + JOURNAL_SUFFIX)


_JOURNAL_MAGIC = b"MDJRNL01"
_JOURNAL_HEADER = struct.Struct("<8sQQ32s")  # magic, size, chunk size, sha256(validator)
_JOURNAL_SLOTS_AT = 64  # slots are 8-byte aligned: one never straddles a page
_SLOT = struct.Struct("<Q")


def journaled_bytes(path: Path) -> int:
    """How many bytes of its ``.part`` a journal records as written (0 if unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    if len(data) < _JOURNAL_SLOTS_AT or not data.startswith(_JOURNAL_MAGIC):
        return 0
    slots = data[_JOURNAL_SLOTS_AT:]
    return sum(value for (value,) in _SLOT.iter_unpack(slots[: len(slots) // 8 * 8]))


class _Journal:
    """Per chunk, how many bytes at its start are final in ``.part``; see the module docstring.

    Each worker writes only the slots of the chunks it holds, with positional writes: no
    lock. The data is written before the slot that vouches for it.
    """

    def __init__(self, path: Path, size: int, chunk_size: int, validator: str) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        self.count = (size + chunk_size - 1) // chunk_size
        header = _JOURNAL_HEADER.pack(
            _JOURNAL_MAGIC, size, chunk_size, hashlib.sha256(validator.encode()).digest()
        )
        self._header = header.ljust(_JOURNAL_SLOTS_AT, b"\0")
        self.have = [0] * self.count
        self._fd = -1

    def length(self, index: int) -> int:
        """The size of chunk ``index``."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def load(self) -> bool:
        """Adopt what a previous run recorded, if it is for the same bytes."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return False
        if len(data) != _JOURNAL_SLOTS_AT + _SLOT.size * self.count or not data.startswith(
            self._header
        ):
            return False
        have = [value for (value,) in _SLOT.iter_unpack(data[_JOURNAL_SLOTS_AT:])]
        if any(value > self.length(i) for i, value in enumerate(have)):
            return False
        self.have = have
        return True

    def create(self) -> None:
        """Start an empty journal (atomically replacing any other)."""
        self.have = [0] * self.count
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(self._header + bytes(_SLOT.size * self.count))
        os.replace(tmp, self.path)

    def open(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def record(self, index: int, written: int) -> None:
        """Record that the first ``written`` bytes of chunk ``index`` are in ``.part``."""
        self.have[index] = written
        os.pwrite(self._fd, _SLOT.pack(written), _JOURNAL_SLOTS_AT + _SLOT.size * index)

    def reset(self) -> None:
        """Forget every chunk (a whole-body stream rewrites the file from the start)."""
        self.have = [0] * self.count
        os.pwrite(self._fd, bytes(_SLOT.size * self.count), _JOURNAL_SLOTS_AT)

    def final_bytes(self) -> int:
        """How many bytes of the file are already in place."""
        return sum(self.have)


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
    part, journal_path = part_paths(dest)
    chunk = max(1, options.chunk_size)
    journal = _Journal(journal_path, size, chunk, validator)
    if not (part.exists() and journal.load()):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        journal.create()
    elif journal.final_bytes():
        log.info("%s: resuming, %s already on disk", name, _size(journal.final_bytes()))
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
        journal: _Journal,
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
        self.journal = journal
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
