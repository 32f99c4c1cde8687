"""The ModelDeployment API: pydantic models of the custom resource, its defaults and its rules.

This module owns the shape of ``modeldeploy.io/v1alpha1`` ``ModelDeployment`` as the
operator sees it. The hand-written CRD in ``crds/modeldeploy.io_modeldeployments.yaml`` is
the same contract as the API server sees it; ``tests/unit/test_api.py`` proves that the two
agree field by field (names, types, enums, patterns, bounds, defaults, required fields), and
every cross-field rule below has a CEL twin in the CRD with the same meaning.

Pure: no kopf, no kubernetes client, no I/O. Everything is frozen; ``parse_model_deployment``
is the one entry point for untrusted input and turns every validation failure into a single
``SpecError`` that names the field and says what is allowed.

Defaults (identical in the CRD) and why:

- ``serving.contextLength = 4096``, ``serving.maxConcurrentRequests = 4``: the KV cache grows
  with their product, and these values keep a small model inside an ordinary CPU node; users
  who want long contexts or many parallel slots ask for them explicitly.
- ``replicas = 1``; autoscaling off, ``minReplicas 1``, ``maxReplicas 4``,
  ``targetQueueDepth 4``, ``scaleDownDelaySeconds 300``.
- ``cache.enabled = true``, ``cache.size = auto``, ``cache.accessMode = ReadWriteMany`` so that
  replicas share one downloaded copy (docs/fetch.md).
- every ``auto`` (format, quantization, engine, accelerator, gpu count) means "the planner
  decides from the artifact and the cluster's node labels".

``spec.model.signature`` names an OpenSSF model-signing bundle and one trust anchor (a public
key from a Secret or ConfigMap, or a certificate chain from a ConfigMap); the fetcher verifies
the files against it offline before publishing them (``fetch/signature.py``).

Compliance deliberately has no spec field yet: its inputs are the object's
annotations (``modeldeploy.io/owner``, ...) and a cluster-scoped ``ModelPolicy`` that selects
deployments; its output is a ``Compliant`` condition in ``status.conditions``. Because every
model here forbids unknown fields, a future ``spec.policy`` is an additive change.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from modeldeploy import catalog
from modeldeploy.wire import FieldRuleError as _FieldRuleError
from modeldeploy.wire import SpecError as SpecError  # noqa: PLC0414 - api.SpecError stays
from modeldeploy.wire import parse_wire, wire_config

API_GROUP = "modeldeploy.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

SourceScheme = Literal["hf", "s3", "gs", "https", "oci", "pvc"]
SOURCE_SCHEMES: tuple[str, ...] = get_args(SourceScheme)
SOURCE_PATTERN = r"^(hf|s3|gs|https|oci|pvc)://.+$"
HF_SOURCE_PATTERN = r"^hf://[^/]+/[^/]+"

ModelFormat = Literal["auto", "gguf", "safetensors"]
Quantization = Literal[
    "auto",
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q3_K_M",
    "Q3_K_S",
    "Q3_K_L",
    "Q2_K",
    "IQ4_XS",
    "IQ3_M",
    "IQ2_M",
    "AWQ",
    "GPTQ",
    "FP8",
]
QUANTIZATIONS: tuple[str, ...] = get_args(Quantization)
# llama.cpp block quantizations exist only as GGUF files (CEL: matches('^I?Q')).
GGUF_ONLY_QUANTIZATIONS: frozenset[str] = frozenset(
    q for q in QUANTIZATIONS if q.startswith(("Q", "IQ"))
)
# Checkpoint quantizations that exist only as safetensors (served on GPUs only).
SAFETENSORS_ONLY_QUANTIZATIONS: frozenset[str] = frozenset({"AWQ", "GPTQ", "FP8"})

# The CRD's enum; each name is a catalog.Engine with a module in runtimes/.
Engine = Literal["auto", "vllm", "llamacpp", "sglang"]
Accelerator = Literal["auto", "gpu", "cpu"]
AccessMode = Literal["ReadWriteOnce", "ReadWriteMany"]
# native: the operator scrapes the engines and sets the Deployment's replicas; keda and hpa
# render a ScaledObject or a HorizontalPodAutoscaler for a cluster that runs them.
AutoscalingMode = Literal["native", "keda", "hpa"]
TolerationOperator = Literal["Equal", "Exists"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]

# status.phase, a one-word summary; status.conditions carry the detail.
Phase = Literal["Pending", "Fetching", "Deploying", "Ready", "Degraded", "Failed", "Blocked"]
PHASES: tuple[str, ...] = get_args(Phase)

# A positive count: "0" or "0B" would size a model at zero bytes.
PARAMETERS_PATTERN = r"^([1-9][0-9]*(\.[0-9]+)?|0\.[0-9]*[1-9][0-9]*)[KMBT]?$"
SHA256_PATTERN = r"^[a-f0-9]{64}$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Names the Service and the pods' label value, hence a DNS-1035 label of at most 63.
DNS_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# The Kubernetes resource.Quantity pattern (as controller-gen emits it).
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
CACHE_SIZE_PATTERN = r"^(auto|[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?)$"
# A key of a Secret's or ConfigMap's data (the API server's rule for data keys).
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# A signature bundle: a path inside the source (no leading "/"), or a URI of one scheme.
SIGNATURE_BUNDLE_PATTERN = r"^((hf|s3|gs|https|oci|pvc)://.+|[^/].*)$"
_PARENT_SEGMENT = re.compile(r"(^|/)\.\.(/|$)")
# An adapter's OpenAI model name (what clients pass as "model"), as vLLM's --lora-modules
# and llama.cpp's router take it: no spaces, no "=".
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][-._A-Za-z0-9/:]*$"
# Engines keep every adapter resident (vLLM --max-loras, llama.cpp loads all at start).
MAX_ADAPTERS = 16

_PARAMETER_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
_SPECIAL_ALIASES = {"min_memory_gib": "minMemoryGiB"}


def _one_error(message: str) -> WrapValidator:
    """A validator that reports a union's failure as one error with ``message``."""

    def validate(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_value", message) from None

    return WrapValidator(validate)


NonEmptyStr = Annotated[str, Field(min_length=1)]
ObjectName = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
DataKey = Annotated[str, Field(pattern=DATA_KEY_PATTERN, max_length=253)]
Quantity = Annotated[
    Annotated[str, Field(pattern=QUANTITY_PATTERN)] | Annotated[int, Field(ge=0)],
    _one_error("must be a Kubernetes quantity such as 4, 500m or 16Gi"),
]
GpuCount = Annotated[
    Literal["auto"] | Annotated[int, Field(ge=1)],
    _one_error("must be auto or an integer >= 1"),
]


def _alias(name: str) -> str:
    """Return the camelCase wire name of a snake_case attribute."""
    return _SPECIAL_ALIASES.get(name, to_camel(name))


class _ApiModel(BaseModel):
    """Base of every API model: frozen, strict, camelCase on the wire, unknown fields refused."""

    model_config = wire_config(_alias)


def parse_parameter_count(text: str) -> float:
    """Turn a parameter-count hint such as ``7B``, ``270M`` or ``1.5B`` into a number."""
    match = re.fullmatch(PARAMETERS_PATTERN, text)
    if match is None:
        raise ValueError(f"{text!r} is not a parameter count like 270M, 1.5B or 70B")
    suffix = text[-1] if text[-1] in "KMBT" else ""
    number = text[: len(text) - len(suffix)]
    return float(number) * _PARAMETER_SUFFIXES[suffix]


class SignatureKey(_ApiModel):
    """The trusted public key (PEM) of a signature: one key of a Secret or a ConfigMap."""

    secret_name: ObjectName | None = None
    config_map_name: ObjectName | None = None
    key: DataKey

    @model_validator(mode="after")
    def _check_rules(self) -> SignatureKey:
        if (self.secret_name is None) == (self.config_map_name is None):
            raise _FieldRuleError("secretName", "set exactly one of secretName or configMapName")
        return self


class CertificateChain(_ApiModel):
    """The trusted certificate chain (PEM, root last) of a signature: one key of a ConfigMap."""

    config_map_name: ObjectName
    key: DataKey


class ModelSignature(_ApiModel):
    """An OpenSSF model-signing bundle the fetched files must verify against, offline.

    Exactly one trust anchor: an elliptic-curve public key, or a certificate chain. Keyless
    Sigstore verification (an identity and an OIDC issuer) may come later.
    """

    bundle: Annotated[str, Field(pattern=SIGNATURE_BUNDLE_PATTERN, max_length=2048)]
    public_key: SignatureKey | None = None
    certificate_chain: CertificateChain | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> ModelSignature:
        if _PARENT_SEGMENT.search(self.bundle):
            raise _FieldRuleError("bundle", "must not contain '..' path segments")
        if (self.public_key is None) == (self.certificate_chain is None):
            raise _FieldRuleError(
                "publicKey",
                "set exactly one of publicKey or certificateChain (verification is offline; "
                "keyless Sigstore is not supported yet)",
            )
        return self


class ModelSource(_ApiModel):
    """Where the model comes from and which files of it to serve."""

    source: Annotated[str, Field(pattern=SOURCE_PATTERN, max_length=2048)]
    revision: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    parameters: Annotated[str, Field(pattern=PARAMETERS_PATTERN)] | None = None
    format: ModelFormat = "auto"
    quantization: Quantization = "auto"
    files: list[NonEmptyStr] = Field(default_factory=list, max_length=256)
    digests: dict[str, Annotated[str, Field(pattern=SHA256_PATTERN)]] = Field(
        default_factory=dict, max_length=256
    )
    credentials_secret: (
        Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)] | None
    ) = None
    served_name: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    signature: ModelSignature | None = None

    @property
    def scheme(self) -> str:
        """The URI scheme of ``source`` (``hf``, ``s3``, ...)."""
        return self.source.split("://", 1)[0]

    @property
    def parameter_count(self) -> float | None:
        """The ``parameters`` hint as a number, or None when no hint was given."""
        return None if self.parameters is None else parse_parameter_count(self.parameters)

    @model_validator(mode="after")
    def _check_rules(self) -> ModelSource:
        if self.scheme == "hf" and re.match(HF_SOURCE_PATTERN, self.source) is None:
            raise _FieldRuleError(
                "source", "an hf:// source must name a repository: hf://OWNER/NAME"
            )
        if self.digests and self.revision is None:
            raise _FieldRuleError(
                "revision", "required when digests are pinned (a digest pins one revision)"
            )
        if self.format == "gguf" and self.quantization in SAFETENSORS_ONLY_QUANTIZATIONS:
            raise _FieldRuleError(
                "quantization",
                f"{self.quantization} is a safetensors quantization; format gguf allows "
                "F32, F16, BF16 and the Q*/IQ* quantizations",
            )
        if self.format == "safetensors" and self.quantization in GGUF_ONLY_QUANTIZATIONS:
            raise _FieldRuleError(
                "quantization",
                f"{self.quantization} exists only as GGUF; format safetensors allows "
                "auto, F32, F16, BF16, AWQ, GPTQ and FP8",
            )
        return self


