"""Stand-ins for the services a fetch talks to, served on 127.0.0.1 and speaking their protocols.

- ``RangeServer``: a stand-in for any static HTTPS file host (a model mirror, a CDN): HTTP/1.1
  keep-alive, single ``Range`` requests (206 with ``Content-Range``), ``ETag`` and
  ``If-Match``/``If-Range``, ``HEAD``, optional bearer-token check, a byte counter per path,
  a gate that holds ranged GETs until a test releases it, and a fault that cuts every
  connection after N bytes and then answers 503 (a dead link) until ``restore()``.
- ``HubStandin``: a stand-in for the Hugging Face Hub, speaking the parts of its documented
  HTTP API that ``huggingface_hub`` and the fetcher use: ``/api/models/{repo}[/revision/{rev}]``
  (``?blobs=true`` adds sizes and LFS sha256), ``/api/models/{repo}/tree/{rev}[/{path}]``,
  ``/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size`` and Range; 401 for a wrong token, 404 with ``X-Error-Code`` for a
  missing repo, revision or file; LFS files can be redirected to a separate "CDN" origin
  the way the real Hub does.

Neither is a mock of our code: both are servers the real client libraries talk to.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_PIECE = 1 << 20


@dataclass
class Blob:
    """Content served at one path: bytes in memory or a file on disk (sent with sendfile)."""

    data: bytes | None = None
    path: Path | None = None
    etag: str | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def sha256(self) -> str:
        digest = hashlib.sha256()
        if self.data is not None:
            digest.update(self.data)
        else:
            assert self.path is not None
            with self.path.open("rb") as f:
                while piece := f.read(_PIECE):
                    digest.update(piece)
        return digest.hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    standin: StandinBase

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.standin._dispatch(self, head=False)

    def do_HEAD(self) -> None:
        self.standin._dispatch(self, head=True)


class StandinBase:
    """A threaded HTTP/1.1 server on 127.0.0.1 with byte accounting and fault injection."""

    def __init__(self) -> None:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.lock = threading.Lock()
        self.bytes_served: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.kill_after: int | None = None
        self.down = False
        self.gate: threading.Event | None = None
        self.waiting = 0
        self.fail_next = 0  # answer this many requests with 503 first
        self._connections: set[socket.socket] = set()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def https(self, path: str) -> str:
        """The https:// source URI of ``path``; the fetcher reaches it over plain HTTP."""
        return f"https://{self.host}/{path.lstrip('/')}"

    @property
    def env(self) -> dict[str, str]:
        """The env that lets the fetcher reach this server's https:// URIs over plain HTTP."""
        return {"MODELDEPLOY_PLAIN_HTTP_HOSTS": self.host}

    def start(self) -> StandinBase:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def total_served(self) -> int:
        with self.lock:
            return sum(self.bytes_served.values())

    def reset_counters(self) -> None:
        with self.lock:
            self.bytes_served.clear()
            self.requests.clear()

    def restore(self) -> None:
        """End a simulated outage: serve again, with no pending fault."""
        with self.lock:
            self.down = False
            self.kill_after = None

    # Subclasses answer requests; this base handles the outage and the gate.
    def _dispatch(self, handler: _Handler, head: bool) -> None:
        with self.lock:
            self.requests.append(
                (handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()})
            )
            down = self.down
            gate = self.gate
        if gate is not None and "Range" in handler.headers:
            with self.lock:
                self.waiting += 1
            gate.wait(30)
        with self.lock:
            failing = self.fail_next > 0
            self.fail_next -= 1 if failing else 0
        if down or failing:
            self._send_error(handler, 503, "outage")
            return
        try:
            self.handle(handler, head)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True

    def handle(self, handler: _Handler, head: bool) -> None:
        raise NotImplementedError

    def _send_error(
        self, handler: _Handler, status: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"error": message}).encode()
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _send_json(
        self, handler: _Handler, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(200)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def _send_blob(
        self,
        handler: _Handler,
        key: str,
        blob: Blob,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Serve a blob honouring Range, If-Match and If-Range, counting bytes per ``key``."""
        size = blob.size
        etag = f'"{blob.etag}"' if blob.etag else None
        if_match = handler.headers.get("If-Match")
        if if_match and etag and if_match not in ("*", etag):
            self._send_error(handler, 412, "precondition failed")
            return
        start, end, status = 0, size - 1, 200
        requested = handler.headers.get("Range")
        if_range = handler.headers.get("If-Range")
        if requested and (not if_range or if_range == etag):
            match = _RANGE.match(requested.strip())
            if match is None or (not match.group(1) and not match.group(2)):
                self._send_error(handler, 416, "bad range", {"Content-Range": f"bytes */{size}"})
                return
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start, end = max(0, size - int(match.group(2))), size - 1
            if start >= size or start > end:
                self._send_error(
                    handler, 416, "unsatisfiable", {"Content-Range": f"bytes */{size}"}
                )
                return
            status = 206
        length = end - start + 1 if size else 0
        handler.send_response(status)
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(length))
        handler.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if etag:
            handler.send_header("ETag", etag)
        for name, value in {**blob.extra_headers, **(headers or {})}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if head or length == 0:
            return
        self._write_body(handler, key, blob, start, length)

    def _write_body(self, handler: _Handler, key: str, blob: Blob, start: int, length: int) -> None:
        sock = handler.connection
        handle = blob.path.open("rb") if blob.path is not None else None
        try:
            offset, remaining = start, length
            while remaining > 0:
                piece = min(_PIECE, remaining)
                with self.lock:
                    if self.down:
                        raise ConnectionResetError("outage")
                    # With a fault armed, bytes are reserved before sending so that parallel
                    # connections stop exactly at kill_after; otherwise counted once sent.
                    reserved = self.kill_after is not None
                    if reserved:
                        budget = self.kill_after - sum(self.bytes_served.values())
                        if budget < piece:
                            piece = max(0, budget)
                            self.down = True
                        self.bytes_served[key] += piece
                if piece:
                    if handle is not None:
                        sent = 0
                        while sent < piece:
                            sent += os.sendfile(
                                sock.fileno(), handle.fileno(), offset + sent, piece - sent
                            )
                    else:
                        assert blob.data is not None
                        sock.sendall(memoryview(blob.data)[offset : offset + piece])
                    if not reserved:
                        with self.lock:
                            self.bytes_served[key] += piece
                offset += piece
                remaining -= piece
                if self.down:
                    # The fault: cut the connection mid-body, as a dying link would.
                    sock.shutdown(socket.SHUT_RDWR)
                    raise ConnectionResetError("killed")
        finally:
            if handle is not None:
                handle.close()


class RangeServer(StandinBase):
    """Stand-in for a static HTTPS file host: files by path, Range, ETag, optional bearer token."""

    def __init__(self, token: str | None = None) -> None:
        super().__init__()
        self.files: dict[str, Blob] = {}
        self.token = token
        self.ranges_supported = True

    def add(self, path: str, data: bytes | Path, etag: str | None = None) -> str:
        """Publish ``data`` at ``path`` and return its URL."""
        blob = Blob(data=data) if isinstance(data, bytes) else Blob(path=data)
        blob.etag = etag or blob.sha256()[:32]
        self.files["/" + path.lstrip("/")] = blob
        return self.url + "/" + path.lstrip("/")

    def handle(self, handler: _Handler, head: bool) -> None:
        path = unquote(urlsplit(handler.path).path)
        if (
            self.token is not None
            and handler.headers.get("Authorization") != f"Bearer {self.token}"
        ):
            self._send_error(handler, 401, "unauthorized", {"WWW-Authenticate": "Bearer"})
            return
        blob = self.files.get(path)
        if blob is None:
            self._send_error(handler, 404, "not found")
            return
        if not self.ranges_supported and "Range" in handler.headers:
            del handler.headers["Range"]
        self._send_blob(handler, path, blob, head)


@dataclass
class HubRepo:
    """One repository of the Hub stand-in: commits (sha -> files), branches and a license."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    license: str | None = None
    lfs_threshold: int = 1024  # files at least this big are "LFS" (sha256 published)

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        """Record a commit of these files on ``branch`` and return its sha."""
        digest = hashlib.sha1(
            json.dumps(
                sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())
            ).encode()
        )
        sha = digest.hexdigest()
        self.commits[sha] = dict(files)
        self.branches[branch] = sha
        return sha


class HubStandin(StandinBase):
    """Stand-in for the Hugging Face Hub HTTP API (see the module docstring)."""

    def __init__(self, token: str | None = None, cdn: RangeServer | None = None) -> None:
        super().__init__()
        self.repos: dict[str, HubRepo] = {}
        self.token = token
        self.cdn = cdn

    def repo(self, repo_id: str) -> HubRepo:
        return self.repos.setdefault(repo_id, HubRepo())

    def _authorized(self, handler: _Handler) -> bool:
        if self.token is None:
            return True
        return handler.headers.get("Authorization") == f"Bearer {self.token}"

    def handle(self, handler: _Handler, head: bool) -> None:
        parts = urlsplit(handler.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        if not self._authorized(handler):
            if "Authorization" in handler.headers:
                message = "Invalid credentials in Authorization header"
                self._send_error(handler, 401, message, {"X-Error-Message": message})
            else:  # the Hub hides private repositories from anonymous callers
                headers = {
                    "X-Error-Code": "RepoNotFound",
                    "X-Error-Message": "Repository Not Found",
                }
                self._send_error(handler, 401, "Repository Not Found", headers)
            return
        if path.startswith("/api/models/"):
            self._api(handler, path.removeprefix("/api/models/"), query)
            return
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if match is None:
            self._send_error(handler, 404, "not found")
            return
        repo_id, revision, file = match.groups()
        found = self._lookup(handler, repo_id, revision)
        if found is None:
            return
        sha, files = found
        if file not in files:
            self._send_error(handler, 404, "Entry not found", {"X-Error-Code": "EntryNotFound"})
            return
        data = files[file]
        repo = self.repos[repo_id]
        sha256 = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": sha}
        if len(data) >= repo.lfs_threshold:
            headers |= {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
            if self.cdn is not None:
                key = f"/lfs/{sha256}"
                if key not in self.cdn.files:
                    self.cdn.add(key, data, etag=sha256)
                handler.send_response(302)
                handler.send_header("Location", self.cdn.url + key)
                handler.send_header("Content-Length", "0")
                for name, value in headers.items():
                    handler.send_header(name, value)
                handler.end_headers()
                return
        blob = Blob(data=data, etag=sha256 if len(data) >= repo.lfs_threshold else _git_oid(data))
        self._send_blob(handler, f"{repo_id}/{file}", blob, head, headers)

    def _lookup(
        self, handler: _Handler, repo_id: str, revision: str
    ) -> tuple[str, dict[str, bytes]] | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._send_error(handler, 404, "Repository not found", {"X-Error-Code": "RepoNotFound"})
            return None
        revision = unquote(revision)
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            self._send_error(
                handler, 404, f"Invalid rev id: {revision}", {"X-Error-Code": "RevisionNotFound"}
            )
            return None
        return sha, repo.commits[sha]

    def _api(self, handler: _Handler, rest: str, query: dict[str, list[str]]) -> None:
        match = re.match(r"^([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$", rest)
        if match is None:
            self._send_error(handler, 404, "not found")
            return
        repo_id, kind, revision, subpath = match.groups()
        found = self._lookup(handler, repo_id, revision or "main")
        if found is None:
            return
        sha, files = found
        repo = self.repos[repo_id]
        if kind == "tree":
            prefix = (subpath or "").strip("/")
            entries = [
                self._tree_entry(name, data, repo)
                for name, data in sorted(files.items())
                if not prefix or name.startswith(prefix + "/")
            ]
            self._send_json(handler, entries)
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, data in sorted(files.items()):
            sibling: dict[str, Any] = {"rfilename": name}
            if blobs:
                sibling |= {"size": len(data), "blobId": _git_oid(data)}
                if len(data) >= repo.lfs_threshold:
                    sibling["lfs"] = {
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
            siblings.append(sibling)
        tags = [f"license:{repo.license}"] if repo.license else []
        payload: dict[str, Any] = {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "sha": sha,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": tags,
            "siblings": siblings,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
        }
        if repo.license:
            payload["cardData"] = {"license": repo.license}
        self._send_json(handler, payload)

    @staticmethod
    def _tree_entry(name: str, data: bytes, repo: HubRepo) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": _git_oid(data),
            "size": len(data),
            "path": name,
        }
        if len(data) >= repo.lfs_threshold:
            entry["lfs"] = {
                "oid": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "pointerSize": 134,
            }
        return entry


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def wait_until(
    predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds, or fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def url_path(url: str) -> str:
    return quote(urlsplit(url).path)


class FaultProxy(StandinBase):
    """A reverse proxy in front of a real server (moto's S3) that adds byte counting and faults.

    GET and HEAD are forwarded with every header (the Host header too, so signatures still
    match); the response body goes through the same counting and kill-after-N-bytes logic
    as ``RangeServer``. Bytes are counted per path without the query string.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80

    def handle(self, handler: _Handler, head: bool) -> None:
        import http.client

        connection = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            connection.request(handler.command, handler.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            passed = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in ("connection", "transfer-encoding", "content-length")
            ]
        finally:
            connection.close()
        handler.send_response(response.status)
        for key, value in passed:
            handler.send_header(key, value)
        length = int(response.getheader("Content-Length") or len(body)) if head else len(body)
        handler.send_header("Content-Length", str(length))
        handler.end_headers()
        if not head and body:
            self._write_body(handler, urlsplit(handler.path).path, Blob(data=body), 0, len(body))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that need one given)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def go_server_binaries() -> Path:
    """Build (or reuse) fake-gcs-server and the distribution registry; return their directory."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("go") is None:
        pytest.skip("Go is not installed: cannot build fake-gcs-server and the OCI registry")
    script = Path(__file__).resolve().parents[3] / "e2e" / "cluster" / "build-fetch-servers.sh"
    done = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, timeout=1200, check=True
    )
    return Path(done.stdout.strip().splitlines()[-1])
