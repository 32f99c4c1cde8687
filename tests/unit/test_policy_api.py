"""Tests of the ModelPolicy API: parsing, validation errors, the CRD, CRD/model parity."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from test_api import compare_model, walk_schema
from test_api import crd as api_crd
from test_api import crd_version as api_crd_version
from test_api import root_schema as api_root_schema

from modeldeploy import catalog
from modeldeploy.api import SpecError
from modeldeploy.policy_api import (
    ENFORCEMENTS,
    ModelPolicy,
    ModelPolicySpec,
    PolicyAccelerator,
    PolicyEngine,
    parse_model_policy,
)

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "modeldeploy.io_modelpolicies.yaml"
EXAMPLES = ROOT / "examples" / "policies"


def crd() -> dict[str, Any]:
    """The ModelPolicy CRD document."""
    return api_crd(CRD_PATH)


def crd_version() -> dict[str, Any]:
    """Its only served version."""
    return api_crd_version(CRD_PATH)


def root_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the ModelPolicy kind."""
    return api_root_schema(CRD_PATH)


def policy(**spec: Any) -> dict[str, Any]:
    """A ModelPolicy object with ``spec``."""
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelPolicy",
        "metadata": {"name": "production"},
        "spec": spec,
    }


# --- parsing ---------------------------------------------------------------------------


def test_an_empty_policy_selects_everything_and_requires_nothing() -> None:
    parsed = parse_model_policy(policy())
    spec = parsed.spec
    assert parsed.name == "production"
    assert spec.namespace_selector.is_empty and spec.enforcement == "enforce"
    assert spec.allowed_sources == [] and spec.allowed_licenses == []
    assert not spec.require_revision_pin and not spec.require_digests
    assert spec.require_signature is None


def test_a_full_policy_round_trips_with_camel_case_keys() -> None:
    obj = policy(
        namespaceSelector={
            "matchLabels": {"env": "prod"},
            "matchExpressions": [{"key": "example.org/tier", "operator": "In", "values": ["a"]}],
        },
        enforcement="warn",
        allowedSources=["hf://Qwen/*", "s3://models-prod/**"],
        requireRevisionPin=True,
        requireDigests=True,
        allowedLicenses=["Apache-2.0", "mit"],
        deniedLicenses=["CC-BY-NC-4.0"],
        requiredAnnotations=[
            {"key": "modeldeploy.io/owner", "pattern": "^[a-z-]+$", "description": "a team"}
        ],
        requireSignature={
            "trustedKeys": [
                {"secretKeyRef": {"name": "keys", "namespace": "security", "key": "cosign.pub"}},
                {"configMapKeyRef": {"name": "ca", "namespace": "security", "key": "ca.pem"}},
            ]
        },
        allowedEngines=["llamacpp", "vllm"],
        allowedAccelerators=["cpu"],
    )
    parsed = parse_model_policy(obj)
    assert parsed.spec.require_signature is not None
    references = [key.reference for key in parsed.spec.require_signature.trusted_keys]
    assert references == ["secret/security/keys/cosign.pub", "configmap/security/ca/ca.pem"]
    dumped = parsed.model_dump(mode="json", exclude_none=True)
    assert dumped["spec"]["namespaceSelector"]["matchLabels"] == {"env": "prod"}
    assert parse_model_policy(dumped) == parsed


def test_annotation_patterns_match_the_whole_value() -> None:
    spec = parse_model_policy(
        policy(requiredAnnotations=[{"key": "a", "pattern": "[a-z]+"}, {"key": "b"}])
    ).spec
    with_pattern, without = spec.required_annotations
    assert with_pattern.matches("team") and not with_pattern.matches("team-1")
    assert without.matches("x") and not without.matches("")


