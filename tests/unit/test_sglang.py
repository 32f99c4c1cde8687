"""SGLang, the third engine: chosen only when named, planned and rendered through its runtime.

The command line is checked against a parser that restates the SGLang server arguments our
renderer and launcher use, each with SGLang's type (docs.sglang.io "Server Arguments",
``python -m sglang.launch_server --help``; ``sglang.srt.server_args.ServerArgs``). SGLang's
own parser needs torch and CUDA wheels, which this machine cannot install for tests.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodepool import E2E_POOL, load_e2e_pool, model_deployment

from modeldeploy.api import SpecError, parse_model_deployment
from modeldeploy.catalog import Engine
from modeldeploy.cli import main
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import PlacementRefusal
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_objects
from modeldeploy.runtimes import runtime_for, sglang
from modeldeploy.runtimes.base import ChatFacts, LaunchRequest
from modeldeploy.serve.launcher import LaunchError, plan_launch

POOL = load_e2e_pool()
CONFIG = OperatorConfig()
H100 = "NVIDIA-H100-80GB-HBM3"
BF16: dict[str, Any] = {
    "model": {
        "source": "hf://Qwen/Qwen2.5-72B-Instruct",
        "parameters": "72B",
        "format": "safetensors",
        "quantization": "BF16",
        "servedName": "qwen-72b",
    },
    "engine": "sglang",
    "hardware": {"gpu": {"products": [H100]}},
    "serving": {"contextLength": 8192, "maxConcurrentRequests": 8},
}


def sglang_server_parser() -> argparse.ArgumentParser:
    """The ``sglang.launch_server`` flags modeldeploy renders, with SGLang's types."""
    parser = argparse.ArgumentParser(prog="sglang.launch_server", exit_on_error=False)
    parser.add_argument("--model-path", "--model", required=True)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name")
    parser.add_argument("--tp-size", "--tensor-parallel-size", type=int)
    parser.add_argument("--context-length", type=int)
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--enable-metrics", action="store_true")
    parser.add_argument(
        "--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"]
    )
    parser.add_argument(
        "--quantization",
        choices=["awq", "awq_marlin", "fp8", "gptq", "gptq_marlin", "marlin", "w8a8_fp8"],
    )
    return parser


