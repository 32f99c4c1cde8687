"""The ML-BOM of a ModelDeployment: a CycloneDX 1.6 JSON document of what it serves.

This module owns the BOM's content. The BOM describes the ModelDeployment (its
``metadata.component``) and what it depends on: the model (a ``machine-learning-model``
component named by the served name, versioned by the resolved revision, with every file's
SHA-256, the license, the source and model card as external references and the format,
quantization, engine and parameter count as properties, the files as nested ``file``
components), each LoRA adapter of ``spec.adapters`` (a ``machine-learning-model`` of its
own, named by the name it is served under, versioned by its resolved revision, with its
files' SHA-256 and what its metadata says, depending on the base model), the runtime image
(a ``container``) and the operator (whose image fetches and verifies the model and the
adapters in every pod).

Deterministic: the same inputs give the same bytes. The timestamp is an input (left out
when not given) and the serial number is derived from the ModelDeployment's uid and the
rest of the document (a UUID 5), so an unchanged world renders an unchanged ConfigMap and
an idle operator writes nothing. ``render/bom.py`` turns it into that ConfigMap. Being a
function of its inputs, a document is built once per distinct inputs (``BOM_CACHE_SIZE``
of them are kept): every reconcile pass renders the BOM, and the CycloneDX object model
and serializer cost more CPU than the rest of a pass together.

Pure: it uses the ``cyclonedx-python-lib`` object model and serializer, no I/O. The
CycloneDX ``modelCard`` object, which the library does not model, is added to the JSON.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.exception.model import InvalidUriException
from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from packageurl import PackageURL

from modeldeploy.adapters import ResolvedAdapter
from modeldeploy.api import ModelDeployment
from modeldeploy.fetch.uri import SourceURIError, parse_source
from modeldeploy.provenance import Provenance, files_digest
from modeldeploy.resolution import AdapterFacts, ArtifactFile, Resolution
from modeldeploy.sizing import ModelArchitecture

SPEC_VERSION = "1.6"
PROPERTY_PREFIX = "modeldeploy:"
OPERATOR_NAME = "modeldeploy"
OPERATOR_REF = "modeldeploy-operator"
# The namespace of the serial numbers' UUID 5 (a UUID 5 of the project's URL).
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://modeldeploy.io/ml-bom")
HUB = "https://huggingface.co"
_TOP_LEVEL_ORDER = ("$schema", "bomFormat", "specVersion", "serialNumber", "version", "metadata")
# Documents kept by their inputs: about 3.5 KiB each, one or two per ModelDeployment.
BOM_CACHE_SIZE = 2048


@dataclass(frozen=True)
class RuntimeFacts:
    """What serves the model: the engine, its image, the accelerator and the sizing count.

    ``render.bom.runtime_facts`` builds it from a ``Placement``; ``parameters`` None takes
    the count the artifact states (``Resolution.architecture``).
    """

    engine: str
    image: str
    accelerator: str | None = None
    parameters: int | None = None
    operator_image: str | None = None


@dataclass(frozen=True)
class _AdapterSubject:
    """What the BOM reads of one resolved adapter (its facts are left out of a Resolution's
    equality, so they are a field of their own here)."""

    name: str
    scale: float | None
    resolution: Resolution
    facts: AdapterFacts

    @classmethod
    def of(cls, adapter: ResolvedAdapter) -> _AdapterSubject:
        return cls(adapter.name, adapter.scale, adapter.resolution, adapter.facts)


@dataclass(frozen=True)
class _Subject:
    """What the BOM reads of the ModelDeployment (hashable, unlike the API model)."""

    name: str
    namespace: str
    uid: str | None
    served_name: str
    format: str
    quantization: str | None

    @classmethod
    def of(cls, md: ModelDeployment) -> _Subject:
        model = md.spec.model
        uid = md.metadata.get("uid")
        return cls(
            md.name,
            md.namespace,
            str(uid) if uid else None,
            md.served_name,
            str(model.format),
            str(model.quantization) if model.quantization is not None else None,
        )


def model_ref(provenance: Provenance) -> str:
    """The model component's bom-ref: its package URL for the Hub, else SOURCE@REVISION."""
    purl = model_purl(provenance)
    if purl is not None:
        return purl.to_string()
    return f"{provenance.source}@{provenance.revision or 'unresolved'}"


