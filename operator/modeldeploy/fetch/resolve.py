"""Resolution: a source, revision, format and quantization -> one revision and exact files.

The operator calls ``resolve_model`` before it plans (to size from the real architecture
and record ``status.artifact``); the fetcher calls ``resolve`` and then downloads exactly
the revision it returned. Pinned digests are checked against what the source publishes
here, so a source that now serves other bytes is refused before anything is transferred.
What a source says before download (its listing, a GGUF or safetensors header,
``config.json``) is untrusted and read within bounds (``fetch.untrusted``): a malformed one
raises ``InvalidArtifactError``, naming the source, revision and file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from modeldeploy.fetch.adapter_files import read_adapter_facts, select_adapter_files
from modeldeploy.fetch.download import DownloadOptions, HttpLocation
from modeldeploy.fetch.envvars import AMBIENT_CREDENTIALS_VAR, settings_from_env
from modeldeploy.fetch.errors import (
    DigestMismatchError,
    FetchError,
    InvalidArtifactError,
    MissingFileError,
    SourceChangedError,
)
from modeldeploy.fetch.gguf_header import read_architecture
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.retry import (
    RetryableError,
    is_transient_status,
    retry_call,
    status_error,
)
from modeldeploy.fetch.select import select_files
from modeldeploy.fetch.sources import open_source
from modeldeploy.fetch.sources.base import LocalLocation, Source
from modeldeploy.fetch.untrusted import check_listing
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Resolution, derive_revision, pin_mismatches

if TYPE_CHECKING:
    from modeldeploy.api import Adapter, ModelSource

__all__ = ["FetchRequest", "read_range", "resolve", "resolve_adapter", "resolve_model"]

log = logging.getLogger(__name__)


def read_range(
    source: Source, revision: str, file: ArtifactFile, offset: int, length: int
) -> bytes:
    """Read ``length`` bytes at ``offset`` of a file of ``source`` (one Range request).

    At most ``length`` bytes are taken from the response, whatever the server sends (a
    server that ignores Range answers 200 with the whole file: the body is read only up to
    the bytes wanted, then the connection is dropped).
    """
    location = source.location(revision, file)
    if isinstance(location, LocalLocation):
        with location.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    assert isinstance(location, HttpLocation)

    def get() -> bytes:
        headers = {**location.headers, "Range": f"bytes={offset}-{offset + length - 1}"}
        with source.client.stream("GET", location.url, headers=headers) as response:
            if is_transient_status(response.status_code):
                raise RetryableError(f"HTTP {response.status_code}")
            if response.status_code not in (200, 206):
                raise status_error(response.status_code, file.name)
            skip = offset if response.status_code == 200 else 0
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) >= skip + length:
                    break
            return bytes(body[skip : skip + length])

    return retry_call(get, what=file.name, options=source.options)


def resolve(
    request: FetchRequest,
    *,
    env: Mapping[str, str] | None = None,
    source: Source | None = None,
    read_metadata: bool = True,
    options: DownloadOptions | None = None,
) -> Resolution:
    """Resolve a request to one immutable revision and its exact files (see module docstring)."""
    env = os.environ if env is None else env
    uri = request.uri
    own = source is None
    source = source or open_source(uri, env)
    if options is not None:
        source.options = options
    try:
        return _resolve(request, uri, source, read_metadata)
    finally:
        if own:
            source.close()


def _resolve(
    request: FetchRequest, uri: SourceURI, source: Source, read_metadata: bool
) -> Resolution:
    wanted = request.requested_revision
    listing = source.list(wanted, hints=request.files)
    check_listing(listing.files, uri.canonical)
    if request.is_adapter:
        selection = select_adapter_files(listing.names(), uri.canonical, request.files)
    else:
        selection = select_files(
            listing.names(),
            source=uri.canonical,
            format=request.format,
            quantization=request.quantization,
            globs=request.files,
        )
    by_name = {f.name: f for f in listing.files}
    files = source.enrich([by_name[name] for name in selection.files])
    revision = listing.revision or derive_revision(listing.derived_kind, files)
    if listing.revision is None and wanted is not None and wanted != revision:
        raise SourceChangedError(
            f"{uri.canonical}: the source no longer serves revision {wanted}; it is now {revision}"
        )
    chosen = {f.name for f in files}
    stray = sorted(set(request.digests) - chosen)
    if stray:
        raise MissingFileError(
            f"{uri.canonical}: digests pin {', '.join(stray)}, which "
            f"{'is' if len(stray) == 1 else 'are'} not among the selected files "
            f"({', '.join(sorted(chosen))})"
        )
    problems = pin_mismatches(files, request.digests)
    if problems:
        raise DigestMismatchError(f"{uri.canonical}@{revision}: {'; '.join(problems)}")
    files = tuple(
        replace(f, sha256=f.sha256 or request.digests.get(f.name, "").lower() or None)
        for f in files
    )
    resolution = Resolution(
        source=uri.canonical,
        revision=revision,
        format=selection.format,
        quantization=selection.quantization,
        files=files,
        license=listing.license,
        available_quantizations=selection.available_quantizations,
    )
    if not read_metadata:
        return resolution

    def read(f: ArtifactFile, offset: int, length: int) -> bytes:
        return read_range(source, revision, f, offset, length)

    try:
        if request.is_adapter:
            return replace(resolution, adapter=read_adapter_facts(read, selection.format, files))
        architecture = read_architecture(read, selection.format, files)
    except InvalidArtifactError as error:
        raise error.within(f"{uri.canonical}@{revision}") from None
    except (FetchError, ValueError, KeyError) as error:
        if request.is_adapter:
            raise
        log.warning("%s: could not read the model's architecture: %s", uri.canonical, error)
        architecture = None
    resolution = replace(resolution, architecture=architecture)
    return resolution


def resolve_model(
    model: ModelSource,
    *,
    credentials: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
    read_metadata: bool = True,
    options: DownloadOptions | None = None,
) -> Resolution:
    """Resolve ``spec.model`` for the operator, before planning.

    ``credentials`` is the data of ``spec.model.credentialsSecret`` (keys as env names:
    HF_TOKEN, AWS_ACCESS_KEY_ID, ...). ``settings`` defaults to the operator's own
    endpoint settings (``SETTINGS_VARS``). The operator's own cloud identity is never used
    for a user's source: without credentials, access is anonymous.
    """
    env = _operator_env(credentials, settings)
    return resolve(
        FetchRequest.from_model(model), env=env, read_metadata=read_metadata, options=options
    )


def _operator_env(
    credentials: Mapping[str, str] | None, settings: Mapping[str, str] | None
) -> dict[str, str]:
    """The environment an operator-side resolution runs with: no ambient identity."""
    if settings is None:
        settings = settings_from_env(os.environ)
    return {**settings, **(credentials or {}), AMBIENT_CREDENTIALS_VAR: "false"}


def resolve_adapter(
    adapter: Adapter,
    *,
    credentials: Mapping[str, str] | None = None,
    settings: Mapping[str, str] | None = None,
    options: DownloadOptions | None = None,
) -> Resolution:
    """Resolve one of ``spec.adapters`` like ``resolve_model``; ``adapter`` holds its facts."""
    env = _operator_env(credentials, settings)
    return resolve(FetchRequest.from_adapter(adapter), env=env, options=options)
