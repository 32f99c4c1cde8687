"""The data path's HTTP client: stdlib ``http.client`` with keep-alive and ``readinto``.

httpx serves the control path (listings, HEAD, header range reads). Bulk bytes go through
``http.client`` because ``HTTPResponse.readinto`` fills a preallocated buffer straight from
the socket: about three times httpx's throughput per connection, which matters when the
same CPU must also compute sha256 at line rate.

``read_available`` reads a body the way a resumable download needs: whatever has arrived,
at most one socket read, rather than blocking until a whole buffer is full (what
``readinto`` does). Bytes the process holds unwritten are lost when it is killed, so
each piece is handed back the moment it lands.

One connection per (thread, origin) is kept alive across chunks. Redirects are followed
(up to five); the Authorization header never crosses to another origin (the Hub's CDN,
a registry's blob store), and the final URL of a redirect is reused for later chunks.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


class TransportError(Exception):
    """A connection-level failure (reset, timeout, malformed response): worth a retry."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "", port


def read_available(response: http.client.HTTPResponse, buffer: memoryview) -> int:
    """Read into ``buffer`` what has arrived of ``response``'s body; 0 once the body ended.

    Like ``HTTPResponse.readinto`` (clipped to the declared length, the connection released
    for keep-alive at the end of the body) but with ``readinto1``: it returns as soon as any
    byte is there. With a buffer larger than the reader's own, the bytes go from the socket
    straight into ``buffer`` (no copy).
    """
    if response.fp is None or response.chunked:
        return response.readinto(buffer)  # rare for ranged bodies; fills the buffer
    if response.length is not None and len(buffer) > response.length:
        buffer = buffer[: response.length]
    got = response.fp.readinto1(buffer)
    if response.length is not None:
        response.length -= got
    if (not got and len(buffer)) or response.length == 0:
        response.close()  # what readinto does at the end: the connection can carry the next
    return got


class Transport:
    """Per-thread keep-alive connections with redirect following; see the module docstring."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._context = ssl.create_default_context()

    def _connection(self, origin: tuple[str, str, int]) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str, int], http.client.HTTPConnection] = getattr(
            self._local, "pool", {}
        )
        self._local.pool = pool
        connection = pool.get(origin)
        if connection is None:
            scheme, host, port = origin
            if scheme == "https":
                connection = http.client.HTTPSConnection(
                    host, port, timeout=self.timeout, context=self._context
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=self.timeout)
            pool[origin] = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def _drop(self, origin: tuple[str, str, int]) -> None:
        pool = getattr(self._local, "pool", {})
        connection = pool.pop(origin, None)
        if connection is not None:
            connection.close()

    def get(
        self, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, str, dict[str, str]]:
        """GET ``url``; return the final response, its URL and the headers sent to it."""
        sent = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            origin = _origin(url)
            parts = urlsplit(url)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection = self._connection(origin)
            try:
                connection.request("GET", target, headers=sent)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as error:
                self._drop(origin)
                raise TransportError(type(error).__name__) from None
            if response.status not in _REDIRECTS:
                return response, url, sent
            location = response.getheader("Location")
            try:
                response.read()
            except (OSError, http.client.HTTPException):
                self._drop(origin)
            if not location:
                return response, url, sent
            target_url = urljoin(url, location)
            if _origin(target_url) != origin:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = target_url
        raise TransportError(f"more than {MAX_REDIRECTS} redirects")

    def discard(self, url: str) -> None:
        """Close this thread's connection to ``url``'s origin (after a broken response)."""
        self._drop(_origin(url))

    def close(self) -> None:
        """Close every connection any thread opened."""
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()
