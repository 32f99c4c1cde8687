"""The provenance record of a fetch: where every byte came from and how it was checked.

Written as JSON next to the published files (see cache.py) and summarised, within the
4096 bytes Kubernetes allows, in the init container's termination message. A verified
signature adds its bundle, the signer's identity and the trust anchor (``signature.py``).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modeldeploy.resolution import Resolution

TERMINATION_MESSAGE_LIMIT = 4096


def fetcher_version() -> str:
    """The installed modeldeploy version."""
    try:
        return version("modeldeploy")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class VerifiedFile:
    """A file as published: its sha256 and what that digest was checked against."""

    name: str
    size: int
    sha256: str
    verified_against: str  # "pinned", "source" (published by the source) or "none"


def provenance_record(
    resolution: Resolution,
    files: Sequence[VerifiedFile],
    *,
    requested_revision: str | None,
    bytes_transferred: int,
    started_at: str,
    finished_at: str,
    signature: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance JSON document of one published selection (``signature`` if verified)."""
    record: dict[str, Any] = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ArtifactProvenance",
        "source": resolution.source,
        "requestedRevision": requested_revision,
        "resolvedRevision": resolution.revision,
        "format": resolution.format,
        "quantization": resolution.quantization,
        "license": resolution.license,
        "files": [
            {
                "name": f.name,
                "sizeBytes": f.size,
                "sha256": f.sha256,
                "verifiedAgainst": f.verified_against,
            }
            for f in files
        ],
        "totalBytes": sum(f.size for f in files),
        "bytesTransferred": bytes_transferred,
        "startedAt": started_at,
        "finishedAt": finished_at,
        "fetcher": {"name": "modeldeploy", "version": fetcher_version()},
        "host": socket.gethostname(),
    }
    if signature is not None:
        record["signature"] = dict(signature)
    return record


def termination_message(payload: Mapping[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Compact JSON of ``payload`` that fits ``limit`` bytes, dropping detail file by file."""
    data = dict(payload)
    text = json.dumps(data, separators=(",", ":"))
    files = list(data.get("files", []))
    while len(text.encode()) > limit and files:
        files.pop()
        data["files"] = files
        data["filesOmitted"] = int(data.get("filesOmitted", 0)) + 1
        text = json.dumps(data, separators=(",", ":"))
    if len(text.encode()) > limit:
        kept = ("revision", "error", "reason", "signature", "adapters")
        text = json.dumps({k: data[k] for k in kept if k in data})[:limit]
    return text
