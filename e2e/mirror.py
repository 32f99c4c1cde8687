"""A stand-in for an https:// model mirror (a plain web server holding model files).

``ModelMirror`` serves a few local files on 127.0.0.1 the way a static file host or CDN
does, which is what the fetcher's https:// source speaks: ``HEAD`` with the size and a
strong ``ETag``, ``GET`` with one ``Range`` (206 and ``Content-Range``), and ``If-Match``
refused with 412 when the ETag differs. It speaks plain HTTP, so whoever fetches from it
lists its address in ``MODELDEPLOY_PLAIN_HTTP_HOSTS`` (``plain_http_env``); URLs are
written ``https://`` as a spec would name a real mirror. It counts the bytes it served, so
a test can tell a real download from a cache hit.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_PIECE = 1 << 20


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    mirror: ModelMirror


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests and the demo read the fetcher's log, not the mirror's."""

    def do_HEAD(self) -> None:
        self.server.mirror.serve(self, head=True)

    def do_GET(self) -> None:
        self.server.mirror.serve(self, head=False)


class ModelMirror:
    """Serve ``files`` (name -> local path) at ``https://127.0.0.1:PORT/NAME`` over plain HTTP."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = {name: Path(path) for name, path in files.items()}
        self._etags = {name: _etag(path) for name, path in self.files.items()}
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.mirror = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="model-mirror", daemon=True
        )
        self._lock = threading.Lock()
        self.bytes_served = 0
        self.requests = 0  # every request, answered or not

    @property
    def authority(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    def url(self, name: str) -> str:
        """The https:// URL a ModelDeployment names for one file."""
        return f"https://{self.authority}/{name}"

    def plain_http_env(self) -> dict[str, str]:
        """The fetcher setting that makes it reach this mirror over plain HTTP."""
        return {"MODELDEPLOY_PLAIN_HTTP_HOSTS": self.authority}

    def pinned_model(self, name: str, sha256: str) -> dict[str, Any]:
        """``spec.model`` fields for one file here (see ``pinned_model``)."""
        return pinned_model(self.url(name), sha256)

    def reload(self) -> None:
        """Take in files rewritten on disk since: a new size or mtime gives a new ETag."""
        etags = {name: _etag(path) for name, path in self.files.items()}
        with self._lock:
            self._etags = etags

    def start(self) -> ModelMirror:
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> ModelMirror:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve(self, handler: _Handler, head: bool) -> None:
        """Answer one request: 404, 412, 416, or the file (whole or one range)."""
        with self._lock:
            self.requests += 1
        name = handler.path.split("?", 1)[0].lstrip("/")
        path = self.files.get(name)
        if path is None:
            _status(handler, 404)
            return
        size = path.stat().st_size
        etag = self._etags[name]
        if_match = handler.headers.get("If-Match")
        if if_match and if_match not in ("*", etag):
            _status(handler, 412)
            return
        start, end, code = 0, size - 1, 200
        wanted = handler.headers.get("Range")
        if wanted and handler.headers.get("If-Range") in (None, etag):
            match = _RANGE.match(wanted.strip())
            if match is None or not (match.group(1) or match.group(2)):
                _status(handler, 416, {"Content-Range": f"bytes */{size}"})
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start = max(0, size - int(match.group(2)))
            if start >= size or start > end:
                _status(handler, 416, {"Content-Range": f"bytes */{size}"})
                return
            code = 206
        length = max(0, end - start + 1)
        handler.send_response(code)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("ETag", etag)
        if code == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        handler.end_headers()
        if head or not length:
            return
        with path.open("rb") as source:
            offset, left = start, length
            while left > 0:
                sent = os.sendfile(
                    handler.connection.fileno(), source.fileno(), offset, min(_PIECE, left)
                )
                if sent == 0:
                    break
                offset += sent
                left -= sent
                with self._lock:
                    self.bytes_served += sent


def pinned_model(url: str, sha256: str) -> dict[str, Any]:
    """``spec.model`` fields for a mirror's file: source, resolved revision, pinned sha256.

    A pinned digest needs a pinned revision; for https:// the fetcher derives it from the
    file's ETag, so the fetcher's resolver is asked, as a person would run it once.
    """
    from modeldeploy.api import ModelSource
    from modeldeploy.fetch.resolve import resolve_model

    model = ModelSource.model_validate({"source": url})
    settings = {"MODELDEPLOY_PLAIN_HTTP_HOSTS": urlsplit(url).netloc}
    resolution = resolve_model(model, settings=settings, read_metadata=False)
    name = url.rsplit("/", 1)[1]
    return {"source": url, "revision": resolution.revision, "digests": {name: sha256}}


def _status(handler: _Handler, code: int, headers: Mapping[str, str] | None = None) -> None:
    handler.send_response(code)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _etag(path: Path) -> str:
    """A strong ETag from the file's identity (size and modification time), as nginx does."""
    stat = path.stat()
    token = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return f'"{token[:32]}"'
