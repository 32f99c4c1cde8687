"""LoRA adapters: the API's rules, fit with the base, sizing, rendered and launched flags."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from nodepool import load_e2e_pool, model_deployment
from tiny_gguf import write_tiny_lora

from modeldeploy.adapters import (
    INCOMPATIBLE_ADAPTER,
    ResolvedAdapter,
    adapter_bytes,
    adapter_problems,
    max_lora_rank,
)
from modeldeploy.api import SpecError, parse_adapter, parse_model_deployment
from modeldeploy.artifacts import (
    REFUSING_REASONS,
    ArtifactState,
    artifact_hash,
    artifact_status,
    state_from_status,
)
from modeldeploy.compliance import check_policy
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.adapter_files import read_adapter_facts, select_adapter_files
from modeldeploy.fetch.errors import InvalidArtifactError, MissingFileError, SelectionError
from modeldeploy.plan import plan
from modeldeploy.policy_api import parse_model_policy
from modeldeploy.render import RenderInputs, render_container
from modeldeploy.resolution import AdapterFacts, ArtifactFile, Resolution
from modeldeploy.runtimes import llamacpp, runtime_for
from modeldeploy.runtimes.base import ChatFacts, LaunchAdapter, LaunchRequest
from modeldeploy.sizing import GIB, ModelArchitecture

POOL = load_e2e_pool()
CONFIG = OperatorConfig()
GGUF_BASE: dict[str, Any] = {
    "model": {"source": "hf://org/gemma-GGUF", "quantization": "Q4_K_M", "parameters": "270M"},
    "adapters": [
        {"name": "sql", "source": "hf://org/sql-lora", "revision": "abc"},
        {"name": "poet", "source": "pvc://claims/poet.gguf", "scale": 0.5},
    ],
}
SAFETENSORS_BASE: dict[str, Any] = {
    "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"},
    "adapters": [{"name": "sql", "source": "hf://org/llama-sql-lora"}],
}


def _md(spec: dict[str, Any], name: str = "demo") -> Any:
    return parse_model_deployment(model_deployment(copy.deepcopy(spec), name=name))


def _resolution(fmt: str, architecture: str | None = None, size: int = 1 << 20) -> Resolution:
    arch = ModelArchitecture(architecture=architecture) if architecture else None
    files = (ArtifactFile("model.gguf" if fmt == "gguf" else "config.json", size),)
    return Resolution("hf://org/base", "r1", fmt, None, files, architecture=arch)


def _adapter(name: str, facts: AdapterFacts, scale: float | None = None) -> ResolvedAdapter:
    files = (ArtifactFile("a.gguf" if facts.format == "gguf" else "adapter_config.json", 4096),)
    return ResolvedAdapter(
        name, scale, Resolution(f"hf://org/{name}", "r2", facts.format, None, files, adapter=facts)
    )


# --- API ----------------------------------------------------------------------------------


def test_adapters_parse_in_spec_order() -> None:
    adapters = _md(GGUF_BASE).spec.adapters
    assert [a.name for a in adapters] == ["sql", "poet"]
    assert adapters[1].scale == 0.5


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"adapters": [{"name": "a", "source": "hf://x/y"}] * 2}, "spec.adapters", "duplicate"),
        ({"adapters": [{"name": "demo", "source": "hf://x/y"}]}, "spec.adapters", "served name"),
        ({"adapters": [{"name": "a b", "source": "hf://x/y"}]}, "name", "OpenAI model name"),
        ({"adapters": [{"name": "a", "source": "ftp://x"}]}, "source", "scheme"),
        ({"adapters": [{"name": "a", "source": "hf://x"}]}, "source", "OWNER/NAME"),
        (
            {"adapters": [{"name": "a", "source": "hf://x/y", "digests": {"a.gguf": "0" * 64}}]},
            "revision",
            "digests",
        ),
        ({"adapters": [{"name": "a", "source": "hf://x/y", "scale": 9}]}, "scale", "8"),
        ({"adapters": [{"name": f"a{i}", "source": "hf://x/y"} for i in range(17)]}, "", "16"),
    ],
)
def test_bad_adapters_get_one_clear_error(change: dict[str, Any], field: str, words: str) -> None:
    spec = {**copy.deepcopy(GGUF_BASE), **change}
    with pytest.raises(SpecError) as caught:
        _md(spec)
    assert field in caught.value.field_path
    assert words in str(caught.value)


def test_served_name_clash_counts_the_explicit_served_name() -> None:
    spec = copy.deepcopy(GGUF_BASE)
    spec["model"]["servedName"] = "sql"
    with pytest.raises(SpecError, match="served name"):
        _md(spec)


def test_parse_adapter_names_a_bad_field() -> None:
    with pytest.raises(SpecError, match="OpenAI model name"):
        parse_adapter({"name": "-x", "source": "hf://a/b"})


# --- fit with the base --------------------------------------------------------------------

GGUF_LORA = AdapterFacts("gguf", kind="adapter/lora", architecture="gemma3")
PEFT_LORA = AdapterFacts("peft", kind="LORA", rank=16)


@pytest.mark.parametrize(
    ("base", "adapter", "scale", "words"),
    [
        (_resolution("gguf", "gemma3"), GGUF_LORA, 0.5, None),
        (_resolution("safetensors", "LlamaForCausalLM"), PEFT_LORA, None, None),
        (_resolution("gguf", "gemma3"), PEFT_LORA, None, "PEFT adapter; a GGUF base"),
        (_resolution("safetensors"), GGUF_LORA, None, "GGUF adapter; a safetensors base"),
        (
            _resolution("gguf", "llama"),
            GGUF_LORA,
            None,
            "made for architecture gemma3; the base model is llama",
        ),
        (
            _resolution("gguf", "gemma3"),
            AdapterFacts("gguf", kind="model", architecture="gemma3"),
            None,
            "not a LoRA adapter: it says 'model'",
        ),
        (
            _resolution("gguf", "gemma3"),
            AdapterFacts("gguf", kind="adapter/control_vector", architecture="gemma3"),
            None,
            "not a LoRA adapter",
        ),
        (_resolution("safetensors"), PEFT_LORA, 2.0, "sets scale 2; vLLM and SGLang"),
        (
            _resolution("safetensors"),
            AdapterFacts("peft", kind="LORA", rank=1024),
            None,
            "rank 1024",
        ),
        (_resolution("safetensors"), AdapterFacts("peft", kind="IA3"), None, "it says 'IA3'"),
    ],
)
def test_adapter_fit(
    base: Resolution, adapter: AdapterFacts, scale: float | None, words: str | None
) -> None:
    problems = adapter_problems(base, [_adapter("sql", adapter, scale)])
    if words is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith("adapter sql (hf://org/sql)") and words in problem


def test_incompatible_adapters_are_refusals() -> None:
    assert INCOMPATIBLE_ADAPTER in REFUSING_REASONS


@pytest.mark.parametrize(
    ("ranks", "expected"), [((), 16), ((8,), 16), ((16, 64), 64), ((300,), 320)]
)
def test_max_lora_rank_is_the_smallest_vllm_choice_that_holds_every_rank(
    ranks: tuple[int, ...], expected: int
) -> None:
    adapters = [_adapter(f"a{i}", AdapterFacts("peft", rank=r)) for i, r in enumerate(ranks)]
    assert max_lora_rank(adapters) == expected


# --- sizing -------------------------------------------------------------------------------


def test_adapters_add_their_bytes_to_each_replica() -> None:
    md = _md(GGUF_BASE)
    adapters = [_adapter("sql", GGUF_LORA), _adapter("poet", GGUF_LORA)]
    assert adapter_bytes(adapters) == 8192
    big = [
        ResolvedAdapter(
            "sql",
            None,
            Resolution("hf://o/a", "r", "gguf", None, (ArtifactFile("a.gguf", 2 * GIB),)),
        )
    ]
    without = plan(md, POOL, CONFIG).placement
    with_adapters = plan(md, POOL, CONFIG, adapters=big).placement
    assert with_adapters.memory.adapter_bytes == 2 * GIB
    assert with_adapters.memory.total_bytes - without.memory.total_bytes >= 2 * GIB
    assert with_adapters.memory.as_dict()["adapterBytes"] == 2 * GIB
    assert "adapterBytes" not in without.memory.as_dict()


# --- rendering ----------------------------------------------------------------------------


def _pod(spec: dict[str, Any], adapters: tuple[ResolvedAdapter, ...] = ()) -> dict[str, Any]:
    planned = plan(_md(spec), POOL, CONFIG, adapters=adapters)
    deployment = next(o for o in planned.objects if o["kind"] == "Deployment")
    return dict(deployment["spec"]["template"]["spec"])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("value") for v in container["env"]}


def test_llamacpp_pod_loads_adapters_unapplied_and_fetches_them_at_resolved_revisions() -> None:
    resolved = (_adapter("sql", GGUF_LORA),)
    pod = _pod(GGUF_BASE, resolved)
    engine = pod["containers"][0]
    assert not any(arg.startswith("--lora") for arg in engine["args"])  # added at launch
    listed = json.loads(_env(engine)["MODELDEPLOY_ADAPTERS"])
    assert listed == [
        {"name": "sql", "source": "hf://org/sql-lora", "revision": "r2"},
        {"name": "poet", "source": "pvc://claims/poet.gguf", "scale": 0.5},
    ]
    fetch = pod["initContainers"][0]
    adapters = [
        json.loads(fetch["args"][i + 1]) for i, a in enumerate(fetch["args"]) if a == "--adapter"
    ]
    assert adapters == [
        {"name": "sql", "source": "hf://org/sql-lora", "revision": "r2"},
        {"name": "poet", "source": "pvc://claims/poet.gguf"},
    ]
    claims = [m["mountPath"] for m in fetch["volumeMounts"] if m.get("readOnly")]
    assert "/mnt/pvc/claims" in claims


@pytest.mark.parametrize(
    ("engine", "slots"), [("vllm", "--max-loras"), ("sglang", "--max-loras-per-batch")]
)
def test_gpu_engines_reserve_one_lora_slot_per_adapter(engine: str, slots: str) -> None:
    spec = {**copy.deepcopy(SAFETENSORS_BASE), "engine": engine}
    spec["adapters"].append({"name": "chat", "source": "hf://org/chat-lora"})
    resolved = (
        _adapter("sql", AdapterFacts("peft", rank=8)),
        _adapter("chat", AdapterFacts("peft", rank=64)),
    )
    args = _pod(spec, resolved)["containers"][0]["args"]
    assert "--enable-lora" in args
    assert args[args.index(slots) + 1] == "2"
    assert args[args.index("--max-lora-rank") + 1] == "64"


def test_no_adapters_renders_exactly_as_before() -> None:
    spec = {"model": GGUF_BASE["model"]}
    container = render_container(
        RenderInputs(_md(spec), plan(_md(spec), POOL, CONFIG).placement, CONFIG)
    )
    assert "MODELDEPLOY_ADAPTERS" not in _env(container)


# --- launch -------------------------------------------------------------------------------


def _request(adapters: list[LaunchAdapter], args: list[str] | None = None) -> LaunchRequest:
    return LaunchRequest(
        binary="bin",
        model=Path("/m/model.gguf"),
        args=args or ["--port", "8000"],
        env={},
        host="10.0.0.3",
        threads=lambda: 2,
        chat_facts=lambda: ChatFacts("gemma3", True),
        adapters=adapters,
    )


ADAPTERS = [LaunchAdapter("sql", Path("/c/sql/a.gguf")), LaunchAdapter("poet", Path("/c/p/b.gguf"))]


def test_llamacpp_launch_loads_adapters_in_spec_order_at_global_scale_zero() -> None:
    argv = llamacpp.RUNTIME.launch_argv(_request(ADAPTERS))
    assert argv[-2:] == ["--lora-scaled", "/c/sql/a.gguf:0,/c/p/b.gguf:0"]
    with pytest.raises(ValueError, match="adapter x: llama-server cannot load"):
        llamacpp.RUNTIME.launch_argv(_request([LaunchAdapter("x", Path("/c/a:b.gguf"))]))


@pytest.mark.parametrize(
    ("engine", "flag"), [("vllm", "--lora-modules"), ("sglang", "--lora-paths")]
)
def test_gpu_engines_serve_each_adapter_under_its_name(engine: str, flag: str) -> None:
    argv = runtime_for(engine).launch_argv(_request(ADAPTERS))
    index = argv.index(flag)
    assert argv[index + 1 : index + 3] == ["sql=/c/sql/a.gguf", "poet=/c/p/b.gguf"]


def test_only_llamacpp_needs_the_adapter_router() -> None:
    assert runtime_for("llamacpp").routes_adapters_outside
    assert not runtime_for("vllm").routes_adapters_outside
    assert not runtime_for("sglang").routes_adapters_outside


# --- adapter files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "globs", "expected"),
    [
        (["README.md", "sql-lora-f16.gguf"], (), (("sql-lora-f16.gguf",), "gguf")),
        (
            ["adapter_config.json", "adapter_model.safetensors", "README.md"],
            (),
            (("adapter_config.json", "adapter_model.safetensors"), "peft"),
        ),
        (["a.gguf", "b.gguf"], ("b.gguf",), (("b.gguf",), "gguf")),
    ],
)
def test_adapter_file_selection(
    names: list[str], globs: tuple[str, ...], expected: tuple[tuple[str, ...], str]
) -> None:
    chosen = select_adapter_files(names, "hf://o/a", globs)
    assert (chosen.files, chosen.format) == expected


@pytest.mark.parametrize(
    ("names", "globs", "error", "words"),
    [
        (["a.gguf", "b.gguf"], (), SelectionError, "2 GGUF files; name the adapter's"),
        (["adapter_config.json"], (), SelectionError, "holds no LoRA adapter"),
        (["a.gguf"], ("c*.gguf",), MissingFileError, "no file matches 'c*.gguf'"),
    ],
)
def test_adapter_file_selection_refusals(
    names: list[str], globs: tuple[str, ...], error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        select_adapter_files(names, "hf://o/a", globs)
    assert words in str(caught.value)


def _reader(data: dict[str, bytes]) -> Any:
    return lambda f, offset, length: data[f.name][offset : offset + length]


def test_gguf_adapter_facts_are_read_from_its_header(tmp_path: Path) -> None:
    data = write_tiny_lora(tmp_path / "a.gguf").read_bytes()
    facts = read_adapter_facts(
        _reader({"a.gguf": data}), "gguf", [ArtifactFile("a.gguf", len(data))]
    )
    assert facts == AdapterFacts("gguf", kind="adapter/lora", architecture="gemma3", alpha=16.0)


def test_peft_adapter_facts_and_hostile_configs() -> None:
    config = json.dumps(
        {
            "peft_type": "LORA",
            "r": 16,
            "lora_alpha": 32,
            "auto_mapping": {"base_model_class": "LlamaForCausalLM"},
        }
    ).encode()
    files = [ArtifactFile("adapter_config.json", len(config))]
    facts = read_adapter_facts(_reader({"adapter_config.json": config}), "peft", files)
    assert facts == AdapterFacts(
        "peft", kind="LORA", architecture="LlamaForCausalLM", rank=16, alpha=32.0
    )
    for hostile in (
        b"[1, 2]",
        b'{"r": -1}',
        b'{"r": "16"}',
        b'{"peft_type": ' + b"[" * 100 + b"]" * 100 + b"}",
    ):
        with pytest.raises(InvalidArtifactError):
            read_adapter_facts(
                _reader({"adapter_config.json": hostile}),
                "peft",
                [ArtifactFile("adapter_config.json", len(hostile))],
            )
    huge = [ArtifactFile("adapter_config.json", 1 << 30)]
    with pytest.raises(InvalidArtifactError, match="at most"):
        read_adapter_facts(_reader({}), "peft", huge)


# --- status -------------------------------------------------------------------------------


def test_resolved_adapters_round_trip_through_status() -> None:
    md = _md(GGUF_BASE)
    digest = artifact_hash(md.spec.model, md.spec.adapters)
    adapters = (
        _adapter("sql", GGUF_LORA),
        _adapter("poet", AdapterFacts("gguf", kind="adapter/lora"), scale=0.5),
    )
    state = ArtifactState(
        _resolution("gguf", "gemma3"), "Resolved", "ok", digest, "hf://org/base", adapters
    )
    status = {"artifact": artifact_status(state)}
    recorded = status["artifact"]["adapters"]
    assert [(a["name"], a["resolvedRevision"], a["format"]) for a in recorded] == [
        ("sql", "r2", "gguf"),
        ("poet", "r2", "gguf"),
    ]
    restored = state_from_status(status, md.spec.model, md.spec.adapters)
    assert restored is not None
    assert [(a.name, a.scale, a.facts.architecture) for a in restored.adapters] == [
        ("sql", None, "gemma3"),
        ("poet", 0.5, None),
    ]
    # Another adapter list is another resolution.
    assert state_from_status(status, md.spec.model, md.spec.adapters[:1]) is None
    assert state_from_status(status, md.spec.model) is None


# --- policies -----------------------------------------------------------------------------


def test_allowed_sources_cover_every_adapter() -> None:
    policy = parse_model_policy(
        {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelPolicy",
            "metadata": {"name": "prod"},
            "spec": {"allowedSources": ["hf://org/*", "pvc://**"]},
        }
    )
    spec = copy.deepcopy(GGUF_BASE)
    assert check_policy(policy, _md(spec))[0] == []
    spec["adapters"].append({"name": "evil", "source": "hf://evil/lora"})
    (violation,) = check_policy(policy, _md(spec))[0]
    assert (violation.rule, violation.field) == ("allowedSources", "spec.adapters[2].source")
    assert "hf://evil/lora matches none of the allowed patterns" in violation.message
