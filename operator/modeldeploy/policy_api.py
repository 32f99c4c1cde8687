"""The ModelPolicy API: pydantic models of the cluster-scoped compliance policy and its rules.

This module owns the shape of ``modeldeploy.io/v1alpha1`` ``ModelPolicy`` as the operator
sees it. The hand-written CRD in ``crds/modeldeploy.io_modelpolicies.yaml`` is the same
contract as the API server sees it; ``tests/unit/test_policy_api.py`` proves that the two
agree field by field, and every cross-field rule below has a CEL twin in the CRD.

A ModelPolicy selects namespaces (``namespaceSelector``, a metav1.LabelSelector; empty
selects every namespace) and states what a ModelDeployment in them must satisfy: allowed
sources, pinned revisions and digests, licenses, annotations, a verified signature,
engines and accelerators. What the rules mean, and how several policies combine, is
``compliance.py``'s; this module only validates.

Pure: no kopf, no kubernetes client, no I/O. Everything is frozen; ``parse_model_policy``
is the one entry point for untrusted input and turns every validation failure into a single
``api.SpecError`` that names the field and says what is allowed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, Field, model_validator
from pydantic.alias_generators import to_camel

from modeldeploy.api import SOURCE_PATTERN
from modeldeploy.wire import FieldRuleError as _FieldRuleError
from modeldeploy.wire import parse_wire, wire_config

KIND = "ModelPolicy"
PLURAL = "modelpolicies"

# enforce: refused (admission) or blocked (the operator); warn: admitted with a warning;
# audit: only recorded. The order is the strictness order, strictest first.
Enforcement = Literal["enforce", "warn", "audit"]
ENFORCEMENTS: tuple[str, ...] = get_args(Enforcement)
SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]
# The engines and accelerators a policy may allow: api.Engine and api.Accelerator without
# "auto" (tests/unit/test_policy_api.py checks them against the catalogue).
PolicyEngine = Literal["vllm", "llamacpp", "sglang"]
PolicyAccelerator = Literal["gpu", "cpu"]

# A label or annotation key: an optional DNS-subdomain prefix of at most 253 characters
# and "/" (its length is checked by the validators and CEL), then a name of at most 63.
QUALIFIED_NAME_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A key of a Secret's or ConfigMap's data.
CONFIG_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# An SPDX license id or LicenseRef-..., or the Hugging Face Hub's lower-case spelling of one
# (compliance.spdx_license maps those: apache-2.0 -> Apache-2.0, llama3.1 -> LicenseRef-...).
LICENSE_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9.+]*$"

QUALIFIED_NAME_MAX = 317  # a 253-character prefix, "/", a 63-character name
LABEL_VALUE_MAX = 63


_alias = to_camel  # camelCase wire names of snake_case attributes


class _PolicyModel(BaseModel):
    """Base of every policy model: frozen, strict, camelCase on the wire, unknown fields refused."""

    model_config = wire_config(_alias)


def qualified_name_problem(key: str) -> str | None:
    """Why ``key`` is not a label or annotation key, or None when it is one."""
    if re.fullmatch(QUALIFIED_NAME_PATTERN, key) is None or len(key) > QUALIFIED_NAME_MAX:
        return (
            f"{key!r} is not a qualified name such as example.org/owner or tier (a name of "
            "at most 63 characters, optionally after a DNS subdomain prefix and /)"
        )
    if key.find("/") > 253:
        return f"{key!r}: the prefix before / is at most 253 characters"
    return None


LabelKey = Annotated[
    str, Field(min_length=1, max_length=QUALIFIED_NAME_MAX, pattern=QUALIFIED_NAME_PATTERN)
]
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX, pattern=LABEL_VALUE_PATTERN)]
SourcePattern = Annotated[str, Field(pattern=SOURCE_PATTERN, max_length=2048)]
LicenseId = Annotated[str, Field(pattern=LICENSE_PATTERN, max_length=128)]


def _duplicates(values: list[str]) -> list[str]:
    """The values that occur more than once, sorted."""
    return sorted({value for value in values if values.count(value) > 1})


class LabelSelectorRequirement(_PolicyModel):
    """One metav1.LabelSelectorRequirement: a key, an operator and (for In, NotIn) values."""

    key: LabelKey
    operator: SelectorOperator
    values: list[LabelValue] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check_rules(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise _FieldRuleError("values", f"must not be empty when operator is {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise _FieldRuleError("values", f"must be empty when operator is {self.operator}")
        problem = qualified_name_problem(self.key)
        if problem:
            raise _FieldRuleError("key", problem)
        return self


class LabelSelector(_PolicyModel):
    """A metav1.LabelSelector over namespace labels; empty selects every namespace."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=32)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _check_rules(self) -> LabelSelector:
        for key in self.match_labels:
            problem = qualified_name_problem(key)
            if problem:
                raise _FieldRuleError("matchLabels", problem)
        return self

    @property
    def is_empty(self) -> bool:
        """True when the selector selects every namespace."""
        return not self.match_labels and not self.match_expressions