def model_purl(provenance: Provenance) -> PackageURL | None:
    """``pkg:huggingface/OWNER/NAME@REVISION`` for an ``hf://`` source, else None."""
    try:
        uri = parse_source(provenance.source)
    except SourceURIError:
        return None
    if uri.scheme != "hf":
        return None
    owner, name = uri.authority.split("/", 1)
    qualifiers = {"subpath": uri.path} if uri.path else {}
    revision = provenance.revision.lower() if provenance.revision else None
    return PackageURL("huggingface", owner, name, revision, qualifiers or None)


def build_bom(
    md: ModelDeployment,
    resolution: Resolution | None,
    runtime: RuntimeFacts,
    provenance: Provenance,
    *,
    adapters: Iterable[ResolvedAdapter] = (),
    timestamp: str | datetime.datetime | None = None,
) -> str:
    """The CycloneDX 1.6 JSON ML-BOM of ``md`` as resolved (indented, ends with a newline)."""
    # A Resolution's equality leaves its architecture out; the model card reads it.
    architecture = resolution.architecture if resolution else None
    return _document(
        _Subject.of(md),
        resolution,
        architecture=architecture,
        adapters=tuple(_AdapterSubject.of(adapter) for adapter in adapters),
        runtime=runtime,
        provenance=provenance,
        timestamp=_timestamp(timestamp),
    )


@functools.lru_cache(maxsize=BOM_CACHE_SIZE)
def _document(
    subject: _Subject,
    resolution: Resolution | None,
    *,
    architecture: ModelArchitecture | None,
    adapters: tuple[_AdapterSubject, ...],
    runtime: RuntimeFacts,
    provenance: Provenance,
    timestamp: datetime.datetime | None,
) -> str:
    model = _model_component(subject, resolution, architecture, runtime, provenance)
    loras = [_adapter_component(adapter, model, runtime) for adapter in adapters]
    image = _runtime_component(runtime)
    operator = _operator_component(runtime, provenance)
    deployment = _deployment_component(subject, provenance)
    metadata = BomMetaData(component=deployment, timestamp=timestamp)
    if timestamp is None:
        metadata.timestamp = None  # type: ignore[assignment]
    bom = Bom(
        serial_number=uuid.UUID(int=0),  # replaced below, from the content
        metadata=metadata,
        components=[model, *loras, image, operator],
    )
    bom.register_dependency(deployment, [model, *loras, image, operator])
    for lora in loras:
        bom.register_dependency(lora, [model])
    document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    for component in document.get("components", []):
        if component.get("bom-ref") == str(model.bom_ref):
            component["modelCard"] = _model_card(architecture)
    document.pop("serialNumber", None)
    content = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    uid = subject.uid or f"{subject.namespace}/{subject.name}"
    serial = uuid.uuid5(SERIAL_NAMESPACE, f"{uid}\n{hashlib.sha256(content.encode()).hexdigest()}")
    document["serialNumber"] = serial.urn
    ordered = {key: document[key] for key in _TOP_LEVEL_ORDER if key in document}
    ordered.update((key, value) for key, value in document.items() if key not in ordered)
    return json.dumps(ordered, indent=2, ensure_ascii=False) + "\n"


def _timestamp(value: str | datetime.datetime | None) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        moment = value
    else:
        moment = datetime.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def _property(name: str, value: object) -> Property:
    return Property(name=f"{PROPERTY_PREFIX}{name}", value=str(value))


def _properties(pairs: Iterable[tuple[str, object]]) -> list[Property]:
    return [_property(name, value) for name, value in pairs if value is not None]


