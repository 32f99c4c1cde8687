"""``modeldeploy plan`` and ``modeldeploy estimate``: output, exit codes, and stderr on error."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import yaml
from nodepool import E2E_POOL, load_e2e_pool, model_deployment

from modeldeploy.cli import main

GGUF_MODEL = {"model": {"source": "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "quantization": "Q4_K_M"}}


def _write(path: Path, *documents: Any) -> str:
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL, name="qwen"))
    code, out, err = _run(["plan", "-f", md, "--nodes", str(E2E_POOL)], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("qwen: llamacpp on gpu (gpu/amd64/NVIDIA-L4/x1, 1 node)")
    assert "Deployment/qwen" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_plan_full_output(output: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL))
    code, out, err = _run(["plan", "-f", md, "--nodes", str(E2E_POOL), "-o", output], capsys)
    assert (code, err) == (0, "")
    data = json.loads(out) if output == "json" else yaml.safe_load(out)
    assert set(data) == {"decision", "objects"}
    assert data["decision"]["engine"] == "llamacpp"
    assert [o["kind"] for o in data["objects"]] == [
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "ConfigMap",  # the ML-BOM
    ]


def test_plan_alternatives_with_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL, name="qwen"))
    settings = _write(
        tmp_path / "settings.yaml", {"planning": {"gpuPricesPerHour": {"NVIDIA-L4": 0.8}}}
    )
    argv = ["plan", "-f", md, "--nodes", str(E2E_POOL), "--settings", settings]
    code, out, err = _run([*argv, "--alternatives"], capsys)
    assert (code, err) == (0, "")
    chosen = [line for line in out.splitlines() if line.startswith("*  ")]
    assert len(chosen) == 1 and "gpu/amd64/NVIDIA-L4/x1" in chosen[0] and "$0.80/h" in chosen[0]
    assert "cpu/amd64/avx2/c5a.4xlarge" in out
    code, out, _ = _run([*argv, "--alternatives", "-o", "json"], capsys)
    rows = json.loads(out)["alternatives"]
    assert [r["hardwareClass"] for r in rows if r["chosen"]] == ["gpu/amd64/NVIDIA-L4/x1"]
    code, out, _ = _run(argv, capsys)
    assert "  cost      $0.80/h per replica, $0.80/h in all" in out


def test_plan_alternatives_exit_2_when_nothing_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = {**GGUF_MODEL, "hardware": {"gpu": {"products": ["B200"]}}}
    md = _write(tmp_path / "md.yaml", model_deployment(spec))
    code, out, _ = _run(["plan", "-f", md, "--nodes", str(E2E_POOL), "--alternatives"], capsys)
    assert code == 2
    assert "no: GPU: spec.hardware.gpu products rules it out" in out


def test_plan_reads_a_kubectl_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL))
    nodes = _write(
        tmp_path / "nodes.yaml", {"apiVersion": "v1", "kind": "List", "items": load_e2e_pool()}
    )
    code, out, _ = _run(["plan", "-f", md, "--nodes", nodes, "-o", "json"], capsys)
    assert code == 0
    assert json.loads(out)["decision"]["nodeCount"] == 1


def test_plan_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(model_deployment(GGUF_MODEL))))
    code, out, _ = _run(["plan", "-f", "-", "--nodes", str(E2E_POOL), "-o", "json"], capsys)
    assert code == 0 and json.loads(out)["decision"]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (model_deployment({"model": {"source": "hf://a/b", "colour": "red"}}), "spec.model.colour"),
        (model_deployment({"model": {"source": "ftp://a/b"}}), "spec.model.source"),
        (
            model_deployment({**GGUF_MODEL, "hardware": {"gpu": {"products": ["B200"]}}}),
            "spec.hardware.gpu.products",
        ),
        (
            model_deployment(
                {**GGUF_MODEL, "serving": {"contextLength": 1048576, "maxConcurrentRequests": 64}}
            ),
            "spec.serving.contextLength",
        ),
    ],
)
def test_plan_refuses_with_one_message(
    document: dict[str, Any], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = _write(tmp_path / "md.yaml", document)
    code, out, err = _run(["plan", "-f", md, "--nodes", str(E2E_POOL), "-o", "json"], capsys)
    assert code == 2
    assert out == ""
    assert err.startswith(f"modeldeploy plan: error: {field}: ")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("md", "nodes", "says"),
    [
        ("missing.yaml", None, "missing.yaml"),
        ("md.yaml", "missing.yaml", "missing.yaml"),
        ("two.yaml", None, "expected one ModelDeployment, found 2"),
        ("bad.yaml", None, "not valid YAML"),
        ("md.yaml", "pods.yaml", "expected Node objects, found Pod"),
    ],
)
def test_plan_input_errors(
    md: str, nodes: str | None, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL))
    _write(tmp_path / "two.yaml", model_deployment(GGUF_MODEL), model_deployment(GGUF_MODEL))
    (tmp_path / "bad.yaml").write_text("spec: [unclosed\n")
    _write(tmp_path / "pods.yaml", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    argv = [
        "plan",
        "-f",
        str(tmp_path / md),
        "--nodes",
        str(tmp_path / nodes) if nodes else str(E2E_POOL),
    ]
    code, out, err = _run(argv, capsys)
    assert (code, out) == (2, "")
    assert says in err


def test_plan_cluster_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment(GGUF_MODEL))
    code, out, err = _run(["plan", "-f", md, "--kubeconfig", str(tmp_path / "none")], capsys)
    assert (code, out) == (1, "")
    assert "cannot list nodes and pods" in err


def test_plan_needs_nodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["plan", "-f", "md.yaml"])
    assert caught.value.code == 2
    assert "--nodes" in capsys.readouterr().err


def test_plan_as_a_process(tmp_path: Path) -> None:
    md = _write(tmp_path / "md.yaml", model_deployment({"model": {"source": "hf://a/gpt2"}}))
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy", "plan", "-f", md, "--nodes", str(E2E_POOL)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("modeldeploy plan: error: spec.model.parameters: ")


def test_estimate(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", "--parameters", "7B", "--quantization", "Q4_K_M", "--context", "8192"]
    code, out, err = _run([*argv, "--parallel", "4"], capsys)
    assert (code, err) == (0, "")
    assert "weights       4.0 GiB" in out
    assert "32768 tokens for 4 x 8192" in out
    code, out, _ = _run([*argv, "-o", "json"], capsys)
    data = json.loads(out)
    assert data["engine"] == "llamacpp"
    assert data["totalBytes"] == data["weightsBytes"] + data["kvCacheBytes"] + data["overheadBytes"]


def test_estimate_unquantized_defaults_to_vllm(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        ["estimate", "--parameters", "8B", "--quantization", "BF16", "-o", "json"], capsys
    )
    assert code == 0 and json.loads(out)["engine"] == "vllm"


def test_estimate_from_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "hidden_size": 3584,
                "intermediate_size": 18944,
                "num_attention_heads": 28,
                "num_hidden_layers": 28,
                "num_key_value_heads": 4,
                "vocab_size": 152064,
                "torch_dtype": "bfloat16",
            }
        )
    )
    code, out, _ = _run(["estimate", "--config-json", str(config), "-o", "json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["quantization"] == "BF16"
    assert data["kvBytesPerToken"] == 57344
    assert data["parameters"] == pytest.approx(7_615_616_512, rel=1e-4)

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_embedding_length(8)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    code, out, _ = _run(["estimate", "--gguf", str(path), "--context", "16"], capsys)
    assert code == 0
    assert "F16" in out and "(from file)" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["estimate", "--parameters", "7B"], "--quantization is required"),
        (["estimate", "--quantization", "Q4_K_M"], "--parameters is required"),
        (["estimate", "--parameters", "seven", "--quantization", "Q4_K_M"], "--parameters"),
        (["estimate", "--parameters", "7B", "--quantization", "Q9"], "unknown quantization"),
        (
            ["estimate", "--parameters", "7B", "--quantization", "F16", "--parallel", "0"],
            "at least 1",
        ),
        (["estimate", "--gguf", "/nonexistent.gguf"], "cannot read the model metadata"),
    ],
)
def test_estimate_errors(argv: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(argv, capsys)
    assert (code, out) == (2, "")
    assert says in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([], capsys)
    assert code == 2
    assert "plan" in out and "estimate" in out
