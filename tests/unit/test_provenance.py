"""Provenance: the files digest, the annotations on the Deployment and its pods, the status."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.provenance import (
    ANNOTATION_DIGEST,
    ANNOTATION_LICENSE,
    ANNOTATION_OPERATOR_VERSION,
    ANNOTATION_POLICY,
    ANNOTATION_POLICY_GENERATION,
    ANNOTATION_REVISION,
    ANNOTATION_SIGNATURE,
    ANNOTATION_SOURCE,
    MAX_VALUE_LENGTH,
    POD_ANNOTATIONS,
    PolicyRef,
    Provenance,
    annotation_value,
    as_status,
    files_digest,
    pod_annotations,
    provenance_annotations,
    provenance_from,
)
from modeldeploy.render import ANNOTATION_SPEC_HASH, RenderInputs, render_deployment
from modeldeploy.resolution import ArtifactFile, Resolution

REPO = Path(__file__).resolve().parents[2]
CONFIG = OperatorConfig()
E2E = load_e2e_pool()
UID = "6f1c1b9e-0d1c-4c1e-9a57-2f0c8b1d0a11"
SOURCE = "hf://Qwen/Qwen2.5-7B-Instruct-GGUF"
REVISION = "bb46c15ee4bb56c5b63245ef50fd7637234d6f75"
SPEC: dict[str, Any] = {
    "model": {"source": SOURCE, "quantization": "Q4_K_M", "revision": REVISION},
    "hardware": {"accelerator": "cpu"},
}
FILES = (
    ArtifactFile(
        "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf", 7, hashlib.sha256(b"b").hexdigest()
    ),
    ArtifactFile(
        "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", 5, hashlib.sha256(b"a").hexdigest()
    ),
)


def _md(spec: dict[str, Any] | None = None) -> Any:
    return parse_model_deployment(model_deployment(copy.deepcopy(spec or SPEC), uid=UID))


def _resolution(revision: str = REVISION, files: tuple[ArtifactFile, ...] = FILES) -> Resolution:
    return Resolution(SOURCE, revision, "gguf", "Q4_K_M", files, license="apache-2.0")


def _deployment(provenance: Provenance | None) -> dict[str, Any]:
    md = _md()
    placement = plan_placement(md.spec, E2E, CONFIG)
    return render_deployment(
        RenderInputs(md, placement, CONFIG, _resolution(), provenance=provenance)
    )


def test_files_digest_is_the_sha256_of_the_sorted_name_digest_lines() -> None:
    a, b = sorted(FILES, key=lambda f: f.name)
    text = f"{a.name} {a.sha256}\n{b.name} {b.sha256}\n"
    expected = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    assert files_digest(FILES) == expected
    assert files_digest(reversed(FILES)) == expected  # the order of the listing does not count
    upper = tuple(ArtifactFile(f.name, f.size, (f.sha256 or "").upper()) for f in FILES)
    assert files_digest(upper) == expected


def test_files_digest_needs_every_digest() -> None:
    assert files_digest((*FILES, ArtifactFile("config.json", 3))) is None
    assert files_digest(()) is None
    changed = (FILES[0], ArtifactFile(FILES[1].name, 5, hashlib.sha256(b"c").hexdigest()))
    assert files_digest(changed) != files_digest(FILES)


def test_provenance_from_a_resolution() -> None:
    policy = PolicyRef("strict", 4)
    p = provenance_from(_md(), _resolution(), policy=policy, signature_identity="CN=release")
    assert (p.source, p.revision, p.license) == (SOURCE, REVISION, "apache-2.0")
    assert p.files_digest == files_digest(FILES)
    assert (p.policy, p.signature_identity) == (policy, "CN=release")
    assert p.operator_version == CONFIG.operator_image.rsplit(":", 1)[1]


def test_provenance_before_resolution_uses_the_canonical_source_and_the_spec() -> None:
    md = _md({"model": {"source": "oci://ghcr.io/acme/tiny:v1", "revision": "sha256:" + "0" * 64}})
    p = provenance_from(md, None)
    assert (p.source, p.revision, p.files_digest, p.license) == (
        "oci://ghcr.io/acme/tiny",
        "sha256:" + "0" * 64,
        None,
        None,
    )


def test_annotations_name_everything_and_the_pods_only_the_bytes() -> None:
    p = provenance_from(_md(), _resolution(), policy=PolicyRef("strict", 4), signature_identity="x")
    found = provenance_annotations(p)
    assert found == {
        ANNOTATION_SOURCE: SOURCE,
        ANNOTATION_REVISION: REVISION,
        ANNOTATION_DIGEST: files_digest(FILES),
        ANNOTATION_LICENSE: "apache-2.0",
        ANNOTATION_POLICY: "strict",
        ANNOTATION_POLICY_GENERATION: "4",
        ANNOTATION_SIGNATURE: "x",
        ANNOTATION_OPERATOR_VERSION: p.operator_version,
    }
    assert all(key.startswith("modeldeploy.io/") for key in found)
    assert pod_annotations(p) == {key: found[key] for key in POD_ANNOTATIONS}
    bare = Provenance(source=SOURCE, revision=None, files_digest=None)
    assert set(provenance_annotations(bare)) == {ANNOTATION_SOURCE, ANNOTATION_OPERATOR_VERSION}


@pytest.mark.parametrize(
    "text",
    ["x" * (MAX_VALUE_LENGTH + 1), "hf://a/" + "b" * 3000, "é" * 5000],
)
def test_long_values_are_cut_with_a_note(text: str) -> None:
    value = annotation_value(text)
    assert len(value) == MAX_VALUE_LENGTH
    assert value.endswith(f"...(truncated, {len(text)} characters)")
    assert value.startswith(text[:100])


def test_values_are_bounded_single_line_strings() -> None:
    assert annotation_value("MIT\nor\tnot\x7f") == "MIT or not "
    assert annotation_value("x" * MAX_VALUE_LENGTH) == "x" * MAX_VALUE_LENGTH
    long = Provenance(
        source="s3://bucket/" + "k" * 2000,
        revision="r" * 600,
        files_digest=None,
        license="l\n" * 400,
    )
    for value in provenance_annotations(long).values():
        assert isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH
        assert "\n" not in value
    # Kubernetes bounds all annotations of an object together at 256 KiB.
    assert sum(len(k) + len(v.encode()) for k, v in provenance_annotations(long).items()) < 8192


def test_the_deployment_and_its_pods_name_the_resolved_revision() -> None:
    p = provenance_from(_md(), _resolution(), policy=PolicyRef("strict", 4))
    deployment = _deployment(p)
    meta = deployment["metadata"]["annotations"]
    pod = deployment["spec"]["template"]["metadata"]["annotations"]
    assert meta[ANNOTATION_REVISION] == pod[ANNOTATION_REVISION] == REVISION
    assert meta[ANNOTATION_DIGEST] == pod[ANNOTATION_DIGEST] == files_digest(FILES)
    assert meta[ANNOTATION_POLICY] == "strict" and ANNOTATION_POLICY not in pod
    assert ANNOTATION_OPERATOR_VERSION not in pod
    assert pod["prometheus.io/scrape"] == "true"  # the others stay
    assert meta[ANNOTATION_SPEC_HASH] == pod[ANNOTATION_SPEC_HASH]


def test_a_new_revision_rolls_the_pods_and_a_new_policy_does_not() -> None:
    md = _md()
    base = provenance_from(md, _resolution(), policy=PolicyRef("strict", 4))

    def spec_hash_of(p: Provenance) -> str:
        return str(_deployment(p)["metadata"]["annotations"][ANNOTATION_SPEC_HASH])

    newer = provenance_from(md, _resolution(revision="c" * 40), policy=PolicyRef("strict", 4))
    assert spec_hash_of(newer) != spec_hash_of(base)
    repolicied = provenance_from(md, _resolution(), policy=PolicyRef("strict", 5))
    assert spec_hash_of(repolicied) == spec_hash_of(base)
    assert _deployment(repolicied)["metadata"]["annotations"][ANNOTATION_POLICY_GENERATION] == "5"


def test_no_provenance_leaves_the_annotations_as_they_were() -> None:
    deployment = _deployment(None)
    assert set(deployment["metadata"]["annotations"]) == {ANNOTATION_SPEC_HASH}
    pod = deployment["spec"]["template"]["metadata"]["annotations"]
    assert not [key for key in pod if key in POD_ANNOTATIONS]


def _status_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "modeldeploy.io_modeldeployments.yaml").read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema: dict[str, Any] = root["properties"]["status"]["properties"]["provenance"]
    return schema


def test_status_provenance_matches_the_crd() -> None:
    p = provenance_from(_md(), _resolution(), policy=PolicyRef("strict", 4), signature_identity="x")
    status = as_status(p, bom_config_map="demo-ml-bom", bom_hash="0123456789abcdef")
    schema = _status_schema()
    assert set(status) == set(schema["properties"])
    assert set(status["policy"]) == set(schema["properties"]["policy"]["properties"])
    assert status["modelDigest"] == files_digest(FILES)
    assert (status["revision"], status["bomConfigMap"]) == (REVISION, "demo-ml-bom")
    assert re.fullmatch(schema["properties"]["modelDigest"]["pattern"], status["modelDigest"])
    # Whole values in status, even where the annotation is cut.
    long = Provenance(source="s3://b/" + "k" * 2000, revision="r", files_digest=None)
    assert as_status(long) == {
        "source": long.source,
        "revision": "r",
        "operatorVersion": long.operator_version,
    }
