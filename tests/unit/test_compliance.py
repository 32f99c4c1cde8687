"""Compliance: namespace selection, every ModelPolicy rule, license spellings, strictest-wins."""

from __future__ import annotations

import re
from typing import Any

import pytest

from modeldeploy.api import ModelDeployment, parse_model_deployment
from modeldeploy.compliance import (
    DERIVED_REVISION_PATTERN,
    HUB_LICENSES,
    LICENSE_ANNOTATION,
    Evaluation,
    ResolvedFacts,
    Violation,
    ambiguous_source,
    evaluate,
    license_alternatives,
    selects,
    source_allowed,
    source_matches,
    spdx_license,
    strictest,
)
from modeldeploy.policy_api import LICENSE_PATTERN, ModelPolicy, parse_model_policy
from modeldeploy.resolution import ArtifactFile, Resolution, derive_revision

SHA1 = "0123456789abcdef0123456789abcdef01234567"
SHA256 = "a" * 64
PROD = {"env": "prod", "kubernetes.io/metadata.name": "serving"}


def policy(name: str = "p", **spec: Any) -> ModelPolicy:
    """A parsed ModelPolicy named ``name`` with ``spec``."""
    return parse_model_policy(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelPolicy",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def deployment(
    source: str = "hf://Qwen/Qwen2.5-7B-Instruct-GGUF",
    annotations: dict[str, str] | None = None,
    spec: dict[str, Any] | None = None,
    **model: Any,
) -> ModelDeployment:
    """A parsed ModelDeployment in namespace serving with the given model fields."""
    return parse_model_deployment(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {
                "name": "demo",
                "namespace": "serving",
                "annotations": annotations or {},
            },
            "spec": {"model": {"source": source, **model}, **(spec or {})},
        }
    )


def rules(result: Evaluation) -> list[str]:
    """The violated rules, in order."""
    return [v.rule for v in result.violations]


def pending(result: Evaluation) -> list[str]:
    """The pending rules, in order."""
    return [p.rule for p in result.pending]


# --- namespace selection ---------------------------------------------------------------


IN = {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "stg"]}]}
NOT_IN = {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}
EXISTS = {"matchExpressions": [{"key": "env", "operator": "Exists"}]}
ABSENT = {"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({}, PROD, True),
        ({"matchLabels": {"env": "prod"}}, PROD, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "dev"}, False),
        ({"matchLabels": {"env": "prod"}}, {}, False),
        ({"matchLabels": {"env": "prod", "team": "a"}}, PROD, False),
        ({"matchLabels": {"kubernetes.io/metadata.name": "serving"}}, PROD, True),
        (IN, PROD, True),
        (IN, {"env": "dev"}, False),
        (IN, {}, False),
        (NOT_IN, PROD, False),
        (NOT_IN, {"env": "dev"}, True),
        (NOT_IN, {}, True),
        (EXISTS, PROD, True),
        (EXISTS, {"env": ""}, True),
        (EXISTS, {}, False),
        (ABSENT, PROD, False),
        (ABSENT, {"team": "a"}, True),
        (
            {
                "matchLabels": {"env": "prod"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["gold"]},
                    {"key": "sandbox", "operator": "DoesNotExist"},
                ],
            },
            {"env": "prod", "tier": "gold"},
            True,
        ),
        (
            {
                "matchLabels": {"env": "prod"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gold"]}],
            },
            {"env": "prod", "tier": "silver"},
            False,
        ),
    ],
)
def test_namespace_selection(
    selector: dict[str, Any], labels: dict[str, str], selected: bool
) -> None:
    parsed = policy(namespaceSelector=selector)
    assert selects(parsed.spec.namespace_selector, labels) is selected
    result = evaluate([parsed], labels, deployment())
    assert result.policies == (("p",) if selected else ())


def test_every_selecting_policy_applies_and_the_others_do_not() -> None:
    policies = [
        policy(
            "prod-only", namespaceSelector={"matchLabels": {"env": "prod"}}, requireDigests=True
        ),
        policy("dev-only", namespaceSelector={"matchLabels": {"env": "dev"}}, requireDigests=True),
        policy("everyone", allowedSources=["hf://Qwen/*"]),
        policy("also-everyone", requireRevisionPin=True),
    ]
    result = evaluate(policies, PROD, deployment())
    assert result.policies == ("also-everyone", "everyone", "prod-only")
    assert [(v.policy, v.rule) for v in result.violations] == [
        ("also-everyone", "requireRevisionPin"),
        ("prod-only", "requireDigests"),
    ]


