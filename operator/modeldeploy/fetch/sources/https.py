"""https:// — files on a plain web server (a mirror, an artifact store, a CDN).

``https://HOST/PATH/FILE`` is one file. ``https://HOST/DIR/`` (ending in ``/``) is a
directory: HTTP has no listing, so its files are the ``files`` the spec names literally.
Each file is inspected with ``HEAD`` (falling back to a one-byte Range GET) for its size,
its ``ETag`` (the revision is derived from the ETags) and a sha256 when the server states
one in ``Repr-Digest``/``Digest`` (RFC 9530/3230). Downloads carry ``If-Match`` with a
strong ETag, so a file replaced on the server is refused instead of stitched together.
``MODELDEPLOY_BEARER_TOKEN`` is sent as a bearer token when set. Hosts listed in
``MODELDEPLOY_PLAIN_HTTP_HOSTS`` are reached over plain HTTP (in-cluster mirrors, tests).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Mapping, Sequence
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from modeldeploy.fetch.credentials import bearer_token
from modeldeploy.fetch.download import HttpLocation
from modeldeploy.fetch.errors import FetchError, MissingFileError
from modeldeploy.fetch.retry import (
    RetryableError,
    is_transient_status,
    retry_call,
    status_error,
)
from modeldeploy.fetch.sources.base import Location, Source, plain_http_hosts
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

_DIGEST = re.compile(r"sha-256=:?([A-Za-z0-9+/=]+):?", re.IGNORECASE)


class HttpsSource(Source):
    """One file URL, or a directory URL plus literal file names."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        token = bearer_token(env)
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._base = uri.url
        if uri.authority in plain_http_hosts(env):
            self._base = "http://" + uri.url.removeprefix("https://")

    def _urls(self, hints: Sequence[str]) -> dict[str, str]:
        if not self._base.endswith("/"):
            name = unquote(posixpath.basename(urlsplit(self._base).path)) or "index"
            return {name: self._base}
        if not hints:
            raise MissingFileError(
                f"{self.uri.url} is a directory URL: name its files in files: (HTTP has no listing)"
            )
        if any(any(c in h for c in "*?[") for h in hints):
            raise MissingFileError(
                f"{self.uri.url}: files: must be literal names for an https:// directory"
            )
        return {h: urljoin(self._base, h) for h in hints}

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        files = tuple(self._inspect(name, url) for name, url in self._urls(hints).items())
        return Listing(files, revision=None, derived_kind="etags")

    def _inspect(self, name: str, url: str) -> ArtifactFile:
        def head() -> httpx.Response:
            response = self.client.head(url, headers=self._auth)
            if response.status_code in (405, 501):
                response = self.client.get(url, headers={**self._auth, "Range": "bytes=0-0"})
                response.close()
            if is_transient_status(response.status_code):
                raise RetryableError(f"HTTP {response.status_code}")
            return response

        response = retry_call(head, what=name, options=self.options)
        if response.status_code not in (200, 206):
            raise status_error(response.status_code, name)
        if response.status_code == 206:
            total = response.headers.get("content-range", "").rpartition("/")[2]
            size_text = total
        else:
            size_text = response.headers.get("content-length", "")
        if not size_text.isdigit():
            raise FetchError(f"{name}: the server does not state the file's size")
        etag = response.headers.get("etag")
        return ArtifactFile(
            name=name,
            size=int(size_text),
            sha256=_stated_sha256(response.headers),
            ref=etag if etag and not etag.startswith("W/") else None,
        )

    def location(self, revision: str, file: ArtifactFile) -> Location:
        url = self._urls([file.name])[file.name] if self._base.endswith("/") else self._base
        headers = dict(self._auth)
        if file.ref:
            headers["If-Match"] = file.ref
        return HttpLocation(url, headers)


def _stated_sha256(headers: httpx.Headers) -> str | None:
    for header in ("repr-digest", "digest"):
        match = _DIGEST.search(headers.get(header, ""))
        if match:
            try:
                raw = base64.b64decode(match.group(1), validate=True)
            except (binascii.Error, ValueError):
                continue
            if len(raw) == 32:
                return raw.hex()
    return None