def _uri(text: str) -> XsUri | None:
    try:
        return XsUri(text)
    except InvalidUriException:
        return None


def _external_references(provenance: Provenance) -> list[ExternalReference]:
    """The source (distribution) and, for the Hub, its model card page."""
    links: list[tuple[ExternalReferenceType, str]] = []
    try:
        uri = parse_source(provenance.source)
    except SourceURIError:
        uri = None
    if uri is not None and uri.scheme == "hf":
        links.append((ExternalReferenceType.MODEL_CARD, f"{HUB}/{uri.authority}"))
        tree = f"{HUB}/{uri.authority}/tree/{provenance.revision or 'main'}"
        tree += f"/{uri.path}" if uri.path else ""
        links.append((ExternalReferenceType.DISTRIBUTION, tree))
    else:
        links.append((ExternalReferenceType.DISTRIBUTION, provenance.source))
    references = []
    for kind, text in links:
        url = _uri(text)
        if url is not None:
            references.append(ExternalReference(type=kind, url=url))
    return references


def _model_component(
    subject: _Subject,
    resolution: Resolution | None,
    architecture: ModelArchitecture | None,
    runtime: RuntimeFacts,
    provenance: Provenance,
) -> Component:
    ref = model_ref(provenance)
    files = resolution.files if resolution else ()
    parameters = runtime.parameters
    if parameters is None and architecture is not None:
        parameters = architecture.parameters
    fmt = resolution.format if resolution else subject.format
    quantization = resolution.quantization if resolution else subject.quantization
    licenses = [LicenseFactory().make_from_string(provenance.license)] if provenance.license else []
    return _ml_component(
        subject.served_name,
        ref,
        provenance,
        files,
        description=f"{fmt} {quantization} weights, served by {runtime.engine}",
        facts=[
            ("format", fmt),
            ("quantization", quantization),
            ("engine", runtime.engine),
            ("parameters", parameters),
            ("total-bytes", resolution.total_bytes if resolution else None),
        ],
        licenses=licenses,
    )


def _ml_component(
    name: str,
    ref: str,
    provenance: Provenance,
    files: Iterable[ArtifactFile],
    *,
    description: str,
    facts: Iterable[tuple[str, object]],
    licenses: Iterable[Any] = (),
) -> Component:
    """A ``machine-learning-model`` at its revision: package URL, digests, source, files."""
    files = tuple(files)
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=name,
        version=provenance.revision,
        bom_ref=ref,
        purl=model_purl(provenance),
        description=description,
        hashes=_sha256s(files),
        licenses=licenses,
        external_references=_external_references(provenance),
        properties=_properties(
            [
                ("source", provenance.source),
                ("revision", provenance.revision),
                ("files-digest", provenance.files_digest),
                *facts,
            ]
        ),
        components=_file_components(ref, files),
    )


def _file_components(ref: str, files: Iterable[ArtifactFile]) -> list[Component]:
    """Each file as a nested ``file`` component with its SHA-256 and size."""
    return [
        Component(
            type=ComponentType.FILE,
            name=f.name,
            bom_ref=f"{ref}#{f.name}",
            hashes=_sha256s([f]),
            properties=_properties([("size-bytes", f.size)]),
        )
        for f in files
    ]


def _sha256s(files: Iterable[ArtifactFile]) -> list[HashType]:
    """The files' known SHA-256 digests."""
    return [HashType(alg=HashAlgorithm.SHA_256, content=f.sha256) for f in files if f.sha256]


