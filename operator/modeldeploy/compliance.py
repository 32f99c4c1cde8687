"""Compliance: which ModelPolicies apply to a ModelDeployment, and what each of them refuses.

This module owns the meaning of a ``ModelPolicy``'s rules (``policy_api.py`` owns their
shape): namespace selection, the source globs, what counts as a pinned revision, the
license spellings and expressions, and how several policies combine. ``evaluate`` is the
one judgement, used alike by ``modeldeploy policy check``, the admission webhook and the
operator; ``source_allowed`` is the check the operator makes before it contacts a source.

The rules, as ``docs/compliance.md`` states them for users:

- Every policy whose ``namespaceSelector`` matches the namespace's labels applies; an
  empty selector selects every namespace. Each applying policy reports its own
  violations, and the result's ``enforcement`` is the strictest among the policies that
  have any (enforce > warn > audit).
- Some rules need facts that exist only after the operator resolved the artifact (the
  license the source declares, the files and their digests, the signature's verification)
  or planned it (the engine and accelerator that ``auto`` became). Without them, such a
  rule is *pending*: not a violation, listed in ``Evaluation.pending``. With
  ``ResolvedFacts``, the same rule passes or is violated.

Pure: no kopf, no kubernetes client, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from modeldeploy.api import ModelDeployment
from modeldeploy.fetch.uri import SourceURIError, parse_source
from modeldeploy.policy_api import (
    ENFORCEMENTS,
    Enforcement,
    LabelSelector,
    ModelPolicy,
    ModelPolicySpec,
)

# The annotation in which a ModelDeployment declares its model's license (SPDX id).
LICENSE_ANNOTATION = "modeldeploy.io/license"

# The Hugging Face Hub's license identifiers (the `license:` of a model card,
# docs/hub/repositories-licenses.md) and the SPDX id each one means. Hub licenses that SPDX
# does not list, and the Hub's license families (bsd, cc, gpl, ...), become
# LicenseRef-<hub id>; "other" and "unknown" mean no license is known.
HUB_LICENSES: Mapping[str, str] = MappingProxyType(
    {
        "apache-2.0": "Apache-2.0",
        "mit": "MIT",
        "afl-3.0": "AFL-3.0",
        "agpl-3.0": "AGPL-3.0-only",
        "artistic-2.0": "Artistic-2.0",
        "bsl-1.0": "BSL-1.0",
        "bsd-2-clause": "BSD-2-Clause",
        "bsd-3-clause": "BSD-3-Clause",
        "bsd-3-clause-clear": "BSD-3-Clause-Clear",
        "c-uda": "C-UDA-1.0",
        "cc0-1.0": "CC0-1.0",
        "cc-by-2.0": "CC-BY-2.0",
        "cc-by-2.5": "CC-BY-2.5",
        "cc-by-3.0": "CC-BY-3.0",
        "cc-by-4.0": "CC-BY-4.0",
        "cc-by-sa-3.0": "CC-BY-SA-3.0",
        "cc-by-sa-4.0": "CC-BY-SA-4.0",
        "cc-by-nc-2.0": "CC-BY-NC-2.0",
        "cc-by-nc-3.0": "CC-BY-NC-3.0",
        "cc-by-nc-4.0": "CC-BY-NC-4.0",
        "cc-by-nd-4.0": "CC-BY-ND-4.0",
        "cc-by-nc-nd-3.0": "CC-BY-NC-ND-3.0",
        "cc-by-nc-nd-4.0": "CC-BY-NC-ND-4.0",
        "cc-by-nc-sa-2.0": "CC-BY-NC-SA-2.0",
        "cc-by-nc-sa-3.0": "CC-BY-NC-SA-3.0",
        "cc-by-nc-sa-4.0": "CC-BY-NC-SA-4.0",
        "cdla-sharing-1.0": "CDLA-Sharing-1.0",
        "cdla-permissive-1.0": "CDLA-Permissive-1.0",
        "cdla-permissive-2.0": "CDLA-Permissive-2.0",
        "ecl-2.0": "ECL-2.0",
        "epl-1.0": "EPL-1.0",
        "epl-2.0": "EPL-2.0",
        "etalab-2.0": "etalab-2.0",
        "eupl-1.1": "EUPL-1.1",
        "eupl-1.2": "EUPL-1.2",
        "gpl-2.0": "GPL-2.0-only",
        "gpl-3.0": "GPL-3.0-only",
        "isc": "ISC",
        "lgpl-2.1": "LGPL-2.1-only",
        "lgpl-3.0": "LGPL-3.0-only",
        "lgpl-lr": "LGPLLR",
        "lppl-1.3c": "LPPL-1.3c",
        "mpl-2.0": "MPL-2.0",
        "ms-pl": "MS-PL",
        "ncsa": "NCSA",
        "odbl": "ODbL-1.0",
        "odc-by": "ODC-By-1.0",
        "ofl-1.1": "OFL-1.1",
        "osl-3.0": "OSL-3.0",
        "pddl": "PDDL-1.0",
        "postgresql": "PostgreSQL",
        "unlicense": "Unlicense",
        "wtfpl": "WTFPL",
        "zlib": "Zlib",
        # Not in the SPDX list: model licenses and the Hub's license families.
        "apple-amlr": "LicenseRef-apple-amlr",
        "apple-ascl": "LicenseRef-apple-ascl",
        "bigcode-openrail-m": "LicenseRef-bigcode-openrail-m",
        "bigscience-bloom-rail-1.0": "LicenseRef-bigscience-bloom-rail-1.0",
        "bigscience-openrail-m": "LicenseRef-bigscience-openrail-m",
        "bsd": "LicenseRef-bsd",
        "cc": "LicenseRef-cc",
        "creativeml-openrail-m": "LicenseRef-creativeml-openrail-m",
        "deepfloyd-if-license": "LicenseRef-deepfloyd-if-license",
        "fair-noncommercial-research-license": "LicenseRef-fair-noncommercial-research-license",
        "gemma": "LicenseRef-gemma",
        "gfdl": "LicenseRef-gfdl",
        "gpl": "LicenseRef-gpl",
        "h-research": "LicenseRef-h-research",
        "intel-research": "LicenseRef-intel-research",
        "lgpl": "LicenseRef-lgpl",
        "llama2": "LicenseRef-llama2",
        "llama3": "LicenseRef-llama3",
        "llama3.1": "LicenseRef-llama3.1",
        "llama3.2": "LicenseRef-llama3.2",
        "llama3.3": "LicenseRef-llama3.3",
        "llama4": "LicenseRef-llama4",
        "openrail": "LicenseRef-openrail",
        "openrail++": "LicenseRef-openrail-plus-plus",
    }
)
# Spellings that say no license is known (the Hub's "other" needs the card's own text).
UNKNOWN_LICENSES = frozenset({"other", "unknown", "noassertion", "none"})
_CANONICAL_LICENSES = {spdx.casefold(): spdx for spdx in HUB_LICENSES.values()}

# What counts as a pinned revision, by scheme (spec.model.revision, or the source's own
# @REVISION / @DIGEST): a Hub commit, an OCI manifest digest, or, for stores without
# commits, the revision the operator derived from the objects (status.artifact's
# resolvedRevision, resolution.derive_revision's form).
HF_COMMIT_PATTERN = r"^[0-9a-f]{40}$"
OCI_DIGEST_PATTERN = r"^sha(256:[0-9a-f]{64}|512:[0-9a-f]{128})$"
DERIVED_REVISION_PATTERN = r"^(etags|versions|generations|mtimes)-[0-9a-f]{16}$"
PIN_PATTERNS: Mapping[str, str] = MappingProxyType(
    {
        "hf": HF_COMMIT_PATTERN,
        "oci": OCI_DIGEST_PATTERN,
        "s3": DERIVED_REVISION_PATTERN,
        "gs": DERIVED_REVISION_PATTERN,
        "https": DERIVED_REVISION_PATTERN,
        "pvc": DERIVED_REVISION_PATTERN,
    }
)
PIN_WORDS: Mapping[str, str] = MappingProxyType(
    {
        "hf": "a 40-character lowercase hex commit sha of the repository",
        "oci": "a manifest digest (sha256:<64 hex>), in spec.model.revision or as @DIGEST",
        "s3": "the resolved revision status.artifact.resolvedRevision records (etags-<16 hex>)",
        "gs": "the resolved revision status.artifact.resolvedRevision records "
        "(generations-<16 hex>)",
        "https": "the resolved revision status.artifact.resolvedRevision records (etags-<16 hex>)",
        "pvc": "the resolved revision status.artifact.resolvedRevision records (mtimes-<16 hex>)",
    }
)
_MAX_LICENSE_ALTERNATIVES = 64
_LISTED = 5  # names listed in one message before "and N more"


@dataclass(frozen=True)
class ResolvedFacts:
    """What the operator learnt about the artifact (after resolution) and the plan.

    ``file_digests`` has every served file by name, with its sha256 where known ("" where
    not). ``signature_identity`` is who signed, as the fetcher's verification reports it
    (``fetch/signature.py``: ``sha256:<hex>`` of the public key's DER, or the signing
    certificate's subject; None: not verified). ``trusted_key_identities`` maps each
    policy key the operator could read (``policy_api.TrustedKey.reference``) to the same
    kind of identity: the PEM public key's fingerprint, or the subject of the chain's first
    certificate. ``engine`` and ``accelerator`` are what the planner chose
    (``status.decision``), where known.
    """

    license: str | None = None
    file_digests: Mapping[str, str] = field(default_factory=dict)
    revision: str | None = None
    signature_identity: str | None = None
    engine: str | None = None
    accelerator: str | None = None
    trusted_key_identities: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> ResolvedFacts | None:
        """The facts a ModelDeployment's ``status`` records; None before any resolution."""
        artifact = (status or {}).get("artifact")
        if not isinstance(artifact, Mapping) or not artifact.get("resolvedRevision"):
            return None
        decision = (status or {}).get("decision")
        decision = decision if isinstance(decision, Mapping) else {}
        files = [f for f in artifact.get("files") or [] if isinstance(f, Mapping) and "name" in f]
        return cls(
            license=artifact.get("license"),
            file_digests={str(f["name"]): str(f.get("sha256") or "") for f in files},
            revision=str(artifact["resolvedRevision"]),
            # The status does not record a signature's verification (yet): not verified.
            signature_identity=None,
            engine=decision.get("engine"),
            accelerator=decision.get("accelerator"),
        )


@dataclass(frozen=True)
class Violation:
    """One rule of one policy that a ModelDeployment breaks, and what the rule allows."""

    policy: str
    rule: str  # the ModelPolicy spec field, such as allowedSources
    field: str  # where in the ModelDeployment, such as spec.model.source
    message: str
    allowed: str
    enforcement: Enforcement = "enforce"

    def as_dict(self) -> dict[str, str]:
        """The violation as plain data (CLI JSON, events): its fields, in their order."""
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.policy}: {self.rule}: {self.field}: {self.message}; allowed: {self.allowed}"


