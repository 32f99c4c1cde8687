"""The on-disk model cache: layout, lookup of complete entries, and atomic publication.

Layout under the cache root (one volume, possibly shared by every replica)::

    <root>/<key>/source.json                          the source this key stands for
    <root>/<key>/<revision>/<files>                   published, verified files
    <root>/<key>/<revision>/.modeldeploy/provenance-<selection>.json
    <root>/<key>/<revision>/.modeldeploy/complete-<selection>   the marker, written last
    <root>/<key>/.partial/<revision>/<files>.part     downloads in progress (resumable)
    <root>/<key>/.partial/<revision>/<files>.part.journal   how much of each is written
    <root>/<key>/.locks/<revision>.lock               see lock.py

``key`` is ``sha256(canonical source)[:16]``. A revision directory may hold the files of
several selections (two quantizations from one repository); each selection has its own
marker. Files reach the revision directory only by ``rename`` from ``.partial`` after their
sha256 was checked, and a selection's marker is written after all of its files are there:
a reader that sees the marker sees whole, verified files. The names (``source_key``,
``model_path``, ...) are in ``layout.py``; this module reads and writes the directories.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldeploy.fetch.layout import (
    LOCK_DIR,
    META_DIR,
    PARTIAL_DIR,
    revision_dirname,
    source_key,
)


@dataclass(frozen=True)
class CacheEntry:
    """Paths of one (source, revision) in the cache."""

    root: Path
    source: str
    revision: str

    @property
    def key_dir(self) -> Path:
        return self.root / source_key(self.source)

    @property
    def path(self) -> Path:
        """The published revision directory."""
        return self.key_dir / revision_dirname(self.revision)

    @property
    def staging(self) -> Path:
        """Where downloads in progress live."""
        return self.key_dir / PARTIAL_DIR / revision_dirname(self.revision)

    @property
    def lock_path(self) -> Path:
        return self.key_dir / LOCK_DIR / f"{revision_dirname(self.revision)}.lock"

    def marker(self, selection: str) -> Path:
        return self.path / META_DIR / f"complete-{selection}"

    def provenance_path(self, selection: str) -> Path:
        return self.path / META_DIR / f"provenance-{selection}.json"

    def lookup(self, selection: str) -> dict[str, Any] | None:
        """The provenance of a complete selection whose files are all present, else None."""
        if not self.marker(selection).exists():
            return None
        try:
            record = json.loads(self.provenance_path(selection).read_text())
        except (OSError, ValueError):
            return None
        for entry in record.get("files", []):
            try:
                if (self.path / entry["name"]).stat().st_size != entry["sizeBytes"]:
                    return None
            except (OSError, KeyError, TypeError):
                return None
        return record if isinstance(record, dict) else None

    def known_digests(self) -> dict[str, tuple[int, str]]:
        """Published files of this revision that some complete selection verified."""
        known: dict[str, tuple[int, str]] = {}
        meta = self.path / META_DIR
        if not meta.is_dir():
            return known
        for marker in meta.glob("complete-*"):
            selection = marker.name.removeprefix("complete-")
            record = self.lookup(selection)
            for entry in (record or {}).get("files", []):
                if entry.get("sha256"):
                    known[entry["name"]] = (entry["sizeBytes"], entry["sha256"])
        return known

    def prepare(self) -> None:
        """Create the staging directory and record which source this key stands for."""
        self.staging.mkdir(parents=True, exist_ok=True)
        record = self.key_dir / "source.json"
        if not record.exists():
            _write_atomic(record, json.dumps({"source": self.source}).encode())

    def publish(self, files: Sequence[str], selection: str, provenance: Mapping[str, Any]) -> None:
        """Move verified files from staging into place, then write provenance and the marker."""
        (self.path / META_DIR).mkdir(parents=True, exist_ok=True)
        for name in files:
            staged = self.staging / name
            if not staged.exists():
                continue  # already published by an earlier selection of this revision
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            _fsync_file(staged)
            os.replace(staged, target)
        _fsync_dir(self.path)
        _write_atomic(
            self.provenance_path(selection), json.dumps(provenance, indent=2).encode() + b"\n"
        )
        _write_atomic(self.marker(selection), b"complete\n")
        _fsync_dir(self.path / META_DIR)

    def discard_staging(self) -> None:
        """Remove the staging directory once nothing in it is needed."""
        with contextlib.suppress(OSError):
            for child in sorted(self.staging.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            self.staging.rmdir()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