# --- sources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "source", "matched"),
    [
        ("hf://Qwen/*", "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", True),
        ("hf://Qwen/*", "hf://Qwen/Qwen2.5-7B@" + SHA1, True),
        ("hf://Qwen/*", "hf://Qwen/repo/sub/path", False),  # * stays within a segment
        ("hf://Qwen/**", "hf://Qwen/repo/sub/path", True),
        ("hf://Qwen/*", "hf://QwenEvil/repo", False),
        ("hf://Qwen/*", "hf://qwen/repo", False),  # literal, case and all
        ("hf://*/Qwen2.5-7B", "hf://anyone/Qwen2.5-7B", True),
        ("hf://Qwen/Qwen2.5-7B", "hf://Qwen/Qwen2.5-7B", True),
        ("hf://Qwen/Qwen2.5-7B", "hf://Qwen/Qwen2.5-7B-evil", False),
        ("hf://Qwen/Qwen2.5-*-GGUF", "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", True),
        ("s3://models-prod/**", "s3://models-prod/qwen/7b/model.gguf", True),
        ("s3://models-prod/**", "s3://models-prod-evil/qwen", False),
        ("s3://models-prod/*", "s3://models-prod/qwen/7b", False),
        ("s3://models-prod/**", "s3://models-prod/a/../b", False),
        ("s3://models-prod/**", "s3://models-prod/./b", False),
        ("https://*.example.org/**", "https://cdn.example.org/m.gguf", True),
        ("https://*.example.org/**", "https://evil.com#.example.org/m.gguf", False),
        ("https://*.example.org/**", "https://evil.com?.example.org/m.gguf", False),
        ("https://cdn.example.org/**", "https://cdn.example.org@evil.com/m.gguf", False),
        ("https://cdn.example.org/**", "https://cdn.example.org/a%2F..%2Fb", False),
        ("https://cdn.example.org/**", "https://cdn.example.org/a%2e%2e/b", False),
        ("oci://ghcr.io/org/*", "oci://ghcr.io/org/model:7b", True),
        ("oci://ghcr.io/org/*", "oci://ghcr.io/org/model@sha256:" + SHA256, True),
        ("pvc://models/**", "pvc://models/qwen", True),
        ("pvc://models/**", "s3://models/qwen", False),
        ("hf://Qwen/[ab]", "hf://Qwen/a", False),  # no character classes: literal
        ("hf://Qwen/a.b", "hf://Qwen/aXb", False),  # the dot is literal
    ],
)
def test_source_globs(pattern: str, source: str, matched: bool) -> None:
    assert source_matches(pattern, source) is matched
    result = evaluate([policy(allowedSources=[pattern])], {}, deployment(source))
    assert rules(result) == ([] if matched else ["allowedSources"])


def test_an_ambiguous_source_says_why_it_matches_nothing() -> None:
    assert ambiguous_source("https://cdn.example.org@evil.com/m") == (
        "it names a user before the host"
    )
    assert ambiguous_source("hf://Qwen/repo") is None
    result = evaluate([policy(allowedSources=["s3://b/**"])], {}, deployment("s3://b/x/../y"))
    (violation,) = result.violations
    assert violation.field == "spec.model.source"
    assert "matched by no pattern: it has a . or .. path segment" in violation.message


def test_the_source_violation_names_what_is_allowed() -> None:
    result = evaluate(
        [policy("production", allowedSources=["hf://Qwen/*", "s3://models-prod/**"])],
        PROD,
        deployment("hf://evil/model"),
    )
    assert result.violations == (
        Violation(
            "production",
            "allowedSources",
            "spec.model.source",
            "hf://evil/model matches none of the allowed patterns",
            "hf://Qwen/*, s3://models-prod/**",
            "enforce",
        ),
    )


def test_an_empty_source_list_allows_any_source() -> None:
    assert evaluate([policy()], {}, deployment("https://anywhere.example/x")).compliant