class Adapter(_ApiModel):
    """A LoRA adapter served on the base model under its own OpenAI model name.

    Its files are chosen like the model's (``files`` globs, else the one GGUF adapter or a
    PEFT ``adapter_config.json`` with ``adapter_model.safetensors``), fetched and verified by
    the same init container, with ``spec.model.credentialsSecret``'s credentials.
    ``scale`` multiplies the adapter's delta (llama.cpp only; vLLM and SGLang apply
    alpha/r as trained).
    """

    name: Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN, max_length=253)]
    source: Annotated[str, Field(pattern=SOURCE_PATTERN, max_length=2048)]
    revision: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    files: list[NonEmptyStr] = Field(default_factory=list, max_length=16)
    digests: dict[str, Annotated[str, Field(pattern=SHA256_PATTERN)]] = Field(
        default_factory=dict, max_length=16
    )
    scale: Annotated[float, Field(ge=0.01, le=8)] | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> Adapter:
        if self.source.startswith("hf://") and re.match(HF_SOURCE_PATTERN, self.source) is None:
            raise _FieldRuleError(
                "source", "an hf:// source must name a repository: hf://OWNER/NAME"
            )
        if self.digests and self.revision is None:
            raise _FieldRuleError(
                "revision", "required when digests are pinned (a digest pins one revision)"
            )
        return self