BAD_POLICIES: list[tuple[str, dict[str, Any], str, str]] = [
    ("enforcement", {"enforcement": "block"}, "spec.enforcement", "'enforce'"),
    ("unknown field", {"allowedSource": ["hf://a/*"]}, "spec.allowedSource", "allowedSources"),
    ("source without scheme", {"allowedSources": ["Qwen/*"]}, "spec.allowedSources[0]", "hf://"),
    ("wildcard scheme", {"allowedSources": ["*://x"]}, "spec.allowedSources[0]", "scheme"),
    (
        "duplicate source",
        {"allowedSources": ["hf://a/*", "hf://a/*"]},
        "spec.allowedSources",
        "duplicate",
    ),
    ("license spelling", {"allowedLicenses": ["Apache 2.0"]}, "spec.allowedLicenses[0]", "SPDX"),
    (
        "allowed and denied",
        {"allowedLicenses": ["MIT"], "deniedLicenses": ["MIT"]},
        "spec.deniedLicenses",
        "both allowed and denied",
    ),
    ("engine", {"allowedEngines": ["auto"]}, "spec.allowedEngines[0]", "'vllm'"),
    ("accelerator", {"allowedAccelerators": ["tpu"]}, "spec.allowedAccelerators[0]", "'gpu'"),
    (
        "In without values",
        {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}},
        "spec.namespaceSelector.matchExpressions[0].values",
        "must not be empty when operator is In",
    ),
    (
        "Exists with values",
        {
            "namespaceSelector": {
                "matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]
            }
        },
        "spec.namespaceSelector.matchExpressions[0].values",
        "must be empty when operator is Exists",
    ),
    (
        "selector operator",
        {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "Has"}]}},
        "spec.namespaceSelector.matchExpressions[0].operator",
        "'In'",
    ),
    (
        "label key",
        {"namespaceSelector": {"matchLabels": {"not a key": "x"}}},
        "spec.namespaceSelector.matchLabels",
        "qualified name",
    ),
    (
        "label value",
        {"namespaceSelector": {"matchLabels": {"env": "-prod"}}},
        "spec.namespaceSelector.matchLabels.env",
        "label value",
    ),
    (
        "long prefix",
        {"requiredAnnotations": [{"key": "a" * 254 + "/owner"}]},
        "spec.requiredAnnotations[0].key",
        "at most 253",
    ),
    (
        "bad regex",
        {"requiredAnnotations": [{"key": "owner", "pattern": "("}]},
        "spec.requiredAnnotations[0].pattern",
        "not a regular expression",
    ),
    (
        "duplicate annotation",
        {"requiredAnnotations": [{"key": "owner"}, {"key": "owner"}]},
        "spec.requiredAnnotations",
        "duplicate",
    ),
    (
        "no trusted keys",
        {"requireSignature": {"trustedKeys": []}},
        "spec.requireSignature.trustedKeys",
        "at least 1",
    ),
    (
        "two references",
        {
            "requireSignature": {
                "trustedKeys": [
                    {
                        "secretKeyRef": {"name": "a", "namespace": "b", "key": "c"},
                        "configMapKeyRef": {"name": "a", "namespace": "b", "key": "c"},
                    }
                ]
            }
        },
        "spec.requireSignature.trustedKeys[0]",
        "exactly one of secretKeyRef and configMapKeyRef",
    ),
    (
        "reference without namespace",
        {"requireSignature": {"trustedKeys": [{"secretKeyRef": {"name": "a", "key": "c"}}]}},
        "spec.requireSignature.trustedKeys[0].secretKeyRef.namespace",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field_path", "fragment"),
    [pytest.param(changes, path, frag, id=case) for case, changes, path, frag in BAD_POLICIES],
)
def test_bad_policy_gives_one_spec_error_naming_the_field(
    changes: dict[str, Any], field_path: str, fragment: str
) -> None:
    with pytest.raises(SpecError) as refused:
        parse_model_policy(policy(**copy.deepcopy(changes)))
    assert refused.value.field_path == field_path
    assert fragment in refused.value.message