def test_source_allowed_before_contacting_the_source() -> None:
    policies = [
        policy("audit", enforcement="audit", allowedSources=["hf://Qwen/*"]),
        policy("warn", enforcement="warn", allowedSources=["hf://Qwen/*"]),
        policy(
            "enforce-dev",
            namespaceSelector={"matchLabels": {"env": "dev"}},
            allowedSources=["hf://Qwen/*"],
        ),
        policy("no-sources", requireDigests=True),
    ]
    assert source_allowed(policies, PROD, "hf://Qwen/Qwen2.5-7B") is None
    refused = source_allowed(policies, PROD, "hf://evil/model")
    assert refused is not None
    assert (refused.policy, refused.enforcement) == ("warn", "warn")  # the strictest applying
    dev = source_allowed(policies, {"env": "dev"}, "hf://evil/model")
    assert dev is not None and (dev.policy, dev.enforcement) == ("enforce-dev", "enforce")
    assert source_allowed([], PROD, "hf://evil/model") is None


# --- pinned revisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "revision", "field", "pinned"),
    [
        ("hf://Qwen/repo", SHA1, "spec.model.revision", True),
        ("hf://Qwen/repo", None, "spec.model.revision", False),
        ("hf://Qwen/repo", "main", "spec.model.revision", False),
        ("hf://Qwen/repo", "v1.0", "spec.model.revision", False),
        ("hf://Qwen/repo", SHA1.upper(), "spec.model.revision", False),
        ("hf://Qwen/repo", SHA1[:12], "spec.model.revision", False),  # a short sha can clash
        ("hf://Qwen/repo@" + SHA1, None, "spec.model.source", True),
        ("hf://Qwen/repo@main", None, "spec.model.source", False),
        ("hf://Qwen/repo@main", SHA1, "spec.model.revision", True),  # revision wins
        ("oci://ghcr.io/org/model:7b", None, "spec.model.source", False),
        ("oci://ghcr.io/org/model@sha256:" + SHA256, None, "spec.model.source", True),
        ("oci://ghcr.io/org/model:7b", "sha256:" + SHA256, "spec.model.revision", True),
        ("oci://ghcr.io/org/model", "latest", "spec.model.revision", False),
        ("s3://bucket/model", "etags-0123456789abcdef", "spec.model.revision", True),
        ("s3://bucket/model", "versions-0123456789abcdef", "spec.model.revision", True),
        ("s3://bucket/model", "v1", "spec.model.revision", False),
        ("s3://bucket/model", None, "spec.model.revision", False),
        ("gs://bucket/model", "generations-0123456789abcdef", "spec.model.revision", True),
        ("https://h.example/m.gguf", "etags-0123456789abcdef", "spec.model.revision", True),
        ("pvc://claim/model", "mtimes-0123456789abcdef", "spec.model.revision", True),
        ("pvc://claim/model", None, "spec.model.revision", False),
    ],
)
def test_what_counts_as_a_pinned_revision(
    source: str, revision: str | None, field: str, pinned: bool
) -> None:
    md = deployment(source, revision=revision) if revision else deployment(source)
    result = evaluate([policy(requireRevisionPin=True)], {}, md)
    assert rules(result) == ([] if pinned else ["requireRevisionPin"])
    if not pinned:
        (violation,) = result.violations
        assert violation.field == field
        assert violation.allowed  # says what a pin is for this scheme


def test_derived_revisions_have_the_form_the_pin_rule_accepts() -> None:
    files = [ArtifactFile("model.gguf", 10, ref="etag")]
    for kind in ("etags", "versions", "generations", "mtimes"):
        assert re.match(DERIVED_REVISION_PATTERN, derive_revision(kind, files))


def test_a_resolved_revision_that_differs_from_the_pin_is_a_violation() -> None:
    md = deployment(revision=SHA1)
    pin = [policy(requireRevisionPin=True)]
    assert evaluate(pin, {}, md, ResolvedFacts(revision=SHA1)).compliant
    result = evaluate(pin, {}, md, ResolvedFacts(revision="f" * 40))
    assert rules(result) == ["requireRevisionPin"]
    assert "resolved ffff" in result.violations[0].message


def test_the_hf_pin_words_say_what_counts() -> None:
    result = evaluate([policy(requireRevisionPin=True)], {}, deployment(revision="main"))
    assert "40-character lowercase hex commit sha" in result.violations[0].allowed
    assert "main is not a pin" in result.violations[0].message


