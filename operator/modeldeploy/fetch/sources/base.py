"""What every source provides: a listing at a revision, and where to read each file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def plain_http_hosts(env: Mapping[str, str]) -> set[str]:
    """Hosts (``host:port``) reached over plain HTTP: in-cluster mirrors without TLS, tests."""
    return {h.strip() for h in env.get(PLAIN_HTTP_HOSTS_VAR, "").split(",") if h.strip()}


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
