"""The ModelPolicy CRD on a real API server: install, explain, defaults, examples, refusals.

Each refusal case is also fed to the pydantic models, which must refuse it naming the same
field: the evidence that the CRD's schema and CEL rules and policy_api's validators agree.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from e2e.harness import POLICY_CRD_NAME, ClusterHandle
from kubernetes import client

from modeldeploy.api import SpecError
from modeldeploy.policy_api import parse_model_policy

if TYPE_CHECKING:
    from conftest import ClusterPolicies  # the fixture's class (tests/e2e/conftest.py)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "policies").glob("*.yaml"))
# Selects no namespace: these policies must not judge other tests' ModelDeployments.
NOWHERE = {"matchLabels": {"modeldeploy.io/e2e-policy-crd": "nowhere"}}


def model_policy(name: str, **spec: Any) -> dict[str, Any]:
    """A ModelPolicy named ``name`` that selects no namespace unless ``spec`` says otherwise."""
    spec.setdefault("namespaceSelector", NOWHERE)
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }


def read(cluster: ClusterHandle, name: str) -> dict[str, Any]:
    """The stored policy as JSON."""
    result = cluster.kubectl("get", "modelpolicy", name, "-o", "json")
    stored: dict[str, Any] = json.loads(result.stdout)
    return stored


def explain(cluster: ClusterHandle, field: str) -> str:
    """``kubectl explain FIELD``'s output (asserting that it worked)."""
    result = cluster.kubectl("explain", field, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_crd_is_established_cluster_scoped_and_answers_to_mpol(
    crd_cluster: ClusterHandle,
) -> None:
    extensions = client.ApiextensionsV1Api(crd_cluster.api_client())
    crd = extensions.read_custom_resource_definition(POLICY_CRD_NAME)
    assert crd.spec.scope == "Cluster"
    listed = crd_cluster.kubectl("get", "mpol", check=False)
    assert listed.returncode == 0, listed.stderr
    category = crd_cluster.kubectl("get", "modeldeploy", "-A", check=False)
    assert category.returncode == 0, category.stderr


def test_explain_teaches_the_policy_fields(crd_cluster: ClusterHandle) -> None:
    spec = explain(crd_cluster, "mpol.spec")
    for field in [
        "namespaceSelector",
        "enforcement",
        "allowedSources",
        "requireRevisionPin",
        "requireDigests",
        "allowedLicenses",
        "deniedLicenses",
        "requiredAnnotations",
        "requireSignature",
        "allowedEngines",
        "allowedAccelerators",
    ]:
        assert field in spec
    assert "40-character" in explain(crd_cluster, "mpol.spec.requireRevisionPin")
    assert "LicenseRef-llama3.1" in explain(crd_cluster, "modelpolicy.spec.allowedLicenses")
    assert "secretKeyRef" in explain(crd_cluster, "mpol.spec.requireSignature.trustedKeys")


def test_server_defaults_equal_the_model_defaults(
    crd_cluster: ClusterHandle, model_policies: ClusterPolicies
) -> None:
    name = model_policies.name("minimal")
    minimal = model_policy(name)
    created = model_policies.create(minimal)
    assert created.returncode == 0, created.stderr
    stored = read(crd_cluster, name)
    expected = parse_model_policy(minimal).spec.model_dump(mode="json", exclude_none=True)
    assert stored["spec"] == expected
    assert parse_model_policy(stored).spec == parse_model_policy(minimal).spec


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_every_example_policy_is_accepted_as_the_models_read_it(
    crd_cluster: ClusterHandle, model_policies: ClusterPolicies, example: Path
) -> None:
    for document in yaml.safe_load_all(example.read_text()):
        document["metadata"]["name"] = model_policies.name(document["metadata"]["name"])
        document["spec"]["namespaceSelector"] = NOWHERE
        created = model_policies.create(document)
        assert created.returncode == 0, created.stderr
        stored = read(crd_cluster, document["metadata"]["name"])
        assert parse_model_policy(stored).spec == parse_model_policy(document).spec


def test_printer_columns_and_the_status_subresource(
    crd_cluster: ClusterHandle, model_policies: ClusterPolicies
) -> None:
    name = model_policies.name("columns")
    obj = model_policy(name, enforcement="warn", allowedSources=["hf://Qwen/*"])
    obj["status"] = {"observedGeneration": 7}
    created = model_policies.create(obj)
    assert created.returncode == 0, created.stderr
    assert "status" not in read(crd_cluster, name)
    table = crd_cluster.kubectl("get", "mpol", name).stdout
    assert "ENFORCEMENT" in table and "NAMESPACES" in table and "warn" in table
    assert "e2e-policy-crd" in table  # the selector, summarised
    wide = crd_cluster.kubectl("get", "mpol", name, "-o", "wide").stdout
    assert "SOURCES" in wide and "hf://Qwen/*" in wide
    status = {
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Accepted",
                "status": "True",
                "observedGeneration": 1,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "reason": "Valid",
                "message": "the policy is valid",
            }
        ],
    }
    custom = client.CustomObjectsApi(crd_cluster.api_client())
    custom.patch_cluster_custom_object_status(
        "modeldeploy.io", "v1alpha1", "modelpolicies", name, {"status": status}
    )
    assert read(crd_cluster, name)["status"] == status