# --- digests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digests", "facts", "messages"),
    [
        ({}, None, ["no digests are pinned"]),
        ({}, ResolvedFacts(file_digests={"m.gguf": SHA256}), ["no digests are pinned"]),
        ({"m.gguf": SHA256}, None, []),
        ({"m.gguf": SHA256}, ResolvedFacts(file_digests={"m.gguf": SHA256}), []),
        ({"m.gguf": SHA256}, ResolvedFacts(file_digests={"m.gguf": ""}), []),
        (
            {"m-1.gguf": SHA256},
            ResolvedFacts(file_digests={"m-1.gguf": SHA256, "m-2.gguf": ""}),
            ["files served without a pinned digest: m-2.gguf"],
        ),
        (
            {"m.gguf": SHA256},
            ResolvedFacts(file_digests={"m.gguf": "b" * 64}),
            ["pinned digests differ from the source's: m.gguf"],
        ),
        (
            {"m.gguf": SHA256},
            ResolvedFacts(file_digests={f"x{i}": "" for i in range(7)} | {"m.gguf": SHA256}),
            ["files served without a pinned digest: x0, x1, x2, x3, x4 and 2 more"],
        ),
    ],
)
def test_require_digests(
    digests: dict[str, str], facts: ResolvedFacts | None, messages: list[str]
) -> None:
    md = deployment(revision=SHA1, digests=digests) if digests else deployment()
    result = evaluate([policy(requireDigests=True)], {}, md, facts)
    assert [v.message for v in result.violations] == [
        next((v.message for v in result.violations if v.message.startswith(m)), m) for m in messages
    ]
    assert all(v.field == "spec.model.digests" for v in result.violations)


# --- licenses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "spdx"),
    [
        ("apache-2.0", "Apache-2.0"),
        ("Apache-2.0", "Apache-2.0"),
        ("APACHE-2.0", "Apache-2.0"),
        (" mit ", "MIT"),
        ("llama3.1", "LicenseRef-llama3.1"),
        ("llama3.2", "LicenseRef-llama3.2"),
        ("llama2", "LicenseRef-llama2"),
        ("gemma", "LicenseRef-gemma"),
        ("licenseref-gemma", "LicenseRef-gemma"),
        ("cc-by-4.0", "CC-BY-4.0"),
        ("cc-by-nc-4.0", "CC-BY-NC-4.0"),
        ("cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0"),
        ("bsd-3-clause", "BSD-3-Clause"),
        ("gpl-3.0", "GPL-3.0-only"),
        ("agpl-3.0", "AGPL-3.0-only"),
        ("odbl", "ODbL-1.0"),
        ("openrail++", "LicenseRef-openrail-plus-plus"),
        ("bigscience-openrail-m", "LicenseRef-bigscience-openrail-m"),
        ("GPL-3.0-or-later", "GPL-3.0-or-later"),  # already SPDX, not in the Hub's list
        ("LicenseRef-acme-internal", "LicenseRef-acme-internal"),
        ("other", None),
        ("unknown", None),
        ("NOASSERTION", None),
        ("", None),
        (None, None),
    ],
)
def test_license_spellings(spelling: str | None, spdx: str | None) -> None:
    assert spdx_license(spelling) == spdx


def test_the_hub_license_map_is_lower_case_and_its_ids_are_policy_ids() -> None:
    assert all(key == key.lower() for key in HUB_LICENSES)
    assert len(set(HUB_LICENSES.values())) == len(HUB_LICENSES)
    for hub, spdx in HUB_LICENSES.items():
        assert re.fullmatch(LICENSE_PATTERN, spdx), spdx  # a policy can list it
        assert re.fullmatch(LICENSE_PATTERN, hub), hub  # ... or the Hub's spelling
        if spdx.startswith("LicenseRef-") and hub != "openrail++":
            assert spdx == f"LicenseRef-{hub}"
        assert re.fullmatch(r"(LicenseRef-)?[A-Za-z0-9.-]+", spdx), spdx  # SPDX idstring
    assert {"other", "unknown"}.isdisjoint(HUB_LICENSES)


