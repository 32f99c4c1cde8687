"""Provenance of what a ModelDeployment serves: one value, its annotations and its status.

This module owns ``Provenance`` (the source, the resolved revision, a digest over the
files' digests, the license, the policy that admitted the deployment, the signature's
identity and the operator's version), the ``modeldeploy.io/`` annotations the renderer
puts on the Deployment and its pod template, and the ``status.provenance`` mapping.

The files digest (``modeldeploy.io/model-digest``) is defined once, here: the sha256 of
the UTF-8 text made of one line ``NAME SHA256\\n`` per file (the file's path relative to
the source, one space, its lowercase hex sha256, a newline), the lines sorted by name in
code point order, written ``sha256:HEX``. A selection with a file whose digest is not
known has none. (``sha256sum``'s check-file format puts the digest first, with two
spaces: the value is recomputed from the files, as ``files_digest`` does.)

The pod template carries only what describes the bytes a pod serves (source, revision,
digest, license): a new revision changes the template's hash and rolls the pods, which is
right. The policy, the signature's identity and the operator's version go on the
Deployment only, so that editing a ModelPolicy or upgrading the operator restarts no model
server by itself.

Pure: no I/O; values in, strings out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy import __version__
from modeldeploy.api import ModelDeployment
from modeldeploy.fetch.uri import SourceURIError, parse_source
from modeldeploy.resolution import ArtifactFile, Resolution

PREFIX = "modeldeploy.io/"
ANNOTATION_SOURCE = f"{PREFIX}model-source"
ANNOTATION_REVISION = f"{PREFIX}model-revision"
ANNOTATION_DIGEST = f"{PREFIX}model-digest"
ANNOTATION_LICENSE = f"{PREFIX}model-license"
ANNOTATION_POLICY = f"{PREFIX}policy"
ANNOTATION_POLICY_GENERATION = f"{PREFIX}policy-generation"
ANNOTATION_SIGNATURE = f"{PREFIX}signature"
ANNOTATION_OPERATOR_VERSION = f"{PREFIX}operator-version"
# The annotations that describe the served bytes: the pod template carries these only.
POD_ANNOTATIONS = (ANNOTATION_SOURCE, ANNOTATION_REVISION, ANNOTATION_DIGEST, ANNOTATION_LICENSE)

# The longest annotation value written; longer ones are cut and end with a note saying so
# (status.provenance keeps the whole value). Kubernetes bounds all annotations of an
# object together at 256 KiB; a source URI may be 2048 characters.
MAX_VALUE_LENGTH = 512
TRUNCATED_NOTE = "...(truncated, {length} characters)"


@dataclass(frozen=True)
class PolicyRef:
    """The ModelPolicy that admitted a deployment, at the generation it was read."""

    name: str
    generation: int | None = None


@dataclass(frozen=True)
class Provenance:
    """Where the served bytes come from, and who let them be served.

    ``revision`` is None only while the source is not resolved (a ``pvc://`` source is
    resolved by the init container); ``files_digest`` is None when a file's sha256 is not
    known (see the module docstring for its definition).
    """

    source: str
    revision: str | None
    files_digest: str | None
    license: str | None = None
    policy: PolicyRef | None = None
    signature_identity: str | None = None
    operator_version: str = __version__


def files_digest(files: Iterable[ArtifactFile]) -> str | None:
    """``sha256:HEX`` over the sorted ``NAME SHA256`` lines; None if a digest is unknown."""
    pairs = []
    for file in files:
        if not file.sha256:
            return None
        pairs.append((file.name, file.sha256.lower()))
    if not pairs:
        return None
    text = "".join(f"{name} {sha256}\n" for name, sha256 in sorted(pairs))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def canonical_source(text: str) -> str:
    """The source as ``status.artifact`` names it: ``SourceURI.canonical``, no revision."""
    try:
        return parse_source(text).canonical
    except SourceURIError:
        return text


def provenance_from(
    md: ModelDeployment,
    resolution: Resolution | None,
    *,
    policy: PolicyRef | None = None,
    signature_identity: str | None = None,
    operator_version: str = __version__,
) -> Provenance:
    """The provenance of ``md`` as resolved (the spec's own revision while unresolved)."""
    if resolution is None:
        return Provenance(
            source=canonical_source(md.spec.model.source),
            revision=md.spec.model.revision,
            files_digest=None,
            policy=policy,
            signature_identity=signature_identity,
            operator_version=operator_version,
        )
    return Provenance(
        source=resolution.source,
        revision=resolution.revision,
        files_digest=files_digest(resolution.files),
        license=resolution.license,
        policy=policy,
        signature_identity=signature_identity,
        operator_version=operator_version,
    )


def annotation_value(text: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``text`` as an annotation value: control characters as spaces, cut to ``limit``."""
    clean = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text)
    if len(clean) <= limit:
        return clean
    note = TRUNCATED_NOTE.format(length=len(clean))
    return clean[: limit - len(note)] + note


def provenance_annotations(p: Provenance) -> dict[str, str]:
    """Every provenance annotation, for the Deployment's metadata (keys sorted)."""
    values: dict[str, str | None] = {
        ANNOTATION_SOURCE: p.source,
        ANNOTATION_REVISION: p.revision,
        ANNOTATION_DIGEST: p.files_digest,
        ANNOTATION_LICENSE: p.license,
        ANNOTATION_POLICY: p.policy.name if p.policy else None,
        ANNOTATION_POLICY_GENERATION: (
            str(p.policy.generation) if p.policy and p.policy.generation is not None else None
        ),
        ANNOTATION_SIGNATURE: p.signature_identity,
        ANNOTATION_OPERATOR_VERSION: p.operator_version,
    }
    return {key: annotation_value(value) for key, value in sorted(values.items()) if value}


def pod_annotations(p: Provenance) -> dict[str, str]:
    """The annotations of the served bytes only, for the pod template (see the module)."""
    return {
        key: value for key, value in provenance_annotations(p).items() if key in POD_ANNOTATIONS
    }


def as_status(
    p: Provenance, *, bom_config_map: str | None = None, bom_hash: str | None = None
) -> dict[str, Any]:
    """The ``status.provenance`` mapping (camelCase, whole values, absent fields left out)."""
    out: dict[str, Any] = {"source": p.source}
    optional: Mapping[str, Any] = {
        "revision": p.revision,
        "modelDigest": p.files_digest,
        "license": p.license,
        "policy": (
            {"name": p.policy.name}
            | ({"generation": p.policy.generation} if p.policy.generation is not None else {})
            if p.policy
            else None
        ),
        "signatureIdentity": p.signature_identity,
        "operatorVersion": p.operator_version,
        "bomConfigMap": bom_config_map,
        "bomHash": bom_hash,
    }
    out.update({key: value for key, value in optional.items() if value is not None})
    return out