# (case id, spec changes, message fragment from the API server); the pydantic models must
# refuse the same object with a SpecError whose field path the server's error also names.
REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("enforcement enum", {"enforcement": "block"}, 'supported values: "enforce", "warn", "audit"'),
    ("unknown field", {"allowedSource": ["hf://a/*"]}, 'unknown field "spec.allowedSource"'),
    (
        "source without scheme",
        {"allowedSources": ["Qwen/*"]},
        "a source pattern starts with its scheme",
    ),
    ("duplicate source", {"allowedSources": ["hf://a/*", "hf://a/*"]}, "Duplicate value"),
    ("license spelling", {"allowedLicenses": ["Apache 2.0"]}, "should match"),
    (
        "allowed and denied",
        {"allowedLicenses": ["MIT"], "deniedLicenses": ["MIT"]},
        "a license cannot be both allowed and denied",
    ),
    ("engine enum", {"allowedEngines": ["auto"]}, 'supported values: "vllm", "llamacpp"'),
    ("accelerator enum", {"allowedAccelerators": ["tpu"]}, 'supported values: "gpu", "cpu"'),
    (
        "In without values",
        {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}},
        "values must not be empty when operator is In or NotIn",
    ),
    (
        "Exists with values",
        {
            "namespaceSelector": {
                "matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]
            }
        },
        "values must be empty when operator is Exists or DoesNotExist",
    ),
    (
        "selector operator",
        {"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "Has"}]}},
        'supported values: "In", "NotIn", "Exists", "DoesNotExist"',
    ),
    (
        "label key",
        {"namespaceSelector": {"matchLabels": {"not a key": "x"}}},
        "matchLabels keys must be label keys",
    ),
    ("label value", {"namespaceSelector": {"matchLabels": {"env": "-prod"}}}, "should match"),
    (
        "long prefix",
        {"requiredAnnotations": [{"key": "a" * 254 + "/owner"}]},
        "the prefix before / is at most 253 characters",
    ),
    (
        "duplicate annotation",
        {"requiredAnnotations": [{"key": "owner"}, {"key": "owner"}]},
        "Duplicate value",
    ),
    ("no trusted keys", {"requireSignature": {"trustedKeys": []}}, "at least 1 items"),
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
        "set exactly one of secretKeyRef and configMapKeyRef",
    ),
    (
        "reference without namespace",
        {"requireSignature": {"trustedKeys": [{"secretKeyRef": {"name": "a", "key": "c"}}]}},
        "Required value",
    ),
]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [pytest.param(changes, fragment, id=case) for case, changes, fragment in REFUSALS],
)
def test_bad_policies_are_refused_by_server_and_models_alike(
    model_policies: ClusterPolicies, changes: dict[str, Any], fragment: str
) -> None:
    obj = model_policy(model_policies.name("bad"), **copy.deepcopy(changes))
    with pytest.raises(SpecError) as refused:
        parse_model_policy(obj)
    created = model_policies.create(obj)
    assert created.returncode != 0, f"the API server accepted {changes}"
    assert fragment in created.stderr
    assert refused.value.field_path in created.stderr


def test_a_policy_without_spec_is_refused(model_policies: ClusterPolicies) -> None:
    obj = model_policy(model_policies.name("empty"))
    del obj["spec"]
    with pytest.raises(SpecError, match=r"^spec: required"):
        parse_model_policy(obj)
    created = model_policies.create(obj)
    assert created.returncode != 0
    assert "spec: Required value" in created.stderr


def test_an_invalid_annotation_regex_is_left_to_the_operator(
    model_policies: ClusterPolicies,
) -> None:
    # CEL cannot tell a valid regular expression: the server stores it, the models refuse it.
    obj = model_policy(
        model_policies.name("regex"), requiredAnnotations=[{"key": "o", "pattern": "("}]
    )
    with pytest.raises(SpecError, match="not a regular expression"):
        parse_model_policy(obj)
    created = model_policies.create(obj)
    assert created.returncode == 0, created.stderr