@pytest.mark.parametrize(
    ("expression", "alternatives"),
    [
        ("MIT", [{"mit"}]),
        ("mit", [{"mit"}]),
        ("MIT OR Apache-2.0", [{"mit"}, {"apache-2.0"}]),
        ("MIT AND apache-2.0", [{"mit", "apache-2.0"}]),
        ("(MIT AND BSD-3-Clause) OR Apache-2.0", [{"mit", "bsd-3-clause"}, {"apache-2.0"}]),
        ("MIT AND (Apache-2.0 OR ISC)", [{"mit", "apache-2.0"}, {"mit", "isc"}]),
        ("Apache-2.0 WITH LLVM-exception", [{"apache-2.0 with llvm-exception"}]),
        ("(MIT", [{"(mit"}]),  # does not parse: one id
    ],
)
def test_license_expressions(expression: str, alternatives: list[set[str]]) -> None:
    assert license_alternatives(expression) == [frozenset(a) for a in alternatives]


ALLOW = {"allowedLicenses": ["Apache-2.0", "MIT", "LicenseRef-llama3.1"]}
DENY = {"deniedLicenses": ["CC-BY-NC-4.0", "GPL-3.0-only"]}


@pytest.mark.parametrize(
    ("rules_", "declared", "detected", "violated", "waiting"),
    [
        # Before resolution (no ResolvedFacts): the declared license, else pending.
        (ALLOW, None, None, [], ["allowedLicenses"]),
        (DENY, None, None, [], ["deniedLicenses"]),
        (ALLOW, "apache-2.0", None, [], []),
        (ALLOW, "cc-by-nc-4.0", None, ["allowedLicenses"], []),
        (DENY, "cc-by-nc-4.0", None, ["deniedLicenses"], []),
        # After resolution: the detected license, else the declared one, else a violation.
        (ALLOW, None, "apache-2.0", [], []),
        (ALLOW, None, "llama3.1", [], []),
        (ALLOW, None, "gemma", ["allowedLicenses"], []),
        (ALLOW, None, "", ["allowedLicenses"], []),
        (DENY, None, "", ["deniedLicenses"], []),
        (ALLOW, "Apache-2.0", "other", [], []),  # the declared license fills in
        (ALLOW, "Apache-2.0", "apache-2.0", [], []),
        (ALLOW, "Apache-2.0", "mit", ["allowedLicenses"], []),  # contradiction (MIT allowed)
        (ALLOW, "MIT", "gemma", ["allowedLicenses", "allowedLicenses"], []),
        (DENY, None, "cc-by-nc-4.0", ["deniedLicenses"], []),
        (DENY, None, "mit", [], []),
        (ALLOW | DENY, None, "gpl-3.0", ["allowedLicenses", "deniedLicenses"], []),
        # Expressions: one acceptable alternative suffices.
        (ALLOW, None, "MIT OR GPL-3.0-only", [], []),
        (ALLOW, None, "MIT AND GPL-3.0-only", ["allowedLicenses"], []),
        (DENY, None, "MIT OR GPL-3.0-only", [], []),
        (DENY, None, "MIT AND GPL-3.0-only", ["deniedLicenses"], []),
        (DENY, None, "GPL-3.0-only WITH GCC-exception-3.1", ["deniedLicenses"], []),
    ],
)
def test_license_rules(
    rules_: dict[str, list[str]],
    declared: str | None,
    detected: str | None,
    violated: list[str],
    waiting: list[str],
) -> None:
    annotations = {LICENSE_ANNOTATION: declared} if declared else {}
    facts = None if detected is None else ResolvedFacts(license=detected or None)
    result = evaluate([policy(**rules_)], {}, deployment(annotations=annotations), facts)
    assert rules(result) == violated
    assert pending(result) == waiting


def test_a_declared_license_that_contradicts_the_detected_one_says_both() -> None:
    md = deployment(annotations={LICENSE_ANNOTATION: "Apache-2.0"})
    result = evaluate([policy(**ALLOW)], {}, md, ResolvedFacts(license="mit"))
    (violation,) = result.violations
    assert violation.field == "metadata.annotations['modeldeploy.io/license']"
    assert violation.message == "declares Apache-2.0 but the source declares MIT"


def test_an_unknown_license_after_resolution_asks_for_the_annotation() -> None:
    result = evaluate([policy(**ALLOW)], {}, deployment(), ResolvedFacts())
    (violation,) = result.violations
    assert LICENSE_ANNOTATION in violation.message
    assert violation.allowed == "Apache-2.0, MIT, LicenseRef-llama3.1"