def _plan(spec: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    md = parse_model_deployment(model_deployment(copy.deepcopy(spec), name="qwen"))
    placement = plan_placement(md.spec, POOL, CONFIG)
    return placement, render_objects(RenderInputs(md, placement, CONFIG))


def test_auto_never_picks_sglang() -> None:
    spec = copy.deepcopy(BF16)
    spec["engine"] = "auto"
    placement, _ = _plan(spec)
    assert placement.engine is Engine.VLLM


def test_sglang_plan_renders_its_container() -> None:
    placement, objects = _plan(BF16)
    assert placement.engine is Engine.SGLANG
    # 72B BF16 (~134 GiB of weights) spans H100s: one tensor-parallel rank per GPU.
    assert placement.hardware_class.gpu_product == H100
    tp = placement.tensor_parallel_size
    assert tp == placement.gpus_per_replica and tp >= 2
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "sglang"
    assert container["image"] == CONFIG.sglang_image
    assert container["command"] == ["modeldeploy", "serve-runtime", "sglang", "--"]
    args = container["args"]
    assert args[args.index("--tp-size") + 1] == str(tp)
    assert args[args.index("--served-model-name") + 1] == "qwen-72b"
    assert args[args.index("--context-length") + 1] == "8192"
    assert args[args.index("--max-running-requests") + 1] == "8"
    assert args[args.index("--dtype") + 1] == "bfloat16"
    assert "--enable-metrics" in args
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": f"{2 * tp}Gi"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"


def test_sglang_awq_uses_marlin_on_hopper() -> None:
    spec = copy.deepcopy(BF16)
    spec["model"] = {"source": "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "parameters": "7B"}
    placement, objects = _plan(spec)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert placement.quantization == "AWQ"
    assert args[args.index("--quantization") + 1] == "awq_marlin"


def test_sglang_argv_parses_with_its_server_flags() -> None:
    placement, objects = _plan(BF16)
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    argv = sglang.launch_argv("python3", "/models/key/rev", args, host="10.0.0.3,127.0.0.1")
    assert argv[:3] == ["python3", "-m", "sglang.launch_server"]
    parsed = sglang_server_parser().parse_args(argv[3:])
    assert parsed.model_path == "/models/key/rev"
    # SGLang binds one address: the pod IP.
    assert parsed.host == "10.0.0.3"
    assert parsed.port == CONFIG.port
    assert parsed.tp_size == placement.tensor_parallel_size
    assert parsed.served_model_name == "qwen-72b"
    assert 0 < parsed.mem_fraction_static <= 1
    assert parsed.enable_metrics


def test_sglang_user_args_come_last_and_win() -> None:
    argv = sglang.RUNTIME.launch_argv(
        LaunchRequest(
            binary="python3",
            model=Path("/m"),
            args=["--context-length", "4096", "--host", "::", "--context-length", "2048"],
            env={},
            host="10.0.0.3",
            threads=lambda: 1,
            chat_facts=lambda: ChatFacts(None, False),
        )
    )
    parsed = sglang_server_parser().parse_args(argv[3:])
    assert parsed.context_length == 2048 and parsed.host == "::"
    assert argv.count("--host") == 1


def test_launcher_runs_sglang_from_the_published_directory(tmp_path: Path) -> None:
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    env = {
        "MODELDEPLOY_SGLANG_PYTHON": str(python),
        "MODELDEPLOY_MODEL_PATH": str(model),
        "POD_IP": "127.1.2.3",
        "PATH": "",
    }
    launch = plan_launch("sglang", ["--port", "8000"], env)
    assert launch.argv[:5] == [
        str(python),
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model),
    ]
    assert launch.endpoint.port == 8000
    assert launch.endpoint.busy_gauges == ("sglang:num_running_reqs", "sglang:num_queue_reqs")
    with pytest.raises(LaunchError, match="MODELDEPLOY_SGLANG_PYTHON"):
        plan_launch("sglang", [], {**env, "MODELDEPLOY_SGLANG_PYTHON": ""})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": {"source": "hf://a/b-GGUF", "format": "gguf"}}, "spec.engine"),
        ({"model": {"source": "hf://a/b", "quantization": "Q4_K_M"}}, "spec.engine"),
        ({"hardware": {"accelerator": "cpu"}}, "spec.engine"),
    ],
    ids=["gguf", "gguf-quantization", "cpu"],
)
def test_sglang_refuses_gguf_and_cpu(changes: dict[str, Any], field: str) -> None:
    spec = {"model": {"source": "hf://a/b", "parameters": "7B"}, "engine": "sglang", **changes}
    with pytest.raises(SpecError) as refused:
        parse_model_deployment(model_deployment(spec))
    assert refused.value.field_path == field
    assert "sglang" in str(refused.value)


def test_sglang_without_a_gpu_class_is_refused_by_the_planner() -> None:
    cpu_only = [n for n in POOL if "nvidia.com/gpu.present" not in n["metadata"]["labels"]]
    md = parse_model_deployment(model_deployment(copy.deepcopy(BF16)))
    with pytest.raises(PlacementRefusal, match="served by SGLang, which needs a GPU"):
        plan_placement(
            md.spec.model_copy(
                update={
                    "hardware": md.spec.hardware.model_copy(
                        update={"gpu": type(md.spec.hardware.gpu)()}
                    )
                }
            ),
            cpu_only,
            CONFIG,
        )


def test_modeldeploy_plan_of_an_sglang_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(model_deployment(BF16, name="qwen")))
    code = main(["plan", "-f", str(path), "--nodes", str(E2E_POOL), "-o", "json"])
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out)
    assert plan["decision"]["engine"] == "sglang"
    assert plan["decision"]["tensorParallelSize"] >= 2
    deployment = next(o for o in plan["objects"] if o["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["name"] == "sglang"


def test_sglang_sizing_is_paged_like_vllm() -> None:
    assert runtime_for("sglang").sizing.paged_kv_cache
    assert (
        runtime_for("sglang").sizing.overhead_per_device
        == runtime_for("vllm").sizing.overhead_per_device
    )
