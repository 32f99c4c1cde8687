"""The launcher's view of a pod and local mode's view of this machine, without an engine.

The cache is filled by the real fetcher from a pvc:// source (a directory standing for the
mounted claim) with small GGUF files written by the ``gguf`` package; the engine binary is
``/bin/true`` where only the command line is looked at.
"""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from nodepool import model_deployment
from tiny_gguf import write_tiny_model

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch import FetchRequest, fetch
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_container
from modeldeploy.runtimes import flag_value, llamacpp
from modeldeploy.serve.launcher import LaunchError, engine_binary, plan_launch
from modeldeploy.serve.local import LocalServeError, prepare
from modeldeploy.serve.machine import (
    Gpu,
    cpu_flags,
    gfd_product,
    mem_total_bytes,
    node_object,
    parse_nvidia_smi,
)
from modeldeploy.serve.model import (
    ModelNotFoundError,
    find_published,
    read_chat_facts,
    read_gguf_info,
)

TRUE = "/bin/true"


@pytest.fixture
def claims(tmp_path: Path) -> Path:
    """A claims root holding claim ``models`` with one GGUF and a split set."""
    root = tmp_path / "claims"
    write_tiny_model(root / "models" / "tiny-Q4_K_M.gguf")
    for part in (1, 2):
        write_tiny_model(root / "split" / f"big-Q4_K_M-0000{part}-of-00002.gguf", arch="llama")
    checkpoint = root / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (checkpoint / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return root


def _fetch(source: str, cache: Path, claims: Path) -> None:
    fetch(FetchRequest(source=source), cache, env={"MODELDEPLOY_PVC_ROOT": str(claims)})


def _pod_env(
    source: str, cache: Path, model: dict[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """The environment a rendered pod gives the launcher (POD_IP resolved by the kubelet)."""
    spec = {"source": source, "parameters": "270M", **(model or {"format": "gguf"})}
    md = parse_model_deployment(model_deployment({"model": spec}))
    node = GPU_NODE if spec.get("format") == "safetensors" else CPU_NODE
    config = OperatorConfig()
    container = render_container(RenderInputs(md, plan_placement(md.spec, [node], config), config))
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(
        {"MODELDEPLOY_CACHE_DIR": str(cache), "POD_IP": "10.244.1.7", "PATH": "/nonexistent"}
    )
    env.update(extra)
    return env


def test_launcher_finds_the_published_gguf_and_completes_the_command(
    tmp_path: Path, claims: Path
) -> None:
    cache = tmp_path / "cache"
    source = "pvc://models/tiny-Q4_K_M.gguf"
    _fetch(source, cache, claims)
    env = _pod_env(source, cache, MODELDEPLOY_LLAMA_SERVER=TRUE)
    args = ["--port", "8000", "--alias", "tiny", "--threads", "3", "--metrics"]
    launch = plan_launch("llamacpp", args, env)
    model = Path(launch.argv[launch.argv.index("-m") + 1])
    assert model.name == "tiny-Q4_K_M.gguf" and model.is_relative_to(cache) and model.is_file()
    assert flag_value(launch.argv, "--host") == "10.244.1.7,127.0.0.1"
    assert flag_value(launch.argv, "--chat-template-file") == str(
        llamacpp.template_path("gemma.jinja")
    )
    assert flag_value(launch.argv, "--threads") == "3"
    assert launch.argv[0] == TRUE
    assert (launch.endpoint.host, launch.endpoint.port) == ("10.244.1.7", 8000)
    assert launch.drain_seconds == float(env["MODELDEPLOY_DRAIN_SECONDS"])


def test_launcher_takes_shard_one_of_a_split_gguf(tmp_path: Path, claims: Path) -> None:
    cache = tmp_path / "cache"
    _fetch("pvc://split", cache, claims)
    published = find_published(cache, "pvc://split", format="gguf", quantization="Q4_K_M")
    assert sorted(published.files) == [
        "big-Q4_K_M-00001-of-00002.gguf",
        "big-Q4_K_M-00002-of-00002.gguf",
    ]
    launch = plan_launch(
        "llamacpp", [], _pod_env("pvc://split", cache, MODELDEPLOY_LLAMA_SERVER=TRUE)
    )
    assert launch.argv[launch.argv.index("-m") + 1].endswith("big-Q4_K_M-00001-of-00002.gguf")
    assert "--chat-template-file" not in launch.argv  # llama: no template of ours
    assert launch.endpoint.port == 8080  # llama-server's default when no --port is rendered


@pytest.mark.parametrize("template", [None, "{{ messages }}"])
@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_chat_facts_agree_with_a_full_header_parse(
    tmp_path: Path, arch: str, template: str | None
) -> None:
    model = write_tiny_model(tmp_path / "m.gguf", arch=arch, template=template)
    facts = read_chat_facts(model)
    info = read_gguf_info(model)
    assert facts.architecture == info.architecture.architecture == arch
    assert facts.has_chat_template == info.has_chat_template == (template is not None)


def test_model_path_env_wins_and_a_model_template_is_kept(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "own.gguf", template="{{ messages }}")
    assert read_chat_facts(model).has_chat_template
    env = {"MODELDEPLOY_MODEL_PATH": str(model), "MODELDEPLOY_LLAMA_SERVER": TRUE}
    launch = plan_launch("llamacpp", ["--host", "127.0.0.3"], env)
    assert launch.argv[launch.argv.index("-m") + 1] == str(model)
    assert "--chat-template-file" not in launch.argv
    assert launch.argv.count("--host") == 1 and launch.endpoint.host == "127.0.0.3"


def test_launcher_says_what_is_missing(tmp_path: Path, claims: Path) -> None:
    env = _pod_env(
        "pvc://models/tiny-Q4_K_M.gguf", tmp_path / "empty", MODELDEPLOY_LLAMA_SERVER=TRUE
    )
    with pytest.raises(LaunchError, match=r"no complete copy of pvc://models/tiny-Q4_K_M.gguf"):
        plan_launch("llamacpp", [], env)
    cache = tmp_path / "cache"
    _fetch("pvc://models/tiny-Q4_K_M.gguf", cache, claims)
    with pytest.raises(ModelNotFoundError, match="revision deadbeef"):
        find_published(cache, "pvc://models/tiny-Q4_K_M.gguf", revision="deadbeef")
    with pytest.raises(ModelNotFoundError, match="quantization Q8_0"):
        find_published(cache, "pvc://models/tiny-Q4_K_M.gguf", quantization="Q8_0")
    with pytest.raises(LaunchError, match="make llama-server"):
        engine_binary("llamacpp", {"PATH": "/nonexistent", "MODELDEPLOY_CACHE": str(tmp_path)})
    with pytest.raises(LaunchError, match="vllm not found"):
        engine_binary("vllm", {"PATH": "/nonexistent"})


def test_vllm_launch_serves_the_revision_directory(tmp_path: Path, claims: Path) -> None:
    cache = tmp_path / "cache"
    fetch(
        FetchRequest(source="pvc://checkpoint", format="safetensors"),
        cache,
        env={"MODELDEPLOY_PVC_ROOT": str(claims)},
    )
    env = _pod_env("pvc://checkpoint", cache, {"format": "safetensors"}, MODELDEPLOY_VLLM=TRUE)
    launch = plan_launch("vllm", ["--port", "8000"], env)
    assert launch.argv[:2] == [TRUE, "serve"]
    served = Path(launch.argv[2])
    assert (served / "config.json").is_file() and (served / "model.safetensors").is_file()


# --- this machine ---------------------------------------------------------------------------

CPUINFO = """\
processor\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f amx_bf16
processor\t: 1
flags\t\t: fpu sse2
"""


def test_machine_parsers() -> None:
    assert {"avx2", "avx512f", "amx_bf16"} <= cpu_flags(CPUINFO)
    assert mem_total_bytes("MemTotal:       24576000 kB\nMemFree: 1 kB\n") == 24576000 * 1024
    assert mem_total_bytes("") == 0
    smi = "NVIDIA H100 80GB HBM3, 81559, 9.0\nNVIDIA L4, 23034, 8.9\nbad line\n"
    assert parse_nvidia_smi(smi) == [
        Gpu("NVIDIA H100 80GB HBM3", 81559, (9, 0)),
        Gpu("NVIDIA L4", 23034, (8, 9)),
    ]
    assert gfd_product("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"


def _local_md(model: dict[str, Any], **serving: Any) -> Any:
    spec: dict[str, Any] = {"model": copy.deepcopy(model)}
    if serving:
        spec["serving"] = serving
    return parse_model_deployment(model_deployment(spec))


CPU_NODE = node_object(arch="amd64", cpus=2, memory_bytes=24 << 30, flags=cpu_flags(CPUINFO))
GPU_NODE = node_object(
    arch="amd64",
    cpus=16,
    memory_bytes=128 << 30,
    flags={"avx2"},
    gpus=[Gpu("NVIDIA H100 80GB HBM3", 81559, (9, 0))],
)


def test_local_mode_refuses_safetensors_without_a_gpu(tmp_path: Path) -> None:
    md = _local_md({"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"})
    with pytest.raises(LocalServeError, match=r"this machine cannot serve .*needs a GPU"):
        prepare(md, cache=tmp_path, host="127.0.0.1", port=8000, env={}, node=CPU_NODE)
    assert not any(tmp_path.iterdir())  # refused before anything was fetched


def test_local_mode_refuses_a_model_too_big_for_this_machine(tmp_path: Path) -> None:
    md = _local_md({"source": "hf://bartowski/Llama-3.1-70B-GGUF", "quantization": "Q8_0"})
    with pytest.raises(LocalServeError, match="no node holds one replica"):
        prepare(md, cache=tmp_path, host="127.0.0.1", port=8000, env={}, node=CPU_NODE)


def test_local_mode_needs_the_engine_before_fetching(tmp_path: Path) -> None:
    md = _local_md({"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"})
    with pytest.raises(LocalServeError, match="vllm not found"):
        prepare(
            md,
            cache=tmp_path,
            host="127.0.0.1",
            port=8000,
            env={"PATH": "/nonexistent"},
            node=GPU_NODE,
        )
    assert not any(tmp_path.iterdir())


def test_local_mode_renders_the_pod_command_for_this_machine(tmp_path: Path, claims: Path) -> None:
    md = _local_md(
        {"source": "pvc://models/tiny-Q4_K_M.gguf", "parameters": "270M"},
        maxConcurrentRequests=3,
        args=["--temp", "0.2"],
    )
    env = {"MODELDEPLOY_PVC_ROOT": str(claims), "MODELDEPLOY_LLAMA_SERVER": TRUE, "HOME": "/h"}
    prepared = prepare(
        md, cache=tmp_path / "c", host="127.0.0.1", port=9123, env=env, node=CPU_NODE
    )
    assert prepared.engine == "llamacpp"
    assert prepared.model_path.name == "tiny-Q4_K_M.gguf" and prepared.model_path.exists()
    assert flag_value(prepared.args, "--port") == "9123"
    assert flag_value(prepared.args, "--parallel") == "3"
    assert prepared.args[-2:] == ["--temp", "0.2"]
    assert prepared.env["POD_IP"] == "127.0.0.1"
    assert prepared.env["HOME"] == "/h"  # the pod's HOME=/tmp is not forced on this machine
    assert prepared.env["MODELDEPLOY_MODEL_PATH"] == str(prepared.model_path)
    # The real architecture was read: 2 layers, not the 270M hint's guess.
    assert prepared.placement.architecture is not None
    assert prepared.placement.architecture.layers == 2


def test_local_example_plans_llamacpp_on_a_small_cpu_machine() -> None:
    from modeldeploy.cli_common import load_model_deployment

    example = Path(__file__).resolve().parents[2] / "examples" / "local" / "gemma-270m.yaml"
    md = parse_model_deployment(load_model_deployment(str(example)))
    placement = plan_placement(md.spec, [CPU_NODE], OperatorConfig())
    assert (str(placement.engine), placement.parallel) == ("llamacpp", 2)
    assert md.spec.model.source.startswith("pvc://")