@pytest.mark.parametrize(
    ("obj", "field_path"),
    [
        ([], ""),
        ({"kind": "ModelPolicy", "metadata": {}}, "spec"),
        ({"kind": "ModelDeployment", "spec": {}}, "kind"),
    ],
)
def test_bad_envelope_gives_spec_error(obj: object, field_path: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_model_policy(obj)
    assert refused.value.field_path == field_path


def test_the_policy_enums_are_the_catalogues_without_auto() -> None:
    assert set(get_args(PolicyEngine)) == {str(engine) for engine in catalog.Engine}
    assert set(get_args(PolicyAccelerator)) == {str(a) for a in catalog.Accelerator}
    assert ENFORCEMENTS == ("enforce", "warn", "audit")


def test_every_example_policy_parses() -> None:
    paths = sorted(EXAMPLES.glob("*.yaml"))
    assert paths
    for path in paths:
        for document in yaml.safe_load_all(path.read_text()):
            if isinstance(document, dict) and document.get("kind") == "ModelPolicy":
                parse_model_policy(document)


# --- the CRD itself --------------------------------------------------------------------


def test_crd_names_and_scope() -> None:
    document = crd()
    assert document["metadata"]["name"] == "modelpolicies.modeldeploy.io"
    spec = document["spec"]
    assert (spec["group"], spec["scope"]) == ("modeldeploy.io", "Cluster")
    assert spec["names"] == {
        "kind": "ModelPolicy",
        "listKind": "ModelPolicyList",
        "plural": "modelpolicies",
        "singular": "modelpolicy",
        "shortNames": ["mpol"],
        "categories": ["modeldeploy"],
    }
    version = crd_version()
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_crd_printer_columns() -> None:
    columns = {
        column["name"]: column["jsonPath"] for column in crd_version()["additionalPrinterColumns"]
    }
    assert columns == {
        "Enforcement": ".spec.enforcement",
        "Namespaces": ".spec.namespaceSelector",
        "Sources": ".spec.allowedSources",
        "Age": ".metadata.creationTimestamp",
    }


def test_every_field_has_a_description_and_every_rule_a_message() -> None:
    assert root_schema()["properties"]["metadata"] == {"type": "object"}
    nodes = walk_schema(root_schema(), "")
    assert [
        path for path, node in nodes if not node.get("description") and path != ".metadata"
    ] == []
    rules = [
        (path, rule) for path, node in nodes for rule in node.get("x-kubernetes-validations", [])
    ]
    assert len(rules) >= 7
    for path, rule in rules:
        assert rule.get("message"), (path, rule["rule"])
        assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path


def test_status_schema_is_observed_generation_and_conditions() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    assert set(status) == {"observedGeneration", "conditions"}
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_crd_spec_schema_and_models_agree() -> None:
    assert compare_model(root_schema()["properties"]["spec"], ModelPolicySpec, "spec") == []


def test_crd_root_and_model_have_the_same_fields() -> None:
    schema = root_schema()
    aliases = {info.alias or name for name, info in ModelPolicy.model_fields.items()}
    assert set(schema["properties"]) == aliases
    required = {info.alias for info in ModelPolicy.model_fields.values() if info.is_required()}
    assert set(schema["required"]) == required


def test_the_parity_check_notices_a_difference() -> None:
    spec_schema = copy.deepcopy(root_schema()["properties"]["spec"])
    spec_schema["properties"]["enforcement"]["default"] = "warn"
    spec_schema["properties"]["allowedEngines"]["items"]["enum"].remove("sglang")
    del spec_schema["properties"]["requireDigests"]
    problems = "\n".join(compare_model(spec_schema, ModelPolicySpec, "spec"))
    for fragment in [
        "spec.enforcement: CRD default",
        "spec.allowedEngines[]: CRD enum",
        "only in ModelPolicySpec ['requireDigests']",
    ]:
        assert fragment in problems