@dataclass(frozen=True)
class Pending:
    """A rule that cannot be decided yet, and the fact it waits for."""

    policy: str
    rule: str
    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """The pending rule as plain data: its fields, in their order."""
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    """The verdict of every applying policy on one ModelDeployment."""

    policies: tuple[str, ...]  # the policies that selected the namespace, by name
    violations: tuple[Violation, ...]
    pending: tuple[Pending, ...]
    enforcement: Enforcement | None  # the strictest of the violated policies; None: compliant

    @property
    def compliant(self) -> bool:
        """True when no applying policy has a violation (pending rules are not violations)."""
        return not self.violations

    @property
    def pending_rules(self) -> tuple[str, ...]:
        """The names of the pending rules, sorted and without repeats."""
        return tuple(sorted({p.rule for p in self.pending}))

    def as_dict(self) -> dict[str, Any]:
        """The evaluation as plain data (``modeldeploy policy check -o json``)."""
        return {
            "compliant": self.compliant,
            "enforcement": self.enforcement,
            "policies": list(self.policies),
            "violations": [v.as_dict() for v in self.violations],
            "pending": [p.as_dict() for p in self.pending],
        }


def strictest(enforcements: Iterable[Enforcement]) -> Enforcement | None:
    """The strictest of ``enforcements`` (enforce > warn > audit); None when there are none."""
    found = sorted(enforcements, key=ENFORCEMENTS.index)
    return found[0] if found else None


