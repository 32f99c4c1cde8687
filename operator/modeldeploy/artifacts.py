"""What the operator knows of a ModelDeployment's artifact, and what that means for status.

The operator resolves ``spec.model`` before it plans (``resolver.py``): sizing then reads
the real architecture, the fetch init container downloads exactly the resolved revision,
and ``status.artifact`` records it. This module owns the pure side of that: the outcome
of one resolution (``ArtifactState``), its round trip through ``status.artifact`` (so a
restarted operator plans the same objects without asking the source again), what the
fetch init containers reported in their termination messages, and the
``ArtifactVerified`` and ``SignatureVerified`` conditions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_camel

from modeldeploy.adapters import (
    INCOMPATIBLE_ADAPTER,
    ResolvedAdapter,
    adapters_from_status,
    adapters_hash,
    adapters_status,
)
from modeldeploy.api import Adapter, ModelSource
from modeldeploy.fetch.errors import (
    CredentialError,
    DigestMismatchError,
    InvalidArtifactError,
    MissingFileError,
    SelectionError,
    SignatureInvalidError,
    SourceChangedError,
)
from modeldeploy.resolution import ArtifactFile, Resolution
from modeldeploy.sizing import GIB, ModelArchitecture

CONDITION = "ArtifactVerified"
SIGNATURE_CONDITION = "SignatureVerified"
# The name of the fetch init container (render/fetch_init.py), whose termination message
# reports what it fetched and verified.
INIT_CONTAINER = "fetch"

# Failures of resolution that waiting does not cure: the spec or the source must change.
REFUSING_REASONS = frozenset(
    error.reason
    for error in (
        DigestMismatchError,
        SourceChangedError,
        SelectionError,
        MissingFileError,
        CredentialError,
        InvalidArtifactError,  # a malformed header, config.json or listing
        SignatureInvalidError,  # reported by the pods' fetchers; the operator never verifies
    )
) | {INCOMPATIBLE_ADAPTER}


@dataclass(frozen=True)
class ArtifactState:
    """The outcome of resolving ``spec.model``: a resolution, or why there is none.

    ``reason`` is ``Resolved``, one of ``REFUSING_REASONS`` (the ModelDeployment is refused),
    ``SourceUnreachable`` (retried; planning falls back to the spec's hints) or
    ``ResolvedByFetcher`` (a source only the pod can read, such as ``pvc://``).
    """

    resolution: Resolution | None
    reason: str
    message: str
    model_hash: str
    source: str  # canonical source URI
    adapters: tuple[ResolvedAdapter, ...] = ()  # spec.adapters resolved, in spec order

    @property
    def refused(self) -> bool:
        """Whether this outcome refuses the ModelDeployment."""
        return self.reason in REFUSING_REASONS


def model_hash(model: ModelSource) -> str:
    """A short digest of ``spec.model``: a change of it means resolving again.

    ``signature`` is left out: it changes what the pods verify, not what resolves.
    """
    fields = model.model_dump(mode="json", by_alias=True, exclude={"signature"})
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def artifact_hash(model: ModelSource, adapters: Sequence[Adapter] = ()) -> str:
    """``model_hash``, extended by ``spec.adapters`` when there are any."""
    digest = model_hash(model)
    if not adapters:
        return digest
    return hashlib.sha256(f"{digest}/{adapters_hash(adapters)}".encode()).hexdigest()[:16]


_ARCHITECTURE_FIELDS = {to_camel(f.name): f.name for f in dataclasses.fields(ModelArchitecture)}


def architecture_status(architecture: ModelArchitecture) -> dict[str, Any]:
    """``status.artifact.architecture``: the facts sizing read, camelCase, None left out."""
    values = dataclasses.asdict(architecture)
    return {camel: values[name] for camel, name in _ARCHITECTURE_FIELDS.items() if values[name]}


def artifact_status(state: ArtifactState) -> dict[str, Any] | None:
    """The ``status.artifact`` mapping of a resolved state, else None."""
    if state.resolution is None:
        return None
    out = state.resolution.as_status()
    if state.resolution.architecture is not None:
        out["architecture"] = architecture_status(state.resolution.architecture)
    out["modelHash"] = state.model_hash
    if state.adapters:
        out["adapters"] = adapters_status(state.adapters)
    return out


def state_from_status(
    status: Mapping[str, Any], model: ModelSource, adapters: Sequence[Adapter] = ()
) -> ArtifactState | None:
    """The resolution recorded in ``status.artifact`` if it was made for this ``spec.model``
    and ``spec.adapters``."""
    recorded = status.get("artifact") or {}
    digest = artifact_hash(model, adapters)
    if recorded.get("modelHash") != digest or not recorded.get("resolvedRevision"):
        return None
    restored = adapters_from_status(recorded.get("adapters") or [], adapters)
    if restored is None:
        return None
    architecture = None
    if recorded.get("architecture"):
        facts = recorded["architecture"]
        architecture = ModelArchitecture(
            **{name: facts[camel] for camel, name in _ARCHITECTURE_FIELDS.items() if camel in facts}
        )
    files = tuple(
        ArtifactFile(f["name"], int(f.get("sizeBytes") or 0), f.get("sha256"))
        for f in recorded.get("files") or []
    )
    resolution = Resolution(
        source=recorded["source"],
        revision=recorded["resolvedRevision"],
        format=recorded.get("format") or "gguf",
        quantization=recorded.get("quantization"),
        files=files,
        license=recorded.get("license"),
        architecture=architecture,
    )
    return ArtifactState(
        resolution, "Resolved", describe(resolution), digest, resolution.source, restored
    )


def describe(resolution: Resolution) -> str:
    """One line: the revision, the file count and the size."""
    count = len(resolution.files)
    size = resolution.total_bytes / GIB
    noun = "file" if count == 1 else "files"
    return f"{resolution.source} resolved to {resolution.revision}: {count} {noun}, {size:.2f} GiB"


@dataclass(frozen=True)
class FetchReport:
    """What one pod's fetch init container said when it last ended."""

    pod: str
    exit_code: int
    result: Mapping[str, Any]  # the fetcher's JSON termination message, {} when absent


def _fetch_statuses(
    pods: Sequence[Mapping[str, Any]],
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(pod name, status of its fetch init container) for every pod that reports one."""
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        for container in pod.get("status", {}).get("initContainerStatuses") or []:
            if container.get("name") == INIT_CONTAINER:
                yield name, container


def fetch_reports(pods: Sequence[Mapping[str, Any]]) -> list[FetchReport]:
    """The fetch init containers that have ended, newest state first per pod."""
    reports = []
    for name, container in _fetch_statuses(pods):
        ended = (container.get("state") or {}).get("terminated") or (
            container.get("lastState") or {}
        ).get("terminated")
        if not ended:
            continue
        try:
            result = json.loads(ended.get("message") or "{}")
        except ValueError:
            result = {}
        if not isinstance(result, dict):
            result = {}
        reports.append(FetchReport(name, int(ended.get("exitCode") or 0), result))
    return reports


def fetching(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """Pods whose fetch init container is running now."""
    return [
        name
        for name, container in _fetch_statuses(pods)
        if (container.get("state") or {}).get("running")
    ]


def artifact_condition(
    state: ArtifactState, pods: Sequence[Mapping[str, Any]]
) -> tuple[str, str, str]:
    """``ArtifactVerified`` as (status, reason, message) from the resolution and the pods.

    True once a pod's fetcher exited 0 for the resolved revision: it published the files
    only after their sha256 matched the pinned or published digests. False when resolution
    refused the source or a fetcher found other bytes than pinned. Unknown otherwise.
    """
    if state.refused:
        return "False", state.reason, state.message
    revision = state.resolution.revision if state.resolution else None
    for report in fetch_reports(pods):
        reason = str(report.result.get("reason") or "")
        if report.exit_code != 0 and reason in REFUSING_REASONS:
            error = report.result.get("error") or f"exited {report.exit_code}"
            return "False", reason, f"pod {report.pod}: {error}"
        # Only the fetcher's own report counts: an init container that merely exited 0
        # (another image, a simulated node) has verified nothing.
        fetched = report.result.get("revision")
        if report.exit_code == 0 and fetched and (revision is None or fetched == revision):
            count = len(report.result.get("files") or [])
            noun = "file" if count == 1 else "files"
            message = f"pod {report.pod} verified the sha256 of {count} {noun} of {fetched}"
            return "True", "Verified", message
    if state.resolution is not None:
        return "Unknown", "Resolved", f"{state.message}; each pod verifies sha256 as it fetches"
    return "Unknown", state.reason, state.message


def verified_signer(
    model: ModelSource, state: ArtifactState | None, pods: Sequence[Mapping[str, Any]]
) -> str | None:
    """Who signed the served files (key fingerprint or certificate subject), as a pod's
    fetcher verified them; None until one did, or without a signature."""
    found = _verified_report(model, state, pods)
    return str(found[1]["identity"]) if found is not None else None


def _verified_report(
    model: ModelSource, state: ArtifactState | None, pods: Sequence[Mapping[str, Any]]
) -> tuple[Any, Mapping[str, Any]] | None:
    """The first fetch report that verified the signature for the resolved revision."""
    if model.signature is None:
        return None
    revision = state.resolution.revision if state and state.resolution else None
    for report in fetch_reports(pods):
        verified = report.result.get("signature")
        fetched = report.result.get("revision")
        if (
            report.exit_code == 0
            and isinstance(verified, Mapping)
            and verified.get("identity")
            and fetched
            and (revision is None or fetched == revision)
        ):
            return report, verified
    return None


def signature_condition(
    model: ModelSource, state: ArtifactState | None, pods: Sequence[Mapping[str, Any]]
) -> tuple[str, str, str] | None:
    """``SignatureVerified`` as (status, reason, message), or None without a signature.

    True (``Verified``) once a pod's fetcher exited 0 for the resolved revision and reported
    the signature it verified (the signer's key fingerprint or certificate subject); False
    (``SignatureInvalid``) when a fetcher refused the files (the message names the file and
    why); Unknown (``Pending``) before any pod has fetched.
    """
    signature = model.signature
    if signature is None:
        return None
    invalid = SignatureInvalidError.reason
    for report in fetch_reports(pods):
        if report.exit_code != 0 and str(report.result.get("reason") or "") == invalid:
            error = report.result.get("error") or f"exited {report.exit_code}"
            return "False", invalid, f"pod {report.pod}: {error}"
    found = _verified_report(model, state, pods)
    if found is not None:
        report, verified = found
        count = len(report.result.get("files") or [])
        noun = "file" if count == 1 else "files"
        signer = str(verified["identity"])
        if verified.get("kind") == "publicKey":
            signer = f"key {signer}"
        message = (
            f"pod {report.pod} verified {count} {noun} of {report.result.get('revision')} "
            f"against {verified.get('bundle') or signature.bundle}, signed by {signer}"
        )
        return "True", "Verified", message
    anchor = "public key" if signature.public_key is not None else "certificate chain"
    return (
        "Unknown",
        "Pending",
        f"no pod has fetched yet; each pod verifies {signature.bundle} with the trusted "
        f"{anchor} before anything is served",
    )


def reported_artifact(
    state: ArtifactState, pods: Sequence[Mapping[str, Any]]
) -> dict[str, Any] | None:
    """``status.artifact`` from a fetcher's report, for sources the operator cannot resolve."""
    for report in fetch_reports(pods):
        if report.exit_code != 0 or not report.result.get("revision"):
            continue
        files = [
            {"name": f["name"], "sizeBytes": int(f.get("size") or 0)}
            | ({"sha256": f["sha256"]} if f.get("sha256") else {})
            for f in report.result.get("files") or []
            if isinstance(f, dict) and f.get("name")
        ]
        return {
            "source": state.source,
            "resolvedRevision": str(report.result["revision"]),
            "files": files,
            "totalBytes": sum(f["sizeBytes"] for f in files),
            "modelHash": state.model_hash,
        }
    return None
