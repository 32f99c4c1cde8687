"""oci:// — an ORAS-style model artifact in an OCI registry, through ``oras`` (oras-py).

``oci://REGISTRY/REPOSITORY:TAG`` or ``@sha256:DIGEST``. The manifest's layers are the
files: the ``org.opencontainers.image.title`` annotation names each one, the layer digest
is its sha256 and the manifest digest is the resolved revision (a tag resolves to one; a
digest reference must match it). The license comes from the manifest annotation
``org.opencontainers.image.licenses``. oras-py handles the registry's token or basic
authentication (``OCI_USERNAME``/``OCI_PASSWORD``; the ``/v2/`` challenge says which);
blobs are then fetched by the shared ranged downloader with the same authorization.
Registries listed in ``MODELDEPLOY_PLAIN_HTTP_HOSTS`` are reached over plain HTTP.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from modeldeploy.fetch.download import HttpLocation
from modeldeploy.fetch.errors import (
    CredentialError,
    FetchError,
    InvalidArtifactError,
    MissingFileError,
    SourceChangedError,
)
from modeldeploy.fetch.retry import RetryableError, retry_call
from modeldeploy.fetch.sources.base import Location, Source, plain_http_hosts
from modeldeploy.fetch.untrusted import MAX_MANIFEST_BYTES, load_json
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

TITLE = "org.opencontainers.image.title"
LICENSES = "org.opencontainers.image.licenses"
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


class OciSource(Source):
    """The layers of one OCI artifact manifest."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        self.plain_http = uri.authority in plain_http_hosts(env)
        self._registry: Any = None
        self._username = env.get("OCI_USERNAME") or None
        self._password = env.get("OCI_PASSWORD") or None

    @property
    def registry(self) -> Any:
        """The oras-py registry client, logged in from ``env`` when credentials are given."""
        if self._registry is None:
            import oras.provider

            backend = self._auth_backend()
            if backend == "basic" and not (self._username and self._password):
                raise CredentialError(
                    f"oci://{self.uri.authority} requires credentials: set OCI_USERNAME and "
                    "OCI_PASSWORD from a Secret"
                )
            registry = oras.provider.Registry(
                hostname=self.uri.authority, insecure=self.plain_http, auth_backend=backend
            )
            if self._username and self._password:
                registry.auth.set_basic_auth(self._username, self._password)
            self._registry = registry
        return self._registry

    def _auth_backend(self) -> str:
        """``basic`` for a registry whose ``/v2/`` challenge is Basic, else ``token``."""
        scheme = "http" if self.plain_http else "https"

        def probe() -> str:
            response = self.client.get(f"{scheme}://{self.uri.authority}/v2/")
            if response.status_code >= 500:
                raise RetryableError(f"HTTP {response.status_code}")
            return str(response.headers.get("www-authenticate", ""))

        challenge = retry_call(probe, what=f"oci://{self.uri.authority}", options=self.options)
        return "basic" if challenge.lower().startswith("basic") else "token"

    def _container(self, reference: str) -> Any:
        return self.registry.get_container(
            f"{self.uri.authority}/{self.uri.path}:{reference}"
            if not reference.startswith("sha256:")
            else f"{self.uri.authority}/{self.uri.path}@{reference}"
        )

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        reference = revision or self.uri.reference or "latest"
        where = f"oci://{self.uri.authority}/{self.uri.path}@{reference}"
        container = self._container(reference)
        scheme = "http" if self.plain_http else "https"
        url = f"{scheme}://{container.manifest_url()}"

        def get() -> bytes:
            try:
                response = self.registry.do_request(
                    url, "GET", headers={"Accept": ", ".join(MANIFEST_TYPES)}
                )
            except ValueError as error:  # oras: "Cannot respond to request for authentication."
                raise CredentialError(f"{where}: the registry refused authentication") from error
            status = response.status_code
            if status in (401, 403):
                raise CredentialError(
                    f"{where}: access denied (HTTP {status}); check OCI_USERNAME/OCI_PASSWORD"
                )
            if status == 404:
                raise MissingFileError(f"{where}: manifest not found")
            if status >= 500 or status == 429:
                raise RetryableError(f"HTTP {status}")
            if status != 200:
                raise FetchError(f"{where}: registry answered HTTP {status}")
            return bytes(response.content)

        raw = retry_call(get, what=where, options=self.options)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if reference.startswith("sha256:") and reference != digest:
            raise SourceChangedError(
                f"{where}: the registry served a manifest with digest {digest}"
            )
        manifest = load_json(raw, "manifest", what="the manifest", max_bytes=MAX_MANIFEST_BYTES)
        if not isinstance(manifest, dict):
            raise InvalidArtifactError("manifest", "not a JSON object", where=where)
        if "layers" not in manifest:
            raise FetchError(
                f"{where}: not an image/artifact manifest (an index?); pin a platform digest"
            )
        files = []
        for layer in _layers(manifest, where):
            name = (layer.get("annotations") or {}).get(TITLE)
            layer_digest = str(layer["digest"])
            if not name:
                continue
            sha = (
                layer_digest.removeprefix("sha256:") if layer_digest.startswith("sha256:") else None
            )
            files.append(
                ArtifactFile(name=name, size=int(layer["size"]), sha256=sha, ref=layer_digest)
            )
        annotations = manifest.get("annotations") or {}
        license_ = annotations.get(LICENSES) if isinstance(annotations, dict) else None
        if license_ is not None and not isinstance(license_, str):
            raise InvalidArtifactError("manifest", f"{LICENSES} is not a string", where=where)
        return Listing(tuple(files), revision=digest, license=license_)

    def location(self, revision: str, file: ArtifactFile) -> Location:
        container = self._container(revision)
        scheme = "http" if self.plain_http else "https"
        url = f"{scheme}://{container.get_blob_url(file.ref)}"
        headers: dict[str, str] = {}
        token = getattr(self.registry.auth, "token", None)
        if isinstance(token, str) and token:
            headers["Authorization"] = f"Bearer {token}"
        elif self._username and self._password:
            basic = base64.b64encode(f"{self._username}:{self._password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        return HttpLocation(url, headers)


def _layers(manifest: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The manifest's layers, each checked: an object with a string digest, a size and
    string annotations (a bad manifest is ``InvalidArtifactError``, not a crash)."""
    layers = manifest["layers"]
    if not isinstance(layers, list):
        raise InvalidArtifactError("manifest", "layers is not a list", where=where)
    for index, layer in enumerate(layers):
        problem = None
        if not isinstance(layer, dict):
            problem = "is not an object"
        elif not isinstance(layer.get("digest"), str):
            problem = "has no digest"
        elif isinstance(layer.get("size"), bool) or not isinstance(layer.get("size"), int):
            problem = "has no integer size"
        elif layer["size"] < 0:
            problem = "has a negative size"
        else:
            annotations = layer.get("annotations") or {}
            if not isinstance(annotations, dict) or not isinstance(annotations.get(TITLE, ""), str):
                problem = "has annotations that are not an object of strings"
        if problem is not None:
            raise InvalidArtifactError("manifest", f"layer {index} {problem}", where=where)
    return layers