# --- namespace selection ---------------------------------------------------------------


def selects(selector: LabelSelector, namespace_labels: Mapping[str, str]) -> bool:
    """True when a metav1.LabelSelector matches a namespace's labels (empty: every one)."""
    for key, value in selector.match_labels.items():
        if namespace_labels.get(key) != value:
            return False
    for requirement in selector.match_expressions:
        present = requirement.key in namespace_labels
        label = namespace_labels.get(requirement.key)
        matched = {
            "In": present and label in requirement.values,
            "NotIn": not present or label not in requirement.values,
            "Exists": present,
            "DoesNotExist": not present,
        }[requirement.operator]
        if not matched:
            return False
    return True


def applying_policies(
    policies: Iterable[ModelPolicy], namespace_labels: Mapping[str, str]
) -> list[ModelPolicy]:
    """The policies whose namespaceSelector selects the namespace, sorted by name."""
    chosen = [p for p in policies if selects(p.spec.namespace_selector, namespace_labels)]
    return sorted(chosen, key=lambda p: p.name)


# --- sources ---------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _glob(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one path segment, ``**`` across segments; the rest is literal."""
    parts = re.split(r"(\*\*|\*)", pattern)
    wildcards = {"**": ".*", "*": "[^/]*"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def ambiguous_source(source: str) -> str | None:
    """Why no pattern may match ``source`` (it could mean another place), or None."""
    if re.search(r"[?#\\\s]", source):
        return "it has a query, a fragment, a backslash or white space"
    if re.search(r"%(2e|2f|5c)", source, re.IGNORECASE):
        return "it percent-encodes a dot, a slash or a backslash"
    _, _, rest = source.partition("://")
    if any(segment in (".", "..") for segment in rest.split("/")):
        return "it has a . or .. path segment"
    if source.startswith("https://") and "@" in rest.split("/", 1)[0]:
        return "it names a user before the host"
    return None


def source_matches(pattern: str, source: str) -> bool:
    """True when the glob ``pattern`` matches the whole ``source`` (see ``_glob``)."""
    return ambiguous_source(source) is None and _glob(pattern).fullmatch(source) is not None


def _source_violation(
    policy: ModelPolicy, source: str, field: str = "spec.model.source"
) -> Violation | None:
    patterns = policy.spec.allowed_sources
    if not patterns or any(source_matches(p, source) for p in patterns):
        return None
    why = ambiguous_source(source)
    message = (
        f"{source} is matched by no pattern: {why}"
        if why
        else f"{source} matches none of the allowed patterns"
    )
    return _violation(policy, "allowedSources", field, message, ", ".join(patterns))


def source_allowed(
    policies: Iterable[ModelPolicy], namespace_labels: Mapping[str, str], source: str
) -> Violation | None:
    """The strictest policy's refusal of ``source`` before anything contacts it, or None."""
    found = [
        violation
        for policy in applying_policies(policies, namespace_labels)
        if (violation := _source_violation(policy, source)) is not None
    ]
    found.sort(key=lambda v: (ENFORCEMENTS.index(v.enforcement), v.policy))
    return found[0] if found else None


# --- licenses --------------------------------------------------------------------------


def spdx_license(text: str | None) -> str | None:
    """The SPDX id (or LicenseRef-...) a license spelling means; None when none is known."""
    if text is None:
        return None
    cleaned = text.strip()
    if not cleaned or cleaned.casefold() in UNKNOWN_LICENSES:
        return None
    lowered = cleaned.casefold()
    if lowered in HUB_LICENSES:
        return HUB_LICENSES[lowered]
    return _CANONICAL_LICENSES.get(lowered, cleaned)


def license_alternatives(expression: str) -> list[frozenset[str]]:
    """An SPDX expression as its alternatives: ``MIT OR (A AND B)`` -> [{MIT}, {A, B}].

    Each id is mapped by ``spdx_license`` and case-folded; ``X WITH Y`` stays one id. An
    expression that does not parse is one id.
    """
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    try:
        alternatives, rest = _parse_or(tokens)
        if rest:
            raise ValueError("trailing tokens")
    except (ValueError, IndexError):
        return [frozenset({_license_key(expression)})]
    return alternatives


def _license_key(text: str) -> str:
    return (spdx_license(text) or text.strip()).casefold()


def _parse_or(tokens: list[str]) -> tuple[list[frozenset[str]], list[str]]:
    alternatives, tokens = _parse_and(tokens)
    while tokens and tokens[0].upper() == "OR":
        more, tokens = _parse_and(tokens[1:])
        alternatives = alternatives + more
    if len(alternatives) > _MAX_LICENSE_ALTERNATIVES:
        raise ValueError("too many alternatives")
    return alternatives, tokens


def _parse_and(tokens: list[str]) -> tuple[list[frozenset[str]], list[str]]:
    alternatives, tokens = _parse_atom(tokens)
    while tokens and tokens[0].upper() == "AND":
        more, tokens = _parse_atom(tokens[1:])
        alternatives = [a | b for a in alternatives for b in more]
        if len(alternatives) > _MAX_LICENSE_ALTERNATIVES:
            raise ValueError("too many alternatives")
    return alternatives, tokens


def _parse_atom(tokens: list[str]) -> tuple[list[frozenset[str]], list[str]]:
    if tokens[0] == "(":
        alternatives, rest = _parse_or(tokens[1:])
        if not rest or rest[0] != ")":
            raise ValueError("unbalanced parentheses")
        return alternatives, rest[1:]
    if tokens[0] in (")",) or tokens[0].upper() in ("AND", "OR", "WITH"):
        raise ValueError(f"unexpected {tokens[0]}")
    name, rest = _license_key(tokens[0]), tokens[1:]
    if rest and rest[0].upper() == "WITH":
        name, rest = f"{name} with {rest[1].casefold()}", rest[2:]
    return [frozenset({name})], rest


def _denied(license_id: str, denied: set[str]) -> bool:
    """True when ``license_id`` (or the license of ``X WITH exception``) is denied."""
    return license_id in denied or license_id.split(" with ", 1)[0] in denied


def _license_rules(
    policy: ModelPolicy,
    annotations: Mapping[str, Any],
    artifact: ResolvedFacts | None,
) -> tuple[list[Violation], list[Pending]]:
    spec = policy.spec
    if not spec.allowed_licenses and not spec.denied_licenses:
        return [], []
    rule = "allowedLicenses" if spec.allowed_licenses else "deniedLicenses"
    allowed_words = _license_words(spec)
    annotation_field = f"metadata.annotations['{LICENSE_ANNOTATION}']"
    raw_declared = annotations.get(LICENSE_ANNOTATION)
    declared = spdx_license(raw_declared) if isinstance(raw_declared, str) else None
    detected = spdx_license(artifact.license) if artifact is not None else None
    violations: list[Violation] = []
    if declared and detected and declared.casefold() != detected.casefold():
        violations.append(
            _violation(
                policy,
                rule,
                annotation_field,
                f"declares {declared} but the source declares {detected}",
                f"the license the source declares ({detected})",
            )
        )
    license_ = detected or declared
    where = "status.artifact.license" if detected else annotation_field
    if license_ is None:
        if artifact is None:
            reason = "the license is known once the operator has resolved the artifact"
            return [], [Pending(policy.name, rule, annotation_field, reason)]
        message = (
            "no license is known: the source declares none (or 'other'); declare it with "
            f"the {LICENSE_ANNOTATION} annotation"
        )
        return [_violation(policy, rule, annotation_field, message, allowed_words)], []
    alternatives = license_alternatives(license_)
    allowed = {_license_key(x) for x in spec.allowed_licenses}
    denied = {_license_key(x) for x in spec.denied_licenses}
    if allowed and not any(alternative <= allowed for alternative in alternatives):
        violations.append(
            _violation(
                policy,
                "allowedLicenses",
                where,
                f"license {license_} is not allowed",
                ", ".join(spec.allowed_licenses),
            )
        )
    if denied and all(any(_denied(x, denied) for x in alt) for alt in alternatives):
        violations.append(
            _violation(
                policy,
                "deniedLicenses",
                where,
                f"license {license_} is denied",
                "any license except " + ", ".join(spec.denied_licenses),
            )
        )
    return violations, []


def _license_words(spec: ModelPolicySpec) -> str:
    if spec.allowed_licenses:
        return ", ".join(spec.allowed_licenses)
    return "any license except " + ", ".join(spec.denied_licenses)


# --- revisions, digests, signatures ----------------------------------------------------


def effective_revision(md: ModelDeployment) -> tuple[str | None, str]:
    """The revision the fetcher asks for, and the field it comes from."""
    if md.spec.model.revision is not None:
        return md.spec.model.revision, "spec.model.revision"
    try:
        reference = parse_source(md.spec.model.source).reference
    except SourceURIError:
        reference = None
    if reference is not None and md.spec.model.scheme in ("hf", "oci"):
        return reference, "spec.model.source"
    return None, "spec.model.revision"


def is_pinned(scheme: str, revision: str | None) -> bool:
    """True when ``revision`` pins the bytes for a source of ``scheme`` (see PIN_PATTERNS)."""
    pattern = PIN_PATTERNS.get(scheme)
    return revision is not None and pattern is not None and re.match(pattern, revision) is not None


def _revision_rule(
    policy: ModelPolicy, md: ModelDeployment, artifact: ResolvedFacts | None
) -> list[Violation]:
    if not policy.spec.require_revision_pin:
        return []
    scheme = md.spec.model.scheme
    allowed = PIN_WORDS.get(scheme, "a pinned revision")
    revision, where = effective_revision(md)
    if revision is None:
        message = "no revision is set: the default branch or latest can change under it"
        return [_violation(policy, "requireRevisionPin", where, message, allowed)]
    if not is_pinned(scheme, revision):
        message = f"{revision} is not a pin for a {scheme}:// source (a branch or tag moves)"
        return [_violation(policy, "requireRevisionPin", where, message, allowed)]
    if artifact is not None and artifact.revision is not None and artifact.revision != revision:
        message = f"pinned {revision} but the operator resolved {artifact.revision}"
        return [_violation(policy, "requireRevisionPin", where, message, allowed)]
    return []


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _digest_rule(
    policy: ModelPolicy, md: ModelDeployment, artifact: ResolvedFacts | None
) -> list[Violation]:
    if not policy.spec.require_digests:
        return []
    pinned = md.spec.model.digests
    allowed = "a sha256 in spec.model.digests for every file served"
    if not pinned:
        message = "no digests are pinned: nothing proves the bytes served are the bytes meant"
        return [_violation(policy, "requireDigests", "spec.model.digests", message, allowed)]
    if artifact is None:
        return []
    found = []
    unpinned = sorted(name for name in artifact.file_digests if name not in pinned)
    if unpinned:
        message = f"files served without a pinned digest: {_listed(unpinned)}"
        found.append(_violation(policy, "requireDigests", "spec.model.digests", message, allowed))
    differing = sorted(
        name
        for name, digest in artifact.file_digests.items()
        if digest and name in pinned and pinned[name] != digest.lower()
    )
    if differing:
        message = f"pinned digests differ from the source's: {_listed(differing)}"
        found.append(_violation(policy, "requireDigests", "spec.model.digests", message, allowed))
    return found


def _signature_rule(
    policy: ModelPolicy, md: ModelDeployment, artifact: ResolvedFacts | None
) -> tuple[list[Violation], list[Pending]]:
    requirement = policy.spec.require_signature
    if requirement is None:
        return [], []
    trusted = [key.reference for key in requirement.trusted_keys]
    allowed = "spec.model.signature verified by one of " + ", ".join(trusted)
    where = "spec.model.signature"
    if getattr(md.spec.model, "signature", None) is None:
        return [_violation(policy, "requireSignature", where, "no signature", allowed)], []
    if artifact is None:
        reason = "the signature is verified once the operator has resolved the artifact"
        return [], [Pending(policy.name, "requireSignature", where, reason)]
    identity = artifact.signature_identity
    if identity is None:
        message = "the signature was not verified"
        return [_violation(policy, "requireSignature", where, message, allowed)], []
    known = {artifact.trusted_key_identities.get(ref) for ref in trusted} - {None}
    if identity in known:
        return [], []
    if not known:
        message = f"signed by {identity}, but none of the trusted keys could be read"
    else:
        message = f"signed by {identity}, which is none of the trusted keys"
    return [_violation(policy, "requireSignature", where, message, allowed)], []


# --- annotations, engines, accelerators ------------------------------------------------


def _annotation_rules(policy: ModelPolicy, annotations: Mapping[str, Any]) -> list[Violation]:
    found = []
    for requirement in policy.spec.required_annotations:
        where = f"metadata.annotations['{requirement.key}']"
        value = annotations.get(requirement.key)
        allowed = (
            f"a value matching {requirement.pattern}"
            if requirement.pattern
            else "any non-empty value"
        )
        if requirement.description:
            allowed += f" ({requirement.description})"
        if not isinstance(value, str) or value == "":
            message = f"the annotation {requirement.key} is required"
        elif not requirement.matches(value):
            message = f"{value!r} does not match {requirement.pattern}"
        else:
            continue
        found.append(_violation(policy, "requiredAnnotations", where, message, allowed))
    return found


def _choice_rule(
    policy: ModelPolicy,
    rule: str,
    allowed: Sequence[str],
    *,
    requested: str,
    decided: str | None,
    spec_field: str,
    decision_field: str,
) -> tuple[list[Violation], list[Pending]]:
    """allowedEngines / allowedAccelerators: the explicit choice, or what auto became."""
    if not allowed:
        return [], []
    chosen, where = (requested, spec_field) if requested != "auto" else (decided, decision_field)
    if chosen is None:
        reason = f"{spec_field} is auto: the planner's choice is known once it has planned"
        return [], [Pending(policy.name, rule, spec_field, reason)]
    if chosen in allowed:
        return [], []
    message = f"{chosen} is not allowed" + (" (chosen for auto)" if requested == "auto" else "")
    return [_violation(policy, rule, where, message, ", ".join(allowed))], []


# --- the evaluation --------------------------------------------------------------------


def _violation(policy: ModelPolicy, rule: str, where: str, message: str, allowed: str) -> Violation:
    return Violation(policy.name, rule, where, message, allowed, policy.spec.enforcement)


def _annotations(md: ModelDeployment) -> Mapping[str, Any]:
    annotations = md.metadata.get("annotations")
    return annotations if isinstance(annotations, Mapping) else {}


def check_policy(
    policy: ModelPolicy, md: ModelDeployment, artifact: ResolvedFacts | None = None
) -> tuple[list[Violation], list[Pending]]:
    """Every rule of one policy against one ModelDeployment, in the order the spec lists them."""
    annotations = _annotations(md)
    violations: list[Violation] = []
    pending: list[Pending] = []

    def add(result: tuple[list[Violation], list[Pending]]) -> None:
        violations.extend(result[0])
        pending.extend(result[1])

    sources = [(md.spec.model.source, "spec.model.source")] + [
        (adapter.source, f"spec.adapters[{index}].source")
        for index, adapter in enumerate(md.spec.adapters)
    ]
    for source, where in sources:
        violation = _source_violation(policy, source, where)
        violations.extend([violation] if violation else [])
    violations.extend(_revision_rule(policy, md, artifact))
    violations.extend(_digest_rule(policy, md, artifact))
    add(_license_rules(policy, annotations, artifact))
    violations.extend(_annotation_rules(policy, annotations))
    add(_signature_rule(policy, md, artifact))
    add(
        _choice_rule(
            policy,
            "allowedEngines",
            policy.spec.allowed_engines,
            requested=md.spec.engine,
            decided=artifact.engine if artifact else None,
            spec_field="spec.engine",
            decision_field="status.decision.engine",
        )
    )
    add(
        _choice_rule(
            policy,
            "allowedAccelerators",
            policy.spec.allowed_accelerators,
            requested=md.spec.hardware.accelerator,
            decided=artifact.accelerator if artifact else None,
            spec_field="spec.hardware.accelerator",
            decision_field="status.decision.accelerator",
        )
    )
    return violations, pending


def evaluate(
    policies: Iterable[ModelPolicy],
    namespace_labels: Mapping[str, str],
    md: ModelDeployment,
    artifact: ResolvedFacts | None = None,
) -> Evaluation:
    """Judge ``md`` by every policy that selects its namespace (see the module docstring)."""
    applying = applying_policies(policies, namespace_labels)
    violations: list[Violation] = []
    pending: list[Pending] = []
    for policy in applying:
        found, waiting = check_policy(policy, md, artifact)
        violations += found
        pending += waiting
    return Evaluation(
        policies=tuple(p.name for p in applying),
        violations=tuple(violations),
        pending=tuple(pending),
        enforcement=strictest(v.enforcement for v in violations),
    )
