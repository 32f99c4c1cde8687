"""The fetch: resolve, take the cache lock, download and verify, publish, record provenance.

``fetch`` is what ``modeldeploy fetch`` (the init container, local mode) runs. A selection
that is already complete in the cache returns at once; with a pinned revision that check
needs no network at all. Otherwise one fetcher per (source, revision) downloads while the
others wait on the lock and then find the marker. With a signature (``request.signature``
and a ``trust`` anchor) the bundle is fetched and checked first, the files are compared
with what it signs before they are published (``signature.py``), and the selection has its
own marker, so a copy verified against another key (or none) never answers for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modeldeploy.clock import utc_now
from modeldeploy.fetch.cache import CacheEntry
from modeldeploy.fetch.download import DownloadOptions, HttpLocation, download
from modeldeploy.fetch.errors import DigestMismatchError
from modeldeploy.fetch.journal import part_paths
from modeldeploy.fetch.lock import CacheLock
from modeldeploy.fetch.progress import Progress
from modeldeploy.fetch.provenance import VerifiedFile, provenance_record
from modeldeploy.fetch.request import FetchRequest

if TYPE_CHECKING:
    from modeldeploy.fetch.signature import TrustAnchor
    from modeldeploy.fetch.sources.base import Source
    from modeldeploy.resolution import ArtifactFile, Resolution

log = logging.getLogger(__name__)

_COPY_PIECE = 8 * 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """Transfer tuning, progress interval and the cache lock's timing."""

    download: DownloadOptions = field(default_factory=DownloadOptions)
    progress_interval: float = 10.0
    lock_heartbeat: float = 5.0
    lock_stale_after: float = 60.0
    lock_poll: float = 1.0
    wait_timeout: float | None = None


