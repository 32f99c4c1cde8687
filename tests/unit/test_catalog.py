"""The quantization catalog against its sources, and format/engine/GPU resolution."""

from __future__ import annotations

import pytest

from modeldeploy import api
from modeldeploy.catalog import (
    ACCELERATORS_FOR_ENGINE,
    ENGINES_FOR_FORMAT,
    GGUF_FILE_TYPES,
    QUANTIZATIONS,
    Accelerator,
    Engine,
    Format,
    compute_capability,
    quantization_from_name,
    quantization_info,
    resolve_format,
    resolve_quantization,
    vllm_quantization_argument,
)

GIB = 1024**3
LLAMA_3_8B_PARAMETERS = 8_030_261_248  # meta-llama/Meta-Llama-3-8B model card: 8.03B

# llama.cpp tools/quantize/quantize.cpp, QUANT_OPTIONS: file size of Llama-3-8B in GiB.
QUANTIZE_TABLE_GIB = {
    "Q2_K": 2.96,
    "Q3_K_S": 3.41,
    "Q3_K_M": 3.74,
    "Q3_K_L": 4.03,
    "Q4_0": 4.34,
    "Q4_K_S": 4.37,
    "Q4_K_M": 4.58,
    "Q5_0": 5.21,
    "Q5_K_S": 5.21,
    "Q5_K_M": 5.33,
    "Q6_K": 6.14,
    "Q8_0": 7.96,
}
# bartowski/Meta-Llama-3.1-8B-Instruct-GGUF file sizes in bytes (same shapes as Llama-3-8B).
IQ_FILE_BYTES = {"IQ4_XS": 4_447_667_616}
# Its README table, in GB, for the IQ mixes quantize.cpp lists only by main-type bpw.
IQ_FILE_GB = {"IQ3_M": 3.78, "IQ2_M": 2.95}
# Block formats by construction: 16/32-bit floats; AWQ/GPTQ 4-bit weights with an fp16 scale
# per group of 128 (4 + 32/128); FP8 one byte per weight.
EXACT_BITS = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "AWQ": 4.25, "GPTQ": 4.25, "FP8": 8.0}


def test_catalog_covers_exactly_the_api_quantizations() -> None:
    assert set(QUANTIZATIONS) == set(api.QUANTIZATIONS) - {"auto"}


def test_every_quantization_has_a_sourced_size_figure() -> None:
    sourced = set(QUANTIZE_TABLE_GIB) | set(IQ_FILE_BYTES) | set(IQ_FILE_GB) | set(EXACT_BITS)
    assert sourced == set(QUANTIZATIONS)


@pytest.mark.parametrize(("name", "gib"), sorted(QUANTIZE_TABLE_GIB.items()))
def test_gguf_mix_reproduces_llama_cpp_quantize_table(name: str, gib: float) -> None:
    estimated = LLAMA_3_8B_PARAMETERS * quantization_info(name).bits_per_weight / 8
    assert estimated / GIB == pytest.approx(gib, rel=0.005)


@pytest.mark.parametrize(("name", "size"), sorted(IQ_FILE_BYTES.items()))
def test_iq_mix_reproduces_published_file_bytes(name: str, size: int) -> None:
    estimated = LLAMA_3_8B_PARAMETERS * quantization_info(name).bits_per_weight / 8
    assert estimated == pytest.approx(size, rel=0.005)


@pytest.mark.parametrize(("name", "gb"), sorted(IQ_FILE_GB.items()))
def test_iq_mix_reproduces_published_file_gb(name: str, gb: float) -> None:
    estimated = LLAMA_3_8B_PARAMETERS * quantization_info(name).bits_per_weight / 8
    assert estimated / 1e9 == pytest.approx(gb, rel=0.005)


@pytest.mark.parametrize(("name", "bits"), sorted(EXACT_BITS.items()))
def test_exact_formats(name: str, bits: float) -> None:
    assert quantization_info(name).bits_per_weight == bits


def test_bits_order_follows_quality_ladder() -> None:
    ladder = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M"]
    ladder += ["Q6_K", "Q8_0", "F16"]
    bits = [quantization_info(q).bits_per_weight for q in ladder]
    assert bits == sorted(bits)


def test_gguf_only_flags_agree_with_the_api() -> None:
    gguf_only = {name for name, info in QUANTIZATIONS.items() if info.is_gguf_only}
    assert gguf_only == set(api.GGUF_ONLY_QUANTIZATIONS)
    safetensors_only = {n for n, i in QUANTIZATIONS.items() if i.formats == {Format.SAFETENSORS}}
    assert safetensors_only == set(api.SAFETENSORS_ONLY_QUANTIZATIONS)


def test_file_types_name_catalog_entries() -> None:
    assert set(GGUF_FILE_TYPES.values()) <= set(QUANTIZATIONS)
    assert GGUF_FILE_TYPES[15] == "Q4_K_M"  # gguf.LlamaFileType.MOSTLY_Q4_K_M


def test_engines_and_accelerators() -> None:
    assert ENGINES_FOR_FORMAT[Format.GGUF] == (Engine.LLAMACPP,)
    # SGLang serves safetensors too, but only when asked for: auto takes vLLM, the first.
    assert ENGINES_FOR_FORMAT[Format.SAFETENSORS] == (Engine.VLLM, Engine.SGLANG)
    assert ACCELERATORS_FOR_ENGINE[Engine.LLAMACPP] == (Accelerator.GPU, Accelerator.CPU)
    assert ACCELERATORS_FOR_ENGINE[Engine.VLLM] == (Accelerator.GPU,)
    assert ACCELERATORS_FOR_ENGINE[Engine.SGLANG] == (Accelerator.GPU,)


