"""The ML-BOM ConfigMap: the CycloneDX document of ``bom.py``, owned by the ModelDeployment.

This module owns the ConfigMap's shape: its name (``NAME-ml-bom``), the labels and
controller ownerReference every child carries (``render.child_metadata``, component
``ml-bom``), the provenance annotations and the BOM's serial number as annotations, and
the document under the key ``bom.cdx.json``. ``modeldeploy bom mdep/NAME`` prints it.

Pure and deterministic, as the rest of ``render/``: the timestamp is an argument (left out
of the document when not given), so an unchanged world renders the same bytes.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from typing import Any

# The package itself rather than names from it: render/__init__.py may import this module
# before it has defined them (as render/autoscaler.py does).
from modeldeploy import render
from modeldeploy.bom import BOM_CACHE_SIZE, RuntimeFacts, build_bom
from modeldeploy.catalog import Accelerator
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import Placement
from modeldeploy.provenance import provenance_annotations, provenance_from
from modeldeploy.runtimes import runtime_for

COMPONENT_BOM = "ml-bom"
BOM_KEY = "bom.cdx.json"
ANNOTATION_BOM_SERIAL = "modeldeploy.io/bom-serial-number"


def bom_config_map_name(name: str) -> str:
    """Name of the ConfigMap holding a ModelDeployment's ML-BOM."""
    return f"{name}-{COMPONENT_BOM}"


def runtime_facts(placement: Placement, config: OperatorConfig) -> RuntimeFacts:
    """The engine, image, accelerator and parameter count of a placement, for the BOM."""
    runtime = runtime_for(placement.engine)
    return RuntimeFacts(
        engine=str(placement.engine),
        image=runtime.image(config, gpu=placement.accelerator is Accelerator.GPU),
        accelerator=str(placement.accelerator),
        parameters=placement.memory.parameters,
        operator_image=config.operator_image,
    )


def render_bom(
    inputs: render.RenderInputs, *, timestamp: str | datetime.datetime | None = None
) -> str:
    """The ML-BOM JSON of the inputs (their ``provenance``, else the resolution's)."""
    provenance = inputs.provenance or provenance_from(inputs.md, inputs.resolution)
    return build_bom(
        inputs.md,
        inputs.resolution,
        runtime_facts(inputs.placement, inputs.config),
        provenance,
        adapters=inputs.adapters,
        timestamp=timestamp,
    )


def render_bom_configmap(
    inputs: render.RenderInputs, *, timestamp: str | datetime.datetime | None = None
) -> dict[str, Any]:
    """The ConfigMap that carries the ML-BOM, labelled and owned like every child."""
    md = inputs.md
    provenance = inputs.provenance or provenance_from(md, inputs.resolution)
    text = render_bom(inputs, timestamp=timestamp)
    metadata = render.child_metadata(
        md, bom_config_map_name(md.name), COMPONENT_BOM, str(inputs.placement.engine)
    )
    metadata["annotations"] = provenance_annotations(provenance) | {
        ANNOTATION_BOM_SERIAL: _serial_number(text)
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {BOM_KEY: text}}


def bom_hash(config_map: dict[str, Any]) -> str:
    """A stable hash of a rendered ML-BOM ConfigMap (its metadata and its document)."""
    text = str((config_map.get("data") or {}).get(BOM_KEY, ""))
    return render.spec_hash({**config_map, "data": {BOM_KEY: _digest(text)}})


# The document is built once per distinct inputs (``bom.build_bom``, as many kept), so
# every pass of a settled ModelDeployment renders the same string: read and hash it once.
@functools.lru_cache(maxsize=BOM_CACHE_SIZE)
def _serial_number(text: str) -> str:
    return str(json.loads(text)["serialNumber"])


@functools.lru_cache(maxsize=BOM_CACHE_SIZE)
def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