def _adapter_component(
    adapter: _AdapterSubject, model: Component, runtime: RuntimeFacts
) -> Component:
    """A LoRA adapter: its files and digests, what its metadata says, the base it needs."""
    resolution, facts = adapter.resolution, adapter.facts
    # Adapter names are unique and differ from the served name, so the ref is unique even
    # when the adapter lives in the base model's repository.
    ref = f"adapter:{adapter.name}"
    provenance = Provenance(resolution.source, resolution.revision, files_digest(resolution.files))
    return _ml_component(
        adapter.name,
        ref,
        provenance,
        resolution.files,
        description=f"{facts.format} LoRA adapter of {model.name}, served by {runtime.engine}",
        facts=[
            ("format", facts.format),
            ("adapter-kind", facts.kind),
            ("architecture", facts.architecture),
            ("lora-rank", facts.rank),
            ("lora-alpha", facts.alpha),
            ("scale", adapter.scale),
            ("base-model", model.bom_ref.value),
            ("total-bytes", resolution.total_bytes),
        ],
    )


def _model_card(architecture: ModelArchitecture | None) -> dict[str, Any]:
    """The CycloneDX modelCard: a text-generation model, and what its artifact states."""
    parameters: dict[str, Any] = {"task": "text-generation"}
    if architecture is not None and architecture.architecture:
        parameters["architectureFamily"] = architecture.architecture
    parameters["inputs"] = [{"format": "text"}]
    parameters["outputs"] = [{"format": "text"}]
    card: dict[str, Any] = {"modelParameters": parameters}
    if architecture is not None:
        facts = [
            ("layers", architecture.layers),
            ("hidden-size", architecture.hidden_size),
            ("vocab-size", architecture.vocab_size),
            ("trained-context-length", architecture.context_length),
        ]
        properties = [
            {"name": f"{PROPERTY_PREFIX}{name}", "value": str(value)}
            for name, value in facts
            if value is not None
        ]
        if properties:
            card["properties"] = properties
    return card


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """An image reference as (repository, tag, digest): ``REPO[:TAG][@DIGEST]``."""
    repository, _, digest = image.partition("@")
    tag = None
    slash = repository.rfind("/")
    colon = repository.rfind(":")
    if colon > slash:
        repository, tag = repository[:colon], repository[colon + 1 :]
    return repository, tag, digest or None


def _image_purl(image: str) -> PackageURL:
    repository, tag, digest = split_image(image)
    qualifiers = {"repository_url": repository} | ({"tag": tag} if tag else {})
    return PackageURL("oci", None, repository.rsplit("/", 1)[-1], digest, qualifiers)


def _runtime_component(runtime: RuntimeFacts) -> Component:
    repository, tag, digest = split_image(runtime.image)
    return Component(
        type=ComponentType.CONTAINER,
        name=repository,
        version=digest or tag,
        bom_ref=f"runtime:{runtime.image}",
        purl=_image_purl(runtime.image),
        description=f"the {runtime.engine} runtime image",
        properties=_properties(
            [
                ("engine", runtime.engine),
                ("accelerator", runtime.accelerator),
                ("image", runtime.image),
            ]
        ),
    )


def _operator_component(runtime: RuntimeFacts, provenance: Provenance) -> Component:
    return Component(
        type=ComponentType.APPLICATION,
        name=OPERATOR_NAME,
        version=provenance.operator_version,
        bom_ref=OPERATOR_REF,
        description=(
            "the modeldeploy operator; its image's fetcher downloads and verifies the "
            "model in every pod"
        ),
        properties=_properties([("image", runtime.operator_image)]),
    )


def _deployment_component(subject: _Subject, provenance: Provenance) -> Component:
    policy = provenance.policy
    namespace, name = subject.namespace, subject.name
    return Component(
        type=ComponentType.APPLICATION,
        name=name or subject.served_name,
        group=namespace or None,
        bom_ref=f"modeldeployment:{namespace}/{name}",
        description=f"ModelDeployment {namespace + '/' if namespace else ''}{name}",
        properties=_properties(
            [
                ("served-name", subject.served_name),
                ("policy", policy.name if policy else None),
                ("policy-generation", policy.generation if policy else None),
                ("signature-identity", provenance.signature_identity),
            ]
        ),
    )