@dataclass(frozen=True)
class FetchResult:
    """A published selection: where it is, what it holds, what this run transferred."""

    source: str
    revision: str
    path: Path
    files: tuple[VerifiedFile, ...]
    bytes_transferred: int
    cached: bool
    provenance_path: Path
    license: str | None = None
    signature: Mapping[str, Any] | None = None  # the provenance's ``signature`` when verified

    def summary(self) -> dict[str, Any]:
        """The short JSON result for the termination message and the CLI."""
        out: dict[str, Any] = {
            "revision": self.revision,
            "path": str(self.path),
            "cached": self.cached,
            "bytesTransferred": self.bytes_transferred,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        if self.signature:
            keys = ("bundle", "kind", "identity", "issuer")
            out["signature"] = {k: self.signature[k] for k in keys if self.signature.get(k)}
        return out


@dataclass(frozen=True)
class _FetchJob:
    """What one ``fetch`` call asks for, fixed when it starts."""

    request: FetchRequest
    selection: str  # the cache marker's selection (a signed one names the trust anchor too)
    trust: TrustAnchor | None
    env: Mapping[str, str]
    options: FetchOptions
    started: str  # RFC 3339, for the provenance record


def _cached_result(job: _FetchJob, entry: CacheEntry, record: Mapping[str, Any]) -> FetchResult:
    files = tuple(
        VerifiedFile(e["name"], int(e["sizeBytes"]), e["sha256"], e.get("verifiedAgainst", "none"))
        for e in record.get("files", [])
    )
    by_name = {f.name: f for f in files}
    for name, pinned in sorted(job.request.digests.items()):
        cached = by_name.get(name)
        if cached is None or cached.sha256 != pinned.lower():
            got = cached.sha256[:12] + "…" if cached else "no such file"
            raise DigestMismatchError(
                f"{name}: pinned sha256 {pinned[:12]}… but the cached revision "
                f"{entry.revision} holds {got}"
            )
    return FetchResult(
        source=entry.source,
        revision=entry.revision,
        path=entry.path,
        files=files,
        bytes_transferred=0,
        cached=True,
        provenance_path=entry.provenance_path(job.selection),
        license=record.get("license"),
        signature=record.get("signature"),
    )


def fetch(
    request: FetchRequest,
    cache_root: Path,
    *,
    env: Mapping[str, str] | None = None,
    options: FetchOptions | None = None,
    trust: TrustAnchor | None = None,
) -> FetchResult:
    """Make the requested selection complete in the cache and return where it is.

    ``trust`` is the anchor ``request.signature`` must verify against (both or neither).
    """
    options = options or FetchOptions()
    started = utc_now()
    uri = request.uri
    selection = request.selection
    if request.signature or trust is not None:
        from modeldeploy.fetch.signature import check_request, signed_selection

        check_request(request.signature, trust)
        assert trust is not None
        selection = signed_selection(selection, trust)
    job = _FetchJob(request, selection, trust, os.environ if env is None else env, options, started)
    if request.requested_revision:
        entry = CacheEntry(cache_root, uri.canonical, request.requested_revision)
        if (record := entry.lookup(selection)) is not None:
            log.info("%s@%s: already in the cache", uri.canonical, entry.revision)
            return _cached_result(job, entry, record)
    # Imported here: a warm cache answers above without loading any client library.
    from modeldeploy.fetch.resolve import resolve
    from modeldeploy.fetch.sources import open_source

    source = open_source(uri, job.env)
    source.options = options.download
    try:
        resolution = resolve(request, env=job.env, source=source, read_metadata=False)
        entry = CacheEntry(cache_root, resolution.source, resolution.revision)
        if (record := entry.lookup(selection)) is not None:
            log.info("%s@%s: already in the cache", resolution.source, resolution.revision)
            return _cached_result(job, entry, record)
        lock = CacheLock(
            entry.lock_path,
            heartbeat_interval=options.lock_heartbeat,
            stale_after=options.lock_stale_after,
            poll_interval=options.lock_poll,
        )
        deadline = None
        if options.wait_timeout is not None:
            import time

            deadline = time.monotonic() + options.wait_timeout
        if not lock.acquire_or_wait(lambda: entry.lookup(selection) is not None, deadline=deadline):
            log.info("%s@%s: another fetcher published it", resolution.source, resolution.revision)
            record = entry.lookup(selection)
            assert record is not None
            return _cached_result(job, entry, record)
        try:
            if (record := entry.lookup(selection)) is not None:
                return _cached_result(job, entry, record)
            return _download_and_publish(job, resolution, source, entry, lock)
        finally:
            lock.release()
    finally:
        source.close()


def _download_and_publish(
    job: _FetchJob, resolution: Resolution, source: Source, entry: CacheEntry, lock: CacheLock
) -> FetchResult:
    request, options, trust = job.request, job.options, job.trust
    entry.prepare()
    signed = None
    if trust is not None and request.signature:
        # The bundle first: a missing or forged signature fails before any model byte moves.
        from modeldeploy.fetch.signature import fetch_bundle, read_signed_manifest

        bundle = fetch_bundle(
            request.signature, source, resolution.revision, entry.staging, job.env
        )
        signed = read_signed_manifest(bundle, request.signature, trust)
        signed.require_covered(resolution.files)
    known = entry.known_digests()
    verified: list[VerifiedFile] = []
    fetched: set[str] = set()  # names brought into staging by this run
    transferred = 0
    label = f"fetch {resolution.source}@{resolution.revision}"
    with Progress(resolution.total_bytes, options.progress_interval, label) as progress:
        for file in resolution.files:
            lock.check()
            pinned = request.digests.get(file.name)
            against = "pinned" if pinned else ("source" if file.sha256 else "none")
            expected = (pinned or file.sha256 or "").lower() or None
            published = entry.path / file.name
            if (
                file.name in known
                and known[file.name][0] == file.size
                and (expected is None or known[file.name][1] == expected)
                and published.exists()
            ):
                verified.append(VerifiedFile(file.name, file.size, known[file.name][1], against))
                progress.add(file.size, 0)
                continue
            digest, moved = _fetch_file(
                source, resolution.revision, file, entry=entry, options=options, progress=progress
            )
            fetched.add(file.name)
            transferred += moved
            if expected is not None and digest != expected:
                staged = entry.staging / file.name
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
                raise DigestMismatchError(
                    f"{file.name}: sha256 mismatch: expected {expected} ({against}), "
                    f"got {digest}; nothing was published"
                )
            verified.append(VerifiedFile(file.name, file.size, digest, against))
        log.info("%s", progress.line())
    signature = None
    if signed is not None:
        paths = {
            f.name: (entry.staging if f.name in fetched else entry.path) / f.name for f in verified
        }
        signature = signed.verify(verified, paths, fetched)
    lock.check()
    record = provenance_record(
        resolution,
        verified,
        requested_revision=request.requested_revision,
        bytes_transferred=transferred,
        started_at=job.started,
        finished_at=utc_now(),
        signature=signature,
    )
    entry.publish([f.name for f in verified], job.selection, record)
    entry.discard_staging()
    log.info(
        "%s@%s: published %d file(s) in %s",
        resolution.source,
        resolution.revision,
        len(verified),
        entry.path,
    )
    return FetchResult(
        source=resolution.source,
        revision=resolution.revision,
        path=entry.path,
        files=tuple(verified),
        bytes_transferred=transferred,
        cached=False,
        provenance_path=entry.provenance_path(job.selection),
        license=resolution.license,
        signature=signature,
    )


def _fetch_file(
    source: Source,
    revision: str,
    file: ArtifactFile,
    *,
    entry: CacheEntry,
    options: FetchOptions,
    progress: Progress,
) -> tuple[str, int]:
    """Bring one file into staging; return its sha256 and the bytes transferred."""
    dest = entry.staging / file.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and dest.stat().st_size == file.size and not part_paths(dest)[0].exists():
        # Finished by a run that died before publishing: digest it locally, no transfer.
        log.info("%s: found complete in staging, re-checking its digest", file.name)
        digest = _hash_file(dest)
        progress.add(file.size, 0)
        return digest, 0
    from modeldeploy.fetch.sources.base import LocalLocation

    location = source.location(revision, file)
    if isinstance(location, LocalLocation):
        return _copy_local(location.path, dest, progress), 0
    assert isinstance(location, HttpLocation)
    validator = f"{revision}|{file.ref or ''}|{file.sha256 or ''}"
    result = download(
        location,
        dest,
        file.size,
        name=file.name,
        validator=validator,
        options=options.download,
        progress=progress,
    )
    return result.sha256, result.bytes_transferred


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(_COPY_PIECE):
            digest.update(piece)
    return digest.hexdigest()


def _copy_local(source: Path, dest: Path, progress: Progress) -> str:
    """Copy a local file into staging, digesting it in the same pass."""
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".part")
    with source.open("rb") as reader, tmp.open("wb") as writer:
        while piece := reader.read(_COPY_PIECE):
            digest.update(piece)
            writer.write(piece)
            progress.add(len(piece), 0)
    shutil.copystat(source, tmp)
    os.replace(tmp, dest)
    return digest.hexdigest()
