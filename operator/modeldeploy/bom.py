"""The ML-BOM of a ModelDeployment: a CycloneDX 1.6 JSON document of what it serves.

This module owns the BOM's content. The BOM describes the ModelDeployment (its
``metadata.component``) and what it depends on: the model (a ``machine-learning-model``
component named by the served name, versioned by the resolved revision, with every file's
SHA-256, the license, the source and model card as external references and the format,
quantization, engine and parameter count as properties, the files as nested ``file``
components), the runtime image (a ``container``) and the operator (whose image fetches
and verifies the model in every pod).

Deterministic: the same inputs give the same bytes. The timestamp is an input (left out
when not given) and the serial number is derived from the ModelDeployment's uid and the
rest of the document (a UUID 5), so an unchanged world renders an unchanged ConfigMap and
an idle operator writes nothing. ``render/bom.py`` turns it into that ConfigMap.

Pure: it uses the ``cyclonedx-python-lib`` object model and serializer, no I/O. The
CycloneDX ``modelCard`` object, which the library does not model, is added to the JSON.
"""

from __future__ import annotations

import datetime
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

from modeldeploy.api import ModelDeployment
from modeldeploy.fetch.uri import SourceURIError, parse_source
from modeldeploy.provenance import Provenance
from modeldeploy.resolution import Resolution
from modeldeploy.sizing import ModelArchitecture

SPEC_VERSION = "1.6"
PROPERTY_PREFIX = "modeldeploy:"
OPERATOR_NAME = "modeldeploy"
OPERATOR_REF = "modeldeploy-operator"
# The namespace of the serial numbers' UUID 5 (a UUID 5 of the project's URL).
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://modeldeploy.io/ml-bom")
HUB = "https://huggingface.co"
_TOP_LEVEL_ORDER = ("$schema", "bomFormat", "specVersion", "serialNumber", "version", "metadata")


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
    timestamp: str | datetime.datetime | None = None,
) -> str:
    """The CycloneDX 1.6 JSON ML-BOM of ``md`` as resolved (indented, ends with a newline)."""
    model = _model_component(md, resolution, runtime, provenance)
    image = _runtime_component(runtime)
    operator = _operator_component(runtime, provenance)
    deployment = _deployment_component(md, provenance)
    metadata = BomMetaData(component=deployment, timestamp=_timestamp(timestamp))
    if timestamp is None:
        metadata.timestamp = None  # type: ignore[assignment]
    bom = Bom(
        serial_number=uuid.UUID(int=0),  # replaced below, from the content
        metadata=metadata,
        components=[model, image, operator],
    )
    bom.register_dependency(deployment, [model, image, operator])
    document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    architecture = resolution.architecture if resolution else None
    for component in document.get("components", []):
        if component.get("type") == ComponentType.MACHINE_LEARNING_MODEL.value:
            component["modelCard"] = _model_card(architecture)
    document.pop("serialNumber", None)
    content = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    uid = str(md.metadata.get("uid") or f"{md.namespace}/{md.name}")
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
    md: ModelDeployment,
    resolution: Resolution | None,
    runtime: RuntimeFacts,
    provenance: Provenance,
) -> Component:
    ref = model_ref(provenance)
    files = resolution.files if resolution else ()
    architecture = resolution.architecture if resolution else None
    parameters = runtime.parameters
    if parameters is None and architecture is not None:
        parameters = architecture.parameters
    fmt = resolution.format if resolution else md.spec.model.format
    quantization = resolution.quantization if resolution else md.spec.model.quantization
    nested = [
        Component(
            type=ComponentType.FILE,
            name=f.name,
            bom_ref=f"{ref}#{f.name}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)] if f.sha256 else [],
            properties=_properties([("size-bytes", f.size)]),
        )
        for f in files
    ]
    licenses = [LicenseFactory().make_from_string(provenance.license)] if provenance.license else []
    return Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=md.served_name,
        version=provenance.revision,
        bom_ref=ref,
        purl=model_purl(provenance),
        description=f"{fmt} {quantization} weights, served by {runtime.engine}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256) for f in files if f.sha256],
        licenses=licenses,
        external_references=_external_references(provenance),
        properties=_properties(
            [
                ("source", provenance.source),
                ("revision", provenance.revision),
                ("files-digest", provenance.files_digest),
                ("format", fmt),
                ("quantization", quantization),
                ("engine", runtime.engine),
                ("parameters", parameters),
                ("total-bytes", resolution.total_bytes if resolution else None),
            ]
        ),
        components=nested,
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


def _deployment_component(md: ModelDeployment, provenance: Provenance) -> Component:
    policy = provenance.policy
    return Component(
        type=ComponentType.APPLICATION,
        name=md.name or md.served_name,
        group=md.namespace or None,
        bom_ref=f"modeldeployment:{md.namespace}/{md.name}",
        description=f"ModelDeployment {md.namespace + '/' if md.namespace else ''}{md.name}",
        properties=_properties(
            [
                ("served-name", md.served_name),
                ("policy", policy.name if policy else None),
                ("policy-generation", policy.generation if policy else None),
                ("signature-identity", provenance.signature_identity),
            ]
        ),
    )