class AnnotationRequirement(_PolicyModel):
    """An annotation every selected ModelDeployment must carry, with a value matching pattern."""

    key: LabelKey
    pattern: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    description: Annotated[str, Field(min_length=1, max_length=1024)] | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> AnnotationRequirement:
        problem = qualified_name_problem(self.key)
        if problem:
            raise _FieldRuleError("key", problem)
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as error:
                raise _FieldRuleError("pattern", f"not a regular expression: {error}") from None
        return self

    def matches(self, value: str) -> bool:
        """True when ``value`` is allowed: non-empty, and wholly matching ``pattern`` if set."""
        if self.pattern is None:
            return value != ""
        return re.fullmatch(self.pattern, value) is not None


class KeyReference(_PolicyModel):
    """One key of a Secret or ConfigMap in a named namespace (the policy is cluster-scoped)."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=CONFIG_KEY_PATTERN)]


class TrustedKey(_PolicyModel):
    """A PEM public key or certificate chain, held in exactly one of a Secret or a ConfigMap."""

    secret_key_ref: KeyReference | None = None
    config_map_key_ref: KeyReference | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> TrustedKey:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise _FieldRuleError("", "set exactly one of secretKeyRef and configMapKeyRef")
        return self

    @property
    def reference(self) -> str:
        """``secret/NAMESPACE/NAME/KEY`` or ``configmap/...``: this key's name in the facts."""
        if self.secret_key_ref is not None:
            kind, ref = "secret", self.secret_key_ref
        else:
            assert self.config_map_key_ref is not None
            kind, ref = "configmap", self.config_map_key_ref
        return f"{kind}/{ref.namespace}/{ref.name}/{ref.key}"


class SignatureRequirement(_PolicyModel):
    """spec.model.signature must be present and verified by one of the trusted keys."""

    trusted_keys: list[TrustedKey] = Field(min_length=1, max_length=16)


class ModelPolicySpec(_PolicyModel):
    """What every ModelDeployment in the selected namespaces must satisfy."""

    namespace_selector: LabelSelector = Field(default_factory=LabelSelector)
    enforcement: Enforcement = "enforce"
    allowed_sources: list[SourcePattern] = Field(default_factory=list, max_length=64)
    require_revision_pin: bool = False
    require_digests: bool = False
    allowed_licenses: list[LicenseId] = Field(default_factory=list, max_length=64)
    denied_licenses: list[LicenseId] = Field(default_factory=list, max_length=64)
    required_annotations: list[AnnotationRequirement] = Field(default_factory=list, max_length=32)
    require_signature: SignatureRequirement | None = None
    allowed_engines: list[PolicyEngine] = Field(default_factory=list, max_length=3)
    allowed_accelerators: list[PolicyAccelerator] = Field(default_factory=list, max_length=2)

    @model_validator(mode="after")
    def _check_rules(self) -> ModelPolicySpec:
        lists: dict[str, list[str]] = {
            "allowedSources": self.allowed_sources,
            "allowedLicenses": self.allowed_licenses,
            "deniedLicenses": self.denied_licenses,
            "allowedEngines": list(self.allowed_engines),
            "allowedAccelerators": list(self.allowed_accelerators),
            "requiredAnnotations": [a.key for a in self.required_annotations],
        }
        for name, values in lists.items():
            duplicates = _duplicates(values)
            if duplicates:
                raise _FieldRuleError(name, f"duplicate entries: {', '.join(duplicates)}")
        both = sorted(set(self.allowed_licenses) & set(self.denied_licenses))
        if both:
            raise _FieldRuleError(
                "deniedLicenses", f"{', '.join(both)} cannot be both allowed and denied"
            )
        return self


class ModelPolicy(_PolicyModel):
    """The whole cluster-scoped custom resource as read from the API server or a YAML file."""

    api_version: Literal["modeldeploy.io/v1alpha1"] = "modeldeploy.io/v1alpha1"
    kind: Literal["ModelPolicy"] = "ModelPolicy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelPolicySpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """``metadata.name`` (empty when absent)."""
        return str(self.metadata.get("name", ""))


def parse_model_policy(obj: object) -> ModelPolicy:
    """Validate a ModelPolicy object (camelCase keys) or raise one api.SpecError."""
    return parse_wire(
        obj, ModelPolicy, alias=_alias, pattern_message=_pattern_message, kind="a ModelPolicy"
    )


def _pattern_message(location: tuple[str | int, ...], value: object) -> str:
    """Say in words what a patterned field accepts."""
    field = next((part for part in reversed(location) if isinstance(part, str)), "")
    shown = repr(value)
    hints = {
        "allowedSources": f"{shown} must be a glob over a source URI that starts with its "
        "scheme: hf://, s3://, gs://, https://, oci:// or pvc://",
        "allowedLicenses": f"{shown} must be an SPDX license id such as Apache-2.0",
        "deniedLicenses": f"{shown} must be an SPDX license id such as CC-BY-NC-4.0",
        "key": f"{shown} must be a qualified name such as example.org/owner",
        "name": f"{shown} must be an object name (lowercase DNS subdomain)",
        "namespace": f"{shown} must be a namespace name (lowercase DNS label)",
    }
    if field in hints:
        return hints[field]
    if "matchLabels" in location or field == "values":
        return f"{shown} must be a label value: at most 63 alphanumerics, '-', '_' or '.'"
    return f"{shown} does not match the allowed pattern"