def test_policies_may_list_the_hubs_spellings() -> None:
    hub = policy(allowedLicenses=["apache-2.0", "llama3.1"], deniedLicenses=["cc-by-nc-4.0"])
    for license_, compliant in [
        ("Apache-2.0", True),
        ("LicenseRef-llama3.1", True),
        ("CC-BY-NC-4.0", False),
    ]:
        result = evaluate([hub], {}, deployment(), ResolvedFacts(license=license_))
        assert result.compliant is compliant, license_


def test_a_detected_license_is_reported_on_the_artifact() -> None:
    result = evaluate([policy(**DENY)], {}, deployment(), ResolvedFacts(license="cc-by-nc-4.0"))
    (violation,) = result.violations
    assert violation.field == "status.artifact.license"
    assert violation.message == "license CC-BY-NC-4.0 is denied"
    assert violation.allowed == "any license except CC-BY-NC-4.0, GPL-3.0-only"


# --- annotations -----------------------------------------------------------------------

OWNER = {"key": "modeldeploy.io/owner", "pattern": "^[a-z][-a-z0-9]*$", "description": "a team"}
TICKET = {"key": "example.org/approval", "pattern": r"CHG-\d+"}
CLASS = {"key": "example.org/data-classification"}


@pytest.mark.parametrize(
    ("annotations", "messages"),
    [
        (
            {
                "modeldeploy.io/owner": "ml-platform",
                "example.org/approval": "CHG-42",
                "example.org/data-classification": "internal",
            },
            [],
        ),
        (
            {},
            [
                "the annotation modeldeploy.io/owner is required",
                "the annotation example.org/approval is required",
                "the annotation example.org/data-classification is required",
            ],
        ),
        (
            {
                "modeldeploy.io/owner": "ML Platform",
                "example.org/approval": "CHG-42x",
                "example.org/data-classification": "",
            },
            [
                "'ML Platform' does not match ^[a-z][-a-z0-9]*$",
                "'CHG-42x' does not match CHG-\\d+",
                "the annotation example.org/data-classification is required",
            ],
        ),
    ],
)
def test_required_annotations(annotations: dict[str, str], messages: list[str]) -> None:
    required = policy(requiredAnnotations=[OWNER, TICKET, CLASS])
    result = evaluate([required], {}, deployment(annotations=annotations))
    assert [v.message for v in result.violations] == messages
    assert all(v.rule == "requiredAnnotations" for v in result.violations)
    if messages:
        assert result.violations[0].field == "metadata.annotations['modeldeploy.io/owner']"
        assert result.violations[0].allowed == "a value matching ^[a-z][-a-z0-9]*$ (a team)"


def test_an_annotation_without_pattern_allows_any_non_empty_value() -> None:
    result = evaluate([policy(requiredAnnotations=[CLASS])], {}, deployment())
    assert result.violations[0].allowed == "any non-empty value"


# --- signatures ------------------------------------------------------------------------

TRUSTED = {
    "trustedKeys": [
        {"configMapKeyRef": {"name": "model-keys", "namespace": "security", "key": "cosign.pub"}}
    ]
}
KEY = "configmap/security/model-keys/cosign.pub"
FINGERPRINT = "sha256:" + "c" * 64  # the key's identity, as the fetcher reports a signer
SIGNATURE = {"bundle": "model.sig", "publicKey": {"configMapName": "keys", "key": "cosign.pub"}}


def verified(identity: str | None, **trusted: str) -> ResolvedFacts:
    """Facts after resolution: the signer, and the identities of the keys the operator read."""
    return ResolvedFacts(signature_identity=identity, trusted_key_identities=trusted)