def test_aliases_and_case() -> None:
    assert quantization_info("q4_k").name == "Q4_K_M"
    assert quantization_info("fp16").name == "F16"
    with pytest.raises(KeyError, match="unknown quantization"):
        quantization_info("Q9_X")


@pytest.mark.parametrize(
    ("product", "capability"),
    [
        ("NVIDIA-H100-80GB-HBM3", (9, 0)),
        ("NVIDIA-H200", (9, 0)),
        ("NVIDIA-L4", (8, 9)),
        ("NVIDIA-L40S", (8, 9)),
        ("NVIDIA-A10G", (8, 6)),
        ("NVIDIA-A100-SXM4-80GB", (8, 0)),
        ("Tesla-T4", (7, 5)),
        ("NVIDIA-GeForce-RTX-4090", (8, 9)),
        ("NVIDIA-RTX-6000-Ada-Generation", (8, 9)),
        ("Unknown-Accelerator", None),
    ],
)
def test_compute_capability_from_product(product: str, capability: tuple[int, int] | None) -> None:
    assert compute_capability(product) == capability


def test_fp8_needs_ada_or_hopper() -> None:
    needed = quantization_info("FP8").vllm_min_compute_capability
    assert needed == (8, 9)
    for product, ok in [
        ("NVIDIA-H100-80GB-HBM3", True),
        ("NVIDIA-H200", True),
        ("NVIDIA-L4", True),
        ("NVIDIA-L40S", True),
        ("NVIDIA-A10G", False),
        ("NVIDIA-A100-SXM4-80GB", False),
    ]:
        capability = compute_capability(product)
        assert capability is not None
        assert (capability >= needed) is ok, product


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("hf://Qwen/Qwen2.5-7B-Instruct-GGUF/qwen2.5-7b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("hf://bartowski/Llama-3.2-1B-Instruct-GGUF/Llama-3.2-1B-Instruct-IQ4_XS.gguf", "IQ4_XS"),
        ("hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "AWQ"),
        ("hf://Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "GPTQ"),
        ("hf://neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", "FP8"),
        ("s3://models/llama-q8_0.gguf", "Q8_0"),
        ("hf://TheBloke/model-GGUF/model.Q4_K.gguf", "Q4_K_M"),
        ("hf://Qwen/Qwen2.5-7B-Instruct", None),
        ("hf://Qwen/Qwen2.5-7B-Instruct-GGUF", None),
    ],
)
def test_quantization_from_name(text: str, found: str | None) -> None:
    assert quantization_from_name(text) == found


@pytest.mark.parametrize(
    ("fmt", "quantization", "source", "expected"),
    [
        ("auto", "Q4_K_M", "hf://a/b", Format.GGUF),
        ("auto", "AWQ", "hf://a/b", Format.SAFETENSORS),
        ("auto", "auto", "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", Format.GGUF),
        ("auto", "F16", "https://x/model.gguf", Format.GGUF),
        ("auto", "F16", "hf://meta-llama/Llama-3.1-8B-Instruct", Format.SAFETENSORS),
        ("auto", "auto", "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", Format.SAFETENSORS),
        ("auto", "auto", "s3://bucket/llama-q5_k_m.gguf", Format.GGUF),
        ("gguf", "auto", "hf://a/b", Format.GGUF),
        ("safetensors", "auto", "hf://a/b-GGUF", Format.SAFETENSORS),
    ],
)
def test_resolve_format(fmt: str, quantization: str, source: str, expected: Format) -> None:
    assert resolve_format(fmt, quantization, source) is expected


@pytest.mark.parametrize(
    ("quantization", "fmt", "source", "expected"),
    [
        ("auto", Format.GGUF, "hf://Qwen/Qwen2.5-7B-Instruct-GGUF", "Q4_K_M"),
        ("auto", Format.GGUF, "hf://a/b/model-Q6_K.gguf", "Q6_K"),
        ("auto", Format.SAFETENSORS, "hf://meta-llama/Llama-3.1-8B-Instruct", "BF16"),
        ("auto", Format.SAFETENSORS, "hf://Qwen/Qwen2.5-7B-Instruct-AWQ", "AWQ"),
        ("auto", Format.SAFETENSORS, "hf://a/b-Q4_K_M", "BF16"),
        ("Q5_K_M", Format.GGUF, "hf://a/b", "Q5_K_M"),
    ],
)
def test_resolve_quantization(quantization: str, fmt: Format, source: str, expected: str) -> None:
    assert resolve_quantization(quantization, fmt, source) == expected


@pytest.mark.parametrize(
    ("name", "capability", "argument"),
    [
        ("AWQ", (9, 0), "awq_marlin"),
        ("AWQ", (7, 5), "awq"),
        ("GPTQ", (8, 6), "gptq_marlin"),
        ("GPTQ", None, "gptq"),
        ("FP8", (8, 9), "fp8"),
        ("BF16", (9, 0), None),
    ],
)
def test_vllm_quantization_argument(
    name: str, capability: tuple[int, int] | None, argument: str | None
) -> None:
    assert vllm_quantization_argument(name, capability) == argument
