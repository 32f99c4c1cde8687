"""The values of resolution: files, listings, and a source resolved to its exact files.

A ``Resolution`` is what the operator records in ``status.artifact``, what planning sizes
from and what the init container downloads: one immutable revision and the exact files of
it, with sizes and the sha256 digests the source publishes (Hub LFS, OCI layers, S3
checksums) or the user pinned. Pure values: the fetcher (``fetch/``) builds them, the core
(sizing, planning, rendering, status) reads them without importing any of the fetcher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modeldeploy.sizing import ModelArchitecture


@dataclass(frozen=True)
class ArtifactFile:
    """One file of a source: its path relative to the source root, size and known digest.

    ``ref`` is the source's own validator of these bytes (S3 version id or ETag, GCS
    generation, OCI layer digest, HTTP ETag), used to refuse a file that changed under us.
    """

    name: str
    size: int
    sha256: str | None = None
    ref: str | None = None


@dataclass(frozen=True)
class Listing:
    """Every file a source holds at one revision; ``revision`` None means derive it."""

    files: tuple[ArtifactFile, ...]
    revision: str | None = None
    license: str | None = None
    # How the source names a derived revision: "etags", "versions", "generations", "mtimes".
    derived_kind: str = "etags"

    def names(self) -> list[str]:
        """The file names, sorted."""
        return sorted(f.name for f in self.files)


@dataclass(frozen=True)
class AdapterFacts:
    """What a LoRA adapter's own metadata says, read before download (untrusted, bounded).

    ``format`` is ``gguf`` (a llama.cpp LoRA GGUF) or ``peft`` (``adapter_config.json`` with
    ``adapter_model.safetensors``); ``kind`` is what the file says it is (GGUF
    ``general.type``/``adapter.type``, PEFT ``peft_type``), so a model passed as an adapter
    is caught; ``architecture`` is GGUF ``general.architecture`` or the PEFT base class.
    """

    format: str
    kind: str | None = None
    architecture: str | None = None
    rank: int | None = None
    alpha: float | None = None


@dataclass(frozen=True)
class Resolution:
    """A source resolved to one immutable revision and the exact files to serve."""

    source: str
    revision: str
    format: str
    quantization: str | None
    files: tuple[ArtifactFile, ...]
    license: str | None = None
    available_quantizations: tuple[str, ...] = ()
    architecture: ModelArchitecture | None = field(default=None, compare=False)
    adapter: AdapterFacts | None = field(default=None, compare=False)

    @property
    def total_bytes(self) -> int:
        """The sum of the selected files' sizes."""
        return sum(f.size for f in self.files)

    @property
    def primary_file(self) -> str:
        """The file an engine is pointed at: the first GGUF (part), else the directory."""
        ggufs = sorted(f.name for f in self.files if f.name.lower().endswith(".gguf"))
        return ggufs[0] if ggufs else ""

    def as_status(self) -> dict[str, Any]:
        """The ``status.artifact`` mapping (camelCase, no credentials)."""
        out: dict[str, Any] = {
            "source": self.source,
            "resolvedRevision": self.revision,
            "format": self.format,
            "files": [
                {"name": f.name, "sizeBytes": f.size} | ({"sha256": f.sha256} if f.sha256 else {})
                for f in self.files
            ],
            "totalBytes": self.total_bytes,
        }
        if self.quantization:
            out["quantization"] = self.quantization
        if self.license:
            out["license"] = self.license
        return out


def derive_revision(kind: str, files: Sequence[ArtifactFile]) -> str:
    """An immutable revision for stores without commits: a digest of names, sizes and refs."""
    lines = sorted(f"{f.name}\0{f.size}\0{f.ref or ''}\0{f.sha256 or ''}" for f in files)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def pin_mismatches(files: Sequence[ArtifactFile], digests: Mapping[str, str]) -> list[str]:
    """Describe every pinned digest that the source's published digest contradicts."""
    problems = []
    by_name = {f.name: f for f in files}
    for name, pinned in sorted(digests.items()):
        published = by_name[name].sha256 if name in by_name else None
        if published is not None and published != pinned.lower():
            problems.append(
                f"{name}: pinned sha256 {pinned[:12]}… but the source now serves {published[:12]}…"
            )
    return problems