@pytest.mark.parametrize(
    ("signature", "facts", "violated", "waiting", "message"),
    [
        (None, None, ["requireSignature"], [], "no signature"),
        (
            None,
            verified(FINGERPRINT, **{KEY: FINGERPRINT}),
            ["requireSignature"],
            [],
            "no signature",
        ),
        (SIGNATURE, None, [], ["requireSignature"], ""),
        (
            SIGNATURE,
            verified(None, **{KEY: FINGERPRINT}),
            ["requireSignature"],
            [],
            "the signature was not verified",
        ),
        (SIGNATURE, verified(FINGERPRINT, **{KEY: FINGERPRINT}), [], [], ""),
        (
            SIGNATURE,
            verified("sha256:" + "d" * 64, **{KEY: FINGERPRINT}),
            ["requireSignature"],
            [],
            f"signed by sha256:{'d' * 64}, which is none of the trusted keys",
        ),
        (
            SIGNATURE,
            verified(FINGERPRINT),
            ["requireSignature"],
            [],
            f"signed by {FINGERPRINT}, but none of the trusted keys could be read",
        ),
        (  # the identity of a key that is not this policy's does not count
            SIGNATURE,
            verified(FINGERPRINT, **{"secret/other/keys/k": FINGERPRINT}),
            ["requireSignature"],
            [],
            f"signed by {FINGERPRINT}, but none of the trusted keys could be read",
        ),
    ],
)
def test_require_signature(
    signature: dict[str, Any] | None,
    facts: ResolvedFacts | None,
    violated: list[str],
    waiting: list[str],
    message: str,
) -> None:
    md = deployment(signature=signature) if signature else deployment()
    result = evaluate([policy(requireSignature=TRUSTED)], {}, md, facts)
    assert rules(result) == violated
    assert pending(result) == waiting
    if violated:
        (violation,) = result.violations
        assert (violation.field, violation.message) == ("spec.model.signature", message)
        assert violation.allowed == f"spec.model.signature verified by one of {KEY}"


# --- engines and accelerators ----------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "facts", "violated", "field", "waiting"),
    [
        ("llamacpp", None, [], "", []),
        ("vllm", None, ["allowedEngines"], "spec.engine", []),
        ("auto", None, [], "", ["allowedEngines"]),
        ("auto", ResolvedFacts(engine="llamacpp"), [], "", []),
        ("auto", ResolvedFacts(engine="sglang"), ["allowedEngines"], "status.decision.engine", []),
        ("auto", ResolvedFacts(), [], "", ["allowedEngines"]),
    ],
)
def test_allowed_engines(
    engine: str,
    facts: ResolvedFacts | None,
    violated: list[str],
    field: str,
    waiting: list[str],
) -> None:
    md = deployment(spec={"engine": engine})
    result = evaluate([policy(allowedEngines=["llamacpp"])], {}, md, facts)
    assert rules(result) == violated
    assert pending(result) == waiting
    if violated:
        assert result.violations[0].field == field
        assert result.violations[0].allowed == "llamacpp"


@pytest.mark.parametrize(
    ("accelerator", "facts", "violated", "waiting"),
    [
        ("cpu", None, [], []),
        ("gpu", None, ["allowedAccelerators"], []),
        ("auto", None, [], ["allowedAccelerators"]),
        ("auto", ResolvedFacts(accelerator="cpu"), [], []),
        ("auto", ResolvedFacts(accelerator="gpu"), ["allowedAccelerators"], []),
    ],
)
def test_allowed_accelerators(
    accelerator: str, facts: ResolvedFacts | None, violated: list[str], waiting: list[str]
) -> None:
    md = deployment(spec={"hardware": {"accelerator": accelerator}})
    result = evaluate([policy(allowedAccelerators=["cpu"])], {}, md, facts)
    assert rules(result) == violated
    assert pending(result) == waiting
    if violated and accelerator == "auto":
        assert result.violations[0].message == "gpu is not allowed (chosen for auto)"


# --- combinations and strictest-wins ---------------------------------------------------


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ([("enforce", True), ("warn", True), ("audit", True)], "enforce"),
        ([("enforce", False), ("warn", True), ("audit", True)], "warn"),
        ([("enforce", False), ("warn", False), ("audit", True)], "audit"),
        ([("enforce", False), ("warn", False), ("audit", False)], None),
        ([("audit", True), ("audit", True)], "audit"),
        ([("warn", True), ("enforce", False)], "warn"),
    ],
)
def test_the_strictest_violated_policy_decides(
    policies: list[tuple[str, bool]], expected: str | None
) -> None:
    parsed = [
        policy(
            f"p{i}",
            enforcement=enforcement,
            allowedSources=["hf://evil/*" if bad else "hf://Qwen/*"],
        )
        for i, (enforcement, bad) in enumerate(policies)
    ]
    result = evaluate(parsed, {}, deployment())
    assert result.enforcement == expected
    assert result.compliant is (expected is None)
    assert len(result.violations) == sum(bad for _, bad in policies)


