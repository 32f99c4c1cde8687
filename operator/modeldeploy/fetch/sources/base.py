"""What every source provides: a listing at a revision, and where to read each file."""

from __future__ import annotations

import functools
import posixpath
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

from modeldeploy.fetch.download import DownloadOptions, HttpLocation
from modeldeploy.fetch.envvars import PLAIN_HTTP_HOSTS_VAR
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing


@dataclass(frozen=True)
class LocalLocation:
    """A file readable on this machine (a mounted volume)."""

    path: Path


Location = HttpLocation | LocalLocation
Listed = TypeVar("Listed")


def plain_http_hosts(env: Mapping[str, str]) -> set[str]:
    """Hosts (``host:port``) reached over plain HTTP: in-cluster mirrors without TLS, tests."""
    return {h.strip() for h in env.get(PLAIN_HTTP_HOSTS_VAR, "").split(",") if h.strip()}


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CA bundle, no environment), built once.

    Building one loads the whole CA bundle: about 40 ms of CPU, which the operator paid per
    resolution when each source's client built its own.
    """
    return httpx.create_ssl_context(trust_env=False)


class Source:
    """A model source of one scheme. Subclasses implement ``list`` and ``location``."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        self.uri = uri
        self.env = env
        self._client: httpx.Client | None = None
        self.options = DownloadOptions()

    @property
    def client(self) -> httpx.Client:
        """The HTTP client shared by listing, header reads and downloads."""
        if self._client is None:
            connections = max(self.options.connections, 4)
            self._client = httpx.Client(
                verify=tls_context(),
                follow_redirects=True,
                timeout=httpx.Timeout(
                    self.options.read_timeout, connect=self.options.connect_timeout
                ),
                limits=httpx.Limits(
                    max_connections=connections * 2, max_keepalive_connections=connections * 2
                ),
                trust_env=False,
            )
        return self._client

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        """Every file of the source at ``revision`` (None: the default branch or latest)."""
        raise NotImplementedError

    def enrich(self, files: Sequence[ArtifactFile]) -> tuple[ArtifactFile, ...]:
        """Add per-file detail (digests, versions) that only costs a request per file."""
        return tuple(files)

    def location(self, revision: str, file: ArtifactFile) -> Location:
        """Where to read ``file`` of ``revision``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""
        if self._client is not None:
            self._client.close()
            self._client = None


class BucketSource(Source):
    """Objects under a prefix in one bucket, ``SCHEME://BUCKET/PREFIX`` (gs://, s3://): the
    objects below ``PREFIX/``, or the one object ``PREFIX`` names."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        self.bucket = uri.authority
        self.prefix = uri.path.strip("/")

    @property
    def where(self) -> str:
        """The bucket and prefix, for messages."""
        return f"{self.uri.scheme}://{self.bucket}/{self.prefix}"

    def by_name(
        self, objects: Sequence[Listed], key: Callable[[Listed], str]
    ) -> list[tuple[str, Listed]]:
        """(file name, object) of the listed objects (``key``: an object's key): the one the
        prefix names, else each object below the prefix (folder markers left out)."""
        exact = [obj for obj in objects if self.prefix and key(obj) == self.prefix]
        if exact:
            return [(posixpath.basename(key(exact[0])), exact[0])]
        directory = f"{self.prefix}/" if self.prefix else ""
        return [
            (key(obj)[len(directory) :], obj)
            for obj in objects
            if key(obj).startswith(directory) and not key(obj).endswith("/")
        ]

    def object_key(self, name: str) -> str:
        """The key of the object holding file ``name``."""
        if self.prefix and (self.prefix == name or self.prefix.endswith("/" + name)):
            return self.prefix
        return f"{self.prefix}/{name}" if self.prefix else name
