"""The ML-BOM: CycloneDX 1.6 validity, real digests, determinism, its ConfigMap and the CLI.

Validity is the CycloneDX library's own JSON-schema validator for 1.6. ``modeldeploy bom -f``
runs the real fetcher on a ``pvc://`` source (a directory standing for the claim) holding a
small GGUF file written by the ``gguf`` package; ``modeldeploy bom mdep/NAME`` reads the
ConfigMap from a stand-in API server on loopback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from cyclonedx.schema import OutputFormat, SchemaVersion
from cyclonedx.validation import make_schemabased_validator
from nodepool import load_e2e_pool, model_deployment
from tiny_gguf import write_tiny_lora, write_tiny_model

from modeldeploy.adapters import ResolvedAdapter
from modeldeploy.api import parse_model_deployment
from modeldeploy.bom import RuntimeFacts, build_bom
from modeldeploy.cli import main
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.provenance import (
    ANNOTATION_REVISION,
    PolicyRef,
    files_digest,
    provenance_from,
)
from modeldeploy.render import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODEL_DEPLOYMENT,
    RenderInputs,
    render_deployment,
)
from modeldeploy.render.bom import (
    ANNOTATION_BOM_SERIAL,
    BOM_KEY,
    COMPONENT_BOM,
    render_bom_configmap,
    runtime_facts,
)
from modeldeploy.resolution import AdapterFacts, ArtifactFile, Resolution
from modeldeploy.sizing import ModelArchitecture

CONFIG = OperatorConfig()
E2E = load_e2e_pool()
UID = "6f1c1b9e-0d1c-4c1e-9a57-2f0c8b1d0a11"
SOURCE = "hf://Qwen/Qwen2.5-7B-Instruct-GGUF"
REVISION = "bb46c15ee4bb56c5b63245ef50fd7637234d6f75"
SPEC: dict[str, Any] = {
    "model": {
        "source": SOURCE,
        "quantization": "Q4_K_M",
        "revision": REVISION,
        "servedName": "qwen",
    },
    "hardware": {"accelerator": "cpu"},
}
PAYLOADS = {
    "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf": b"first part",
    "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf": b"second part",
}
FILES = tuple(
    ArtifactFile(name, len(data), hashlib.sha256(data).hexdigest())
    for name, data in PAYLOADS.items()
)
ARCHITECTURE = ModelArchitecture(architecture="qwen2", parameters=7_615_616_512, layers=28)
WHEN = "2025-01-02T03:04:05Z"
VALIDATOR = make_schemabased_validator(OutputFormat.JSON, SchemaVersion.V1_6)


def _md(spec: dict[str, Any] | None = None, uid: str = UID) -> Any:
    return parse_model_deployment(model_deployment(copy.deepcopy(spec or SPEC), uid=uid))


def _resolution(revision: str = REVISION, license: str | None = "apache-2.0") -> Resolution:
    return Resolution(
        SOURCE, revision, "gguf", "Q4_K_M", FILES, license=license, architecture=ARCHITECTURE
    )


def _inputs(md: Any = None, resolution: Resolution | None = None, **kw: Any) -> RenderInputs:
    md = md or _md()
    resolution = resolution or _resolution()
    placement = plan_placement(md.spec, E2E, CONFIG, resolution.architecture)
    provenance = provenance_from(md, resolution, policy=PolicyRef("strict", 2))
    return RenderInputs(md, placement, CONFIG, resolution, provenance=provenance, **kw)


def _valid(text: str) -> dict[str, Any]:
    error = VALIDATOR.validate_str(text)
    assert error is None, str(error)[:2000]
    document: dict[str, Any] = json.loads(text)
    return document


def _model(document: dict[str, Any]) -> dict[str, Any]:
    (model,) = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    return model


def _properties(component: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def test_the_bom_is_valid_cyclonedx_1_6_with_the_model_and_its_files() -> None:
    inputs = _inputs()
    document = _valid(render_bom_configmap(inputs, timestamp=WHEN)["data"][BOM_KEY])
    assert (document["bomFormat"], document["specVersion"], document["version"]) == (
        "CycloneDX",
        "1.6",
        1,
    )
    assert document["metadata"]["timestamp"] == "2025-01-02T03:04:05+00:00"
    model = _model(document)
    assert (model["name"], model["version"]) == ("qwen", REVISION)
    assert model["purl"] == f"pkg:huggingface/Qwen/Qwen2.5-7B-Instruct-GGUF@{REVISION}"
    assert model["bom-ref"] == model["purl"]
    # Every file's real sha256, on the model and on its file components.
    assert sorted(h["content"] for h in model["hashes"]) == sorted(
        hashlib.sha256(data).hexdigest() for data in PAYLOADS.values()
    )
    assert {h["alg"] for h in model["hashes"]} == {"SHA-256"}
    files = {c["name"]: c for c in model["components"]}
    assert set(files) == set(PAYLOADS)
    for name, data in PAYLOADS.items():
        assert files[name]["type"] == "file"
        assert files[name]["hashes"] == [
            {"alg": "SHA-256", "content": hashlib.sha256(data).hexdigest()}
        ]
        assert _properties(files[name])["modeldeploy:size-bytes"] == str(len(data))
    assert model["licenses"] == [{"license": {"id": "Apache-2.0"}}]
    references = {r["type"]: r["url"] for r in model["externalReferences"]}
    assert references == {
        "model-card": "https://huggingface.co/Qwen/Qwen2.5-7B-Instruct-GGUF",
        "distribution": f"https://huggingface.co/Qwen/Qwen2.5-7B-Instruct-GGUF/tree/{REVISION}",
    }
    properties = _properties(model)
    assert properties["modeldeploy:format"] == "gguf"
    assert properties["modeldeploy:quantization"] == "Q4_K_M"
    assert properties["modeldeploy:engine"] == str(inputs.placement.engine)
    assert properties["modeldeploy:parameters"] == str(inputs.placement.memory.parameters)
    assert properties["modeldeploy:files-digest"] == files_digest(FILES)
    assert model["modelCard"]["modelParameters"]["architectureFamily"] == "qwen2"


def test_the_bom_names_the_runtime_image_the_operator_and_the_dependencies() -> None:
    inputs = _inputs()
    document = _valid(render_bom_configmap(inputs)["data"][BOM_KEY])
    deployment = render_deployment(inputs)
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    by_ref = {c["bom-ref"]: c for c in document["components"]}
    runtime = by_ref[f"runtime:{image}"]
    assert runtime["type"] == "container"
    assert f"{runtime['name']}:{runtime['version']}" == image
    assert runtime["purl"].startswith("pkg:oci/")
    operator = by_ref["modeldeploy-operator"]
    assert inputs.provenance is not None
    assert (operator["name"], operator["version"]) == (
        "modeldeploy",
        inputs.provenance.operator_version,
    )
    init_image = deployment["spec"]["template"]["spec"]["initContainers"][0]["image"]
    assert _properties(operator)["modeldeploy:image"] == init_image
    subject = document["metadata"]["component"]
    assert (subject["name"], subject["group"]) == ("demo", "default")
    assert _properties(subject)["modeldeploy:policy"] == "strict"
    depends = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert sorted(depends[subject["bom-ref"]]) == sorted(
        [_model(document)["bom-ref"], runtime["bom-ref"], "modeldeploy-operator"]
    )


def test_the_bom_and_the_annotations_name_the_same_revision() -> None:
    inputs = _inputs()
    document = _valid(render_bom_configmap(inputs)["data"][BOM_KEY])
    deployment = render_deployment(inputs)
    pod = deployment["spec"]["template"]["metadata"]["annotations"]
    assert _model(document)["version"] == pod[ANNOTATION_REVISION] == REVISION
    assert deployment["metadata"]["annotations"][ANNOTATION_REVISION] == REVISION


def test_same_inputs_give_the_same_bytes() -> None:
    first = render_bom_configmap(_inputs(), timestamp=WHEN)
    second = render_bom_configmap(_inputs(), timestamp=WHEN)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert first["data"][BOM_KEY] == second["data"][BOM_KEY]
    # No clock inside: without a timestamp the document has none, and is still stable.
    untimed = render_bom_configmap(_inputs())["data"][BOM_KEY]
    assert "timestamp" not in json.loads(untimed)["metadata"]
    assert untimed == render_bom_configmap(_inputs())["data"][BOM_KEY]


def test_the_serial_number_follows_the_uid_and_the_resolution() -> None:
    def serial(inputs: RenderInputs) -> str:
        return str(json.loads(render_bom_configmap(inputs)["data"][BOM_KEY])["serialNumber"])

    base = serial(_inputs())
    assert base.startswith("urn:uuid:")
    assert serial(_inputs(md=_md(uid="another-uid"))) != base
    assert serial(_inputs(resolution=_resolution(revision="c" * 40))) != base
    assert serial(_inputs()) == base


def test_a_document_is_built_once_per_inputs_and_the_architecture_counts() -> None:
    md = _md()
    placement = plan_placement(md.spec, E2E, CONFIG, ARCHITECTURE)
    runtime = runtime_facts(placement, CONFIG)
    resolution = _resolution()
    provenance = provenance_from(md, resolution)
    first = build_bom(md, resolution, runtime, provenance, timestamp=WHEN)
    # The same inputs, built anew (as every pass does): the cached document itself.
    assert build_bom(_md(), _resolution(), runtime, provenance, timestamp=WHEN) is first
    # A Resolution's equality leaves its architecture out; the model card does not.
    other = replace(resolution, architecture=replace(ARCHITECTURE, layers=30))
    assert other == resolution
    card = _model(json.loads(build_bom(md, other, runtime, provenance, timestamp=WHEN)))
    assert {"name": "modeldeploy:layers", "value": "30"} in card["modelCard"]["properties"]
    assert build_bom(md, resolution, runtime, provenance) != first  # no timestamp


@pytest.mark.parametrize(
    ("license", "expected"),
    [
        ("mit", {"license": {"id": "MIT"}}),
        ("gemma", {"license": {"name": "gemma"}}),
        ("Apache-2.0 OR MIT", {"expression": "Apache-2.0 OR MIT"}),
    ],
)
def test_licenses_are_spdx_where_they_can_be(license: str, expected: dict[str, Any]) -> None:
    document = _valid(
        render_bom_configmap(_inputs(resolution=_resolution(license=license)))["data"][BOM_KEY]
    )
    assert _model(document)["licenses"] == [expected]


def test_an_unresolved_source_still_gives_a_valid_bom() -> None:
    md = _md({"model": {"source": "pvc://models/tiny-Q4_K_M.gguf", "parameters": "270M"}})
    placement = plan_placement(md.spec, E2E, CONFIG)
    provenance = provenance_from(md, None)
    text = build_bom(md, None, runtime_facts(placement, CONFIG), provenance)
    model = _model(_valid(text))
    assert "hashes" not in model and "version" not in model
    assert model["bom-ref"] == "pvc://models/tiny-Q4_K_M.gguf@unresolved"
    assert {r["type"] for r in model["externalReferences"]} == {"distribution"}


ADAPTER_REVISION = "a" * 40
ADAPTER_BYTES = b"lora weights"


def _adapter(name: str = "qwen-sql", scale: float | None = 0.5) -> ResolvedAdapter:
    files = (ArtifactFile("sql-f16.gguf", 12, hashlib.sha256(ADAPTER_BYTES).hexdigest()),)
    facts = AdapterFacts("gguf", kind="adapter/lora", architecture="qwen2", rank=8, alpha=16.0)
    resolution = Resolution(
        "hf://acme/qwen-sql-lora-GGUF", ADAPTER_REVISION, "gguf", None, files, adapter=facts
    )
    return ResolvedAdapter(name, scale, resolution)


def test_each_adapter_is_a_model_of_its_own_that_depends_on_the_base() -> None:
    spec = copy.deepcopy(SPEC)
    spec["adapters"] = [
        {"name": "qwen-sql", "source": "hf://acme/qwen-sql-lora-GGUF", "scale": 0.5}
    ]
    inputs = _inputs(md=_md(spec), adapters=(_adapter(),))
    document = _valid(render_bom_configmap(inputs, timestamp=WHEN)["data"][BOM_KEY])
    by_ref = {c["bom-ref"]: c for c in document["components"]}
    adapter = by_ref["adapter:qwen-sql"]
    base = by_ref[f"pkg:huggingface/Qwen/Qwen2.5-7B-Instruct-GGUF@{REVISION}"]
    assert (adapter["type"], adapter["name"], adapter["version"]) == (
        "machine-learning-model",
        "qwen-sql",
        ADAPTER_REVISION,
    )
    assert adapter["purl"] == f"pkg:huggingface/acme/qwen-sql-lora-GGUF@{ADAPTER_REVISION}"
    digest = hashlib.sha256(ADAPTER_BYTES).hexdigest()
    assert adapter["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert [(f["name"], f["hashes"][0]["content"]) for f in adapter["components"]] == [
        ("sql-f16.gguf", digest)
    ]
    properties = _properties(adapter)
    assert properties["modeldeploy:base-model"] == base["bom-ref"]
    assert properties["modeldeploy:adapter-kind"] == "adapter/lora"
    assert properties["modeldeploy:architecture"] == "qwen2"
    assert (properties["modeldeploy:lora-rank"], properties["modeldeploy:scale"]) == ("8", "0.5")
    assert properties["modeldeploy:files-digest"] == files_digest(_adapter().resolution.files)
    # The model card describes the base only.
    assert "modelCard" in base and "modelCard" not in adapter
    depends = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert "adapter:qwen-sql" in depends[document["metadata"]["component"]["bom-ref"]]
    assert depends["adapter:qwen-sql"] == [base["bom-ref"]]


def test_an_adapters_revision_and_facts_change_the_document() -> None:
    spec = copy.deepcopy(SPEC)
    spec["adapters"] = [{"name": "qwen-sql", "source": "hf://acme/qwen-sql-lora-GGUF"}]
    md = _md(spec)

    def text(adapter: ResolvedAdapter) -> str:
        return render_bom_configmap(_inputs(md=md, adapters=(adapter,)))["data"][BOM_KEY]

    first = text(_adapter())
    assert text(_adapter()) == first
    moved = _adapter()
    moved = replace(moved, resolution=replace(moved.resolution, revision="b" * 40))
    assert json.loads(text(moved))["serialNumber"] != json.loads(first)["serialNumber"]
    # AdapterFacts are outside a Resolution's equality; the document still follows them.
    ranked = _adapter()
    facts = replace(ranked.facts, rank=16)
    ranked = replace(ranked, resolution=replace(ranked.resolution, adapter=facts))
    assert '"value": "16"' in text(ranked) and text(ranked) != first


def test_the_configmap_is_a_child_like_the_others() -> None:
    inputs = _inputs()
    configmap = render_bom_configmap(inputs)
    deployment = render_deployment(inputs)
    meta = configmap["metadata"]
    assert (configmap["apiVersion"], configmap["kind"]) == ("v1", "ConfigMap")
    assert (meta["name"], meta["namespace"]) == ("demo-ml-bom", "default")
    assert meta["labels"][LABEL_COMPONENT] == COMPONENT_BOM
    assert meta["labels"][LABEL_MANAGED_BY] == "modeldeploy"
    assert meta["labels"][LABEL_MODEL_DEPLOYMENT] == "demo"
    assert meta["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert meta["ownerReferences"][0]["uid"] == UID
    assert set(configmap["data"]) == {BOM_KEY}
    document = json.loads(configmap["data"][BOM_KEY])
    assert meta["annotations"][ANNOTATION_BOM_SERIAL] == document["serialNumber"]
    assert meta["annotations"][ANNOTATION_REVISION] == REVISION
    assert len(configmap["data"][BOM_KEY].encode()) < 64 * 1024  # far below the 1 MiB limit


def test_runtime_facts_of_a_gpu_placement_name_the_gpu_image() -> None:
    md = _md({"model": {"source": "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"}})
    placement = plan_placement(md.spec, E2E, CONFIG)
    facts = runtime_facts(placement, CONFIG)
    assert facts == RuntimeFacts(
        engine=str(placement.engine),
        image=facts.image,
        accelerator="gpu",
        parameters=placement.memory.parameters,
        operator_image=CONFIG.operator_image,
    )
    assert (
        facts.image
        == render_deployment(RenderInputs(md, placement, CONFIG))["spec"]["template"]["spec"][
            "containers"
        ][0]["image"]
    )


# -- the command line ---------------------------------------------------------------


def test_bom_from_a_file_fetches_and_names_the_real_sha256(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gguf_file = write_tiny_model(tmp_path / "claims" / "models" / "tiny-Q4_K_M.gguf")
    spec = {"model": {"source": "pvc://models/tiny-Q4_K_M.gguf", "parameters": "270M"}}
    md_file = tmp_path / "md.yaml"
    md_file.write_text(yaml.safe_dump(model_deployment(spec, name="tiny")))
    argv = ["bom", "-f", str(md_file), "--cache", str(tmp_path / "cache")]
    code = main([*argv, "--pvc-root", str(tmp_path / "claims")])
    out, err = capsys.readouterr()
    assert code == 0, err
    model = _model(_valid(out))
    sha256 = hashlib.sha256(gguf_file.read_bytes()).hexdigest()
    assert model["hashes"] == [{"alg": "SHA-256", "content": sha256}]
    assert model["components"][0]["name"] == "tiny-Q4_K_M.gguf"
    assert model["version"]  # the revision the fetcher derived
    properties = _properties(model)
    assert properties["modeldeploy:engine"] == "llamacpp"
    assert properties["modeldeploy:quantization"] == "Q4_K_M"
    assert model["modelCard"]["modelParameters"]["architectureFamily"] == "gemma3"
    # A second run answers from the cache, with the same digests.
    assert main([*argv, "--pvc-root", str(tmp_path / "claims")]) == 0
    again = _model(json.loads(capsys.readouterr().out))
    assert again["hashes"] == model["hashes"] and again["version"] == model["version"]


def test_bom_from_a_file_fetches_and_lists_the_adapters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_model(tmp_path / "claims" / "models" / "tiny-Q4_K_M.gguf")
    lora = write_tiny_lora(tmp_path / "claims" / "loras" / "tiny-sql.gguf")
    spec = {
        "model": {"source": "pvc://models/tiny-Q4_K_M.gguf", "parameters": "270M"},
        "adapters": [{"name": "tiny-sql", "source": "pvc://loras/tiny-sql.gguf", "scale": 0.5}],
    }
    md_file = tmp_path / "md.yaml"
    md_file.write_text(yaml.safe_dump(model_deployment(spec, name="tiny")))
    argv = ["bom", "-f", str(md_file), "--cache", str(tmp_path / "cache")]
    assert main([*argv, "--pvc-root", str(tmp_path / "claims")]) == 0
    document = _valid(capsys.readouterr().out)
    by_ref = {c["bom-ref"]: c for c in document["components"]}
    adapter = by_ref["adapter:tiny-sql"]
    assert adapter["hashes"] == [
        {"alg": "SHA-256", "content": hashlib.sha256(lora.read_bytes()).hexdigest()}
    ]
    properties = _properties(adapter)
    assert properties["modeldeploy:adapter-kind"] == "adapter/lora"
    assert properties["modeldeploy:architecture"] == "gemma3"
    assert properties["modeldeploy:scale"] == "0.5"


def test_bom_from_a_file_reports_a_failed_fetch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "claims" / "models").mkdir(parents=True)
    spec = {"model": {"source": "pvc://models/missing-Q4_K_M.gguf", "parameters": "270M"}}
    md_file = tmp_path / "md.yaml"
    md_file.write_text(yaml.safe_dump(model_deployment(spec, name="tiny")))
    code = main(
        [
            "bom",
            "-f",
            str(md_file),
            "--cache",
            str(tmp_path / "c"),
            "--pvc-root",
            str(tmp_path / "claims"),
        ]
    )
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.startswith("modeldeploy bom: error: fetch failed:")


class _ApiServer(BaseHTTPRequestHandler):
    """Answers GET of one ConfigMap as the API server does; 404 (a Status) for the rest."""

    objects: ClassVar[dict[str, dict[str, Any]]] = {}

    def do_GET(self) -> None:
        found = self.objects.get(self.path.split("?", 1)[0])
        body = json.dumps(
            found or {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        ).encode()
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    """A kubeconfig whose context (namespace team-a) points at a loopback stand-in."""
    configmap = render_bom_configmap(_inputs())
    configmap["metadata"]["namespace"] = "team-a"
    _ApiServer.objects = {"/api/v1/namespaces/team-a/configmaps/demo-ml-bom": configmap}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "team-a"}}
                ],
                "current-context": "x",
            }
        )
    )
    yield path
    server.shutdown()
    server.server_close()


def test_bom_of_a_deployment_prints_the_stored_document(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = _ApiServer.objects["/api/v1/namespaces/team-a/configmaps/demo-ml-bom"]
    assert main(["bom", "mdep/demo", "--kubeconfig", str(kubeconfig)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == (stored["data"][BOM_KEY], "")
    _valid(out)


def test_bom_of_a_deployment_without_one_says_so(
    kubeconfig: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bom", "mdep/other", "-n", "team-a", "--kubeconfig", str(kubeconfig)])
    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert "mdep/other in team-a has no ML-BOM (no ConfigMap other-ml-bom)" in err


@pytest.mark.parametrize("target", ["deployment/demo", "mdep/"])
def test_bom_refuses_what_is_not_a_model_deployment(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bom", target]) == 2
    assert capsys.readouterr().err.startswith("modeldeploy bom: error: ")