class GpuRequest(_ApiModel):
    """What each replica needs from GPUs."""

    count: GpuCount = "auto"
    min_memory_gib: Annotated[int, Field(ge=1)] | None = None
    products: list[NonEmptyStr] = Field(default_factory=list, max_length=32)

    @property
    def is_default(self) -> bool:
        """True when nothing about GPUs was asked for."""
        return self.count == "auto" and self.min_memory_gib is None and not self.products


class Toleration(_ApiModel):
    """A taint the serving pods tolerate (the core/v1 Toleration shape)."""

    key: NonEmptyStr | None = None
    operator: TolerationOperator = "Equal"
    value: str | None = None
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> Toleration:
        if self.key is None and self.operator != "Exists":
            raise _FieldRuleError("operator", "must be Exists when key is empty")
        if self.operator == "Exists" and self.value:
            raise _FieldRuleError("value", "must be empty when operator is Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise _FieldRuleError("tolerationSeconds", "only allowed with effect NoExecute")
        return self


class Hardware(_ApiModel):
    """Where the serving pods may run."""

    accelerator: Accelerator = "auto"
    gpu: GpuRequest = Field(default_factory=GpuRequest)
    node_selector: dict[str, str] = Field(default_factory=dict, max_length=64)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _check_rules(self) -> Hardware:
        if self.accelerator == "cpu" and not self.gpu.is_default:
            raise _FieldRuleError("gpu", "gpu settings are not allowed when accelerator is cpu")
        return self


class EnvVar(_ApiModel):
    """One environment variable for the engine container."""

    name: Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
    value: str = ""


class ResourceOverrides(_ApiModel):
    """Requests and limits that replace the computed ones, key by key."""

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class Serving(_ApiModel):
    """How the engine serves: context, parallelism and passthrough settings."""

    context_length: Annotated[int, Field(ge=128, le=1048576)] = 4096
    max_concurrent_requests: Annotated[int, Field(ge=1, le=1024)] = 4
    args: list[str] = Field(default_factory=list, max_length=256)
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    resources: ResourceOverrides = Field(default_factory=ResourceOverrides)

    @model_validator(mode="after")
    def _check_rules(self) -> Serving:
        names = [variable.name for variable in self.env]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise _FieldRuleError("env", f"duplicate names: {', '.join(duplicates)}")
        return self


class Autoscaling(_ApiModel):
    """Queue-driven autoscaling between minReplicas and maxReplicas (docs/autoscaling.md)."""

    enabled: bool = False
    mode: AutoscalingMode = "native"
    min_replicas: Annotated[int, Field(ge=0)] = 1
    max_replicas: Annotated[int, Field(ge=1)] = 4
    target_queue_depth: Annotated[int, Field(ge=1)] = 4
    scale_down_delay_seconds: Annotated[int, Field(ge=0)] = 300

    @model_validator(mode="after")
    def _check_rules(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise _FieldRuleError("minReplicas", "must be less than or equal to maxReplicas")
        return self


class Cache(_ApiModel):
    """The model cache volume shared by the replicas."""

    enabled: bool = True
    size: Annotated[str, Field(pattern=CACHE_SIZE_PATTERN)] = "auto"
    storage_class_name: NonEmptyStr | None = None
    access_mode: AccessMode = "ReadWriteMany"


class Budget(_ApiModel):
    """What the replicas may cost, in the currency of the operator's prices."""

    max_cost_per_hour: Annotated[float, Field(ge=0.0001, le=1_000_000)] | None = None


class ModelDeploymentSpec(_ApiModel):
    """The desired state: one model served by one engine on one hardware class."""

    model: ModelSource
    engine: Engine = "auto"
    hardware: Hardware = Field(default_factory=Hardware)
    serving: Serving = Field(default_factory=Serving)
    replicas: Annotated[int, Field(ge=0)] = 1
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    cache: Cache = Field(default_factory=Cache)
    budget: Budget = Field(default_factory=Budget)
    adapters: list[Adapter] = Field(default_factory=list, max_length=MAX_ADAPTERS)

    @model_validator(mode="after")
    def _check_rules(self) -> ModelDeploymentSpec:
        quantization = self.model.quantization
        names = [adapter.name for adapter in self.adapters]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise _FieldRuleError("adapters", f"duplicate adapter names: {', '.join(repeated)}")
        if self.engine != "auto":
            _check_engine(
                catalog.Engine(self.engine),
                self.model.format,
                quantization,
                self.hardware.accelerator,
            )
        if self.hardware.accelerator == "cpu" and quantization in SAFETENSORS_ONLY_QUANTIZATIONS:
            gpu_engines = " or ".join(catalog.ENGINES_FOR_FORMAT[catalog.Format.SAFETENSORS])
            raise _FieldRuleError(
                "hardware.accelerator", f"{quantization} is served by {gpu_engines} on GPUs only"
            )
        return self


def _check_engine(engine: catalog.Engine, fmt: str, quantization: str, accelerator: str) -> None:
    """An explicit engine must serve the format, the quantization and the accelerator."""
    formats = [f for f, engines in catalog.ENGINES_FOR_FORMAT.items() if engine in engines]

    def others(fmt_: catalog.Format) -> str:
        return " or ".join(e for e in catalog.ENGINES_FOR_FORMAT[fmt_] if e is not engine)

    if fmt != "auto" and catalog.Format(fmt) not in formats:
        raise _FieldRuleError(
            "engine",
            f"{engine} cannot serve format {fmt} (it serves only "
            f"{', '.join(formats)}); use {others(catalog.Format(fmt))} or auto",
        )
    if quantization != "auto":
        served_as = catalog.quantization_info(quantization).formats
        if not served_as & set(formats):
            kind = next(iter(served_as))
            label = "GGUF" if kind is catalog.Format.GGUF else "safetensors"
            raise _FieldRuleError(
                "engine",
                f"{engine} cannot serve {label} quantization {quantization}; use "
                f"{others(kind)} or auto",
            )
    if (
        accelerator != "auto"
        and catalog.Accelerator(accelerator) not in (catalog.ACCELERATORS_FOR_ENGINE[engine])
    ):
        able = [
            e
            for e, where in catalog.ACCELERATORS_FOR_ENGINE.items()
            if catalog.Accelerator(accelerator) in where
        ]
        raise _FieldRuleError(
            "engine",
            f"{engine} needs a GPU; use {' or '.join(able)} or auto for {accelerator}",
        )


class ModelDeployment(_ApiModel):
    """The whole custom resource as read from the API server or a YAML file."""

    api_version: Literal["modeldeploy.io/v1alpha1"] = "modeldeploy.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_rules(self) -> ModelDeployment:
        name = self.metadata.get("name")
        if name is not None and (
            not isinstance(name, str)
            or len(name) > 63
            or re.fullmatch(DNS_LABEL_PATTERN, name) is None
        ):
            raise _FieldRuleError(
                "metadata.name",
                "must be a DNS-1035 label of at most 63 characters (it names the Service)",
            )
        if any(adapter.name == self.served_name for adapter in self.spec.adapters):
            raise _FieldRuleError(
                "spec.adapters",
                f"an adapter is named {self.served_name!r}, the base model's served name; "
                "give each adapter a name of its own",
            )
        return self

    @property
    def name(self) -> str:
        """``metadata.name`` (empty when absent)."""
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        """``metadata.namespace`` (empty when absent)."""
        return str(self.metadata.get("namespace", ""))

    @property
    def served_name(self) -> str:
        """The OpenAI ``model`` name: ``spec.model.servedName``, else ``metadata.name``."""
        return self.spec.model.served_name or self.name


def parse_model_deployment(obj: object) -> ModelDeployment:
    """Validate a ModelDeployment object (camelCase keys) or raise one SpecError."""
    return parse_wire(
        obj,
        ModelDeployment,
        alias=_alias,
        pattern_message=_pattern_message,
        kind="a ModelDeployment",
    )


def parse_adapter(obj: object) -> Adapter:
    """Validate one ``spec.adapters`` entry (camelCase keys) or raise one SpecError."""
    return parse_wire(
        obj, Adapter, alias=_alias, pattern_message=_pattern_message, kind="an adapter"
    )


def parse_spec(obj: object) -> ModelDeploymentSpec:
    """Validate just a ``spec`` mapping or raise one SpecError with a ``spec.`` path."""
    return parse_wire(
        obj, ModelDeploymentSpec, alias=_alias, pattern_message=_pattern_message, prefix=("spec",)
    )


def _pattern_message(location: tuple[str | int, ...], value: object) -> str:
    """Say in words what a patterned field accepts."""
    field = next((part for part in reversed(location) if isinstance(part, str)), "")
    shown = repr(value)
    if field == "name" and ("adapters" in location or len(location) == 1):
        return (
            f"{shown} must be an OpenAI model name: letters, digits, '-', '_', '.', '/' and ':', "
            "starting with a letter or digit"
        )
    hints = {
        "source": f"{shown} must be a URI with scheme "
        + ", ".join(f"{scheme}://" for scheme in SOURCE_SCHEMES),
        "parameters": f"{shown} must be a parameter count like 270M, 1.5B or 70B",
        "credentialsSecret": f"{shown} must be a Secret name (lowercase DNS subdomain)",
        "size": f"{shown} must be auto or a quantity such as 20Gi",
        "name": f"{shown} must be a C identifier-like environment variable name",
        "bundle": f"{shown} must be a path inside the source (such as model.sig) or a URI with "
        "scheme " + ", ".join(f"{scheme}://" for scheme in SOURCE_SCHEMES),
        "secretName": f"{shown} must be a Secret name (lowercase DNS subdomain)",
        "configMapName": f"{shown} must be a ConfigMap name (lowercase DNS subdomain)",
        "key": f"{shown} must be a data key: letters, digits, '-', '_' and '.'",
    }
    if field in hints:
        return hints[field]
    if len(location) >= 2 and location[-2] == "digests":
        return f"{shown} must be a sha256 digest: 64 lowercase hex characters"
    if len(location) >= 3 and location[-3] in {"requests", "limits"}:
        return f"{shown} must be a Kubernetes quantity such as 4, 500m or 16Gi"
    return f"{shown} does not match the allowed pattern"