def test_strictest_orders_enforce_warn_audit() -> None:
    assert strictest(["audit", "warn"]) == "warn"
    assert strictest(["audit", "enforce", "warn"]) == "enforce"
    assert strictest([]) is None


def test_a_policy_with_every_rule_reports_every_violation_in_spec_order() -> None:
    everything = policy(
        "strict",
        enforcement="warn",
        allowedSources=["s3://models-prod/**"],
        requireRevisionPin=True,
        requireDigests=True,
        allowedLicenses=["Apache-2.0"],
        requiredAnnotations=[OWNER],
        requireSignature=TRUSTED,
        allowedEngines=["vllm"],
        allowedAccelerators=["gpu"],
    )
    md = deployment(spec={"engine": "llamacpp", "hardware": {"accelerator": "cpu"}})
    result = evaluate([everything], {}, md)
    assert rules(result) == [
        "allowedSources",
        "requireRevisionPin",
        "requireDigests",
        "requiredAnnotations",
        "requireSignature",
        "allowedEngines",
        "allowedAccelerators",
    ]
    assert pending(result) == ["allowedLicenses"]
    assert result.pending_rules == ("allowedLicenses",)
    assert {v.enforcement for v in result.violations} == {"warn"}
    assert result.enforcement == "warn"


def test_a_compliant_deployment_after_resolution_has_nothing_pending() -> None:
    production = policy(
        "production",
        namespaceSelector={"matchLabels": {"env": "prod"}},
        allowedSources=["hf://Qwen/*"],
        requireRevisionPin=True,
        requireDigests=True,
        allowedLicenses=["Apache-2.0"],
        requiredAnnotations=[OWNER],
        allowedEngines=["llamacpp"],
        allowedAccelerators=["cpu", "gpu"],
    )
    md = deployment(
        annotations={"modeldeploy.io/owner": "ml-platform"},
        revision=SHA1,
        digests={"m.gguf": SHA256},
    )
    before = evaluate([production], PROD, md)
    assert before.compliant and pending(before) == [
        "allowedLicenses",
        "allowedEngines",
        "allowedAccelerators",
    ]
    facts = ResolvedFacts(
        license="apache-2.0",
        file_digests={"m.gguf": SHA256},
        revision=SHA1,
        engine="llamacpp",
        accelerator="gpu",
    )
    after = evaluate([production], PROD, md, facts)
    assert after == Evaluation(("production",), (), (), None)
    assert after.as_dict() == {
        "compliant": True,
        "enforcement": None,
        "policies": ["production"],
        "violations": [],
        "pending": [],
    }


def test_no_policy_means_compliant() -> None:
    result = evaluate([], PROD, deployment())
    assert result == Evaluation((), (), (), None)


def test_violations_and_pending_rules_as_data() -> None:
    result = evaluate([policy(allowedSources=["hf://x/*"], **ALLOW)], {}, deployment())
    data = result.as_dict()
    assert data["violations"] == [
        {
            "policy": "p",
            "rule": "allowedSources",
            "field": "spec.model.source",
            "message": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF matches none of the allowed patterns",
            "allowed": "hf://x/*",
            "enforcement": "enforce",
        }
    ]
    assert data["pending"][0]["rule"] == "allowedLicenses"
    assert str(result.violations[0]).startswith("p: allowedSources: spec.model.source: ")


# --- facts from a status ---------------------------------------------------------------


def test_resolved_facts_from_a_status() -> None:
    resolution = Resolution(
        source="hf://Qwen/repo",
        revision=SHA1,
        format="gguf",
        quantization="Q4_K_M",
        files=(ArtifactFile("a.gguf", 1, sha256=SHA256), ArtifactFile("config.json", 2)),
        license="apache-2.0",
    )
    status = {
        "artifact": resolution.as_status(),
        "decision": {"engine": "llamacpp", "accelerator": "cpu"},
    }
    assert ResolvedFacts.from_status(status) == ResolvedFacts(
        license="apache-2.0",
        file_digests={"a.gguf": SHA256, "config.json": ""},
        revision=SHA1,
        signature_identity=None,
        engine="llamacpp",
        accelerator="cpu",
    )
    assert ResolvedFacts.from_status(None) is None
    assert ResolvedFacts.from_status({"phase": "Pending"}) is None
