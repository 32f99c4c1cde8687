"""Memory sizing against published figures of real models, and the metadata readers.

Architectures are the real ``config.json`` values on the Hugging Face Hub:
meta-llama/Llama-3.1-8B, meta-llama/Llama-3.1-70B, Qwen/Qwen2.5-7B-Instruct.
Published figures:
- Hugging Face blog "Llama 3.1 - 405B, 70B & 8B with multilinguality and long context"
  (huggingface.co/blog/llama31), "Inference Memory Requirements": weights 8B FP16 16 GB,
  FP8 8 GB, INT4 4 GB; 70B 140 / 70 / 35 GB; KV cache in fp16 for 1k / 16k / 128k tokens:
  8B 0.125 / 1.95 / 15.62 GB, 70B 0.313 / 4.88 / 39.06 GB (computed for 1024, 16000 and
  128000 tokens and printed in GiB, as huggingface/blog issue 2345 works out).
- Parameter counts on the model pages: 8,030,261,248; 70,553,706,496; 7,615,616,512.
- GGUF file sizes in bytes: bartowski/Meta-Llama-3.1-8B-Instruct-GGUF,
  bartowski/Llama-3.2-3B-Instruct-GGUF, Qwen/Qwen2.5-Coder-7B-Instruct-GGUF (the Qwen2.5-7B
  architecture), unsloth/DeepSeek-R1-Distill-Qwen-14B-GGUF; and in GB, bartowski's table for
  the Llama-3.1-70B architecture (Llama-3.1-Nemotron-70B-Instruct).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from modeldeploy.catalog import Engine
from modeldeploy.fetch.gguf_header import load_hf_config, read_gguf_metadata
from modeldeploy.runtimes import runtime_for
from modeldeploy.sizing import (
    FALLBACK_LAYERS,
    GIB,
    ModelArchitecture,
    dense_parameter_count,
    estimate_memory,
    fallback_kv_bytes_per_token,
    fallback_layers,
    kv_tokens,
    overhead_bytes,
    parameters_from_name,
    read_hf_config,
    weights_bytes,
)

LLAMA_31_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
LLAMA_31_70B: dict[str, Any] = {
    **LLAMA_31_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
}
QWEN_25_7B: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "max_position_embeddings": 32768,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 152064,
}
LLAMA_31_8B_PARAMS = 8_030_261_248
LLAMA_31_70B_PARAMS = 70_553_706_496
QWEN_25_7B_PARAMS = 7_615_616_512
LLAMA_32_3B_PARAMS = 3_212_749_824
QWEN_14B_PARAMS = 14_770_033_664


@pytest.mark.parametrize(
    ("config", "published"),
    [
        (LLAMA_31_8B, LLAMA_31_8B_PARAMS),
        (LLAMA_31_70B, LLAMA_31_70B_PARAMS),
        # Qwen2 has q/k/v biases (28 * 4608 parameters) the dense count leaves out.
        (QWEN_25_7B, QWEN_25_7B_PARAMS),
    ],
)
def test_parameter_count_from_config(config: dict[str, Any], published: int) -> None:
    arch = read_hf_config(config)
    assert arch.parameters == pytest.approx(published, rel=1e-4)


def test_config_architecture_fields() -> None:
    arch = read_hf_config(QWEN_25_7B)
    assert (arch.layers, arch.attention_heads, arch.kv_heads) == (28, 28, 4)
    assert (arch.key_length, arch.value_length) == (128, 128)
    assert arch.context_length == 32768
    assert arch.quantization == "BF16"
    assert arch.architecture == "Qwen2ForCausalLM"


@pytest.mark.parametrize(
    ("config", "tokens", "published_gib"),
    [
        (LLAMA_31_8B, 1024, 0.125),
        (LLAMA_31_8B, 16000, 1.95),
        (LLAMA_31_8B, 128000, 15.62),
        (LLAMA_31_70B, 1024, 0.313),
        (LLAMA_31_70B, 16000, 4.88),
        (LLAMA_31_70B, 128000, 39.06),
    ],
)
def test_kv_cache_matches_hugging_face_blog(
    config: dict[str, Any], tokens: int, published_gib: float
) -> None:
    estimate = estimate_memory(
        quantization="BF16",
        rules=runtime_for(Engine.VLLM).sizing,
        context_length=tokens,
        parallel=1,
        architecture=read_hf_config(config),
    )
    assert estimate.kv_source == "architecture"
    assert estimate.kv_cache_bytes / GIB == pytest.approx(published_gib, rel=0.005)


def test_kv_cache_per_token_of_real_models() -> None:
    # 2 (K and V) x layers x kv_heads x head_dim x 2 bytes
    assert read_hf_config(LLAMA_31_8B).kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2
    assert read_hf_config(LLAMA_31_70B).kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    assert read_hf_config(QWEN_25_7B).kv_bytes_per_token() == 2 * 28 * 4 * 128 * 2


def test_kv_cache_scales_with_parallel_sequences() -> None:
    arch = read_hf_config(QWEN_25_7B)
    one = estimate_memory(
        quantization="Q4_K_M",
        rules=runtime_for(Engine.LLAMACPP).sizing,
        context_length=8192,
        parallel=1,
        architecture=arch,
    )
    four = estimate_memory(
        quantization="Q4_K_M",
        rules=runtime_for(Engine.LLAMACPP).sizing,
        context_length=8192,
        parallel=4,
        architecture=arch,
    )
    assert four.kv_cache_bytes == 4 * one.kv_cache_bytes == 4 * 57344 * 8192


@pytest.mark.parametrize(
    ("parameters", "quantization", "published_gb", "tolerance"),
    [
        (8e9, "F16", 16, 0.0),
        (8e9, "FP8", 8, 0.0),
        (70e9, "BF16", 140, 0.0),
        (70e9, "FP8", 70, 0.0),
        # The blog counts a bare 4 bits; AWQ/GPTQ add an fp16 scale per 128 weights (+6.25%).
        (8e9, "AWQ", 4, 0.07),
        (70e9, "GPTQ", 35, 0.07),
    ],
)
def test_weights_match_hugging_face_blog(
    parameters: float, quantization: str, published_gb: float, tolerance: float
) -> None:
    estimated = weights_bytes(round(parameters), quantization)
    assert estimated / 1e9 == pytest.approx(published_gb, rel=tolerance or 1e-9)


@pytest.mark.parametrize(
    ("parameters", "quantization", "published_bytes"),
    [
        (LLAMA_31_8B_PARAMS, "Q4_K_M", 4_920_739_232),
        (LLAMA_31_8B_PARAMS, "Q5_K_M", 5_732_992_416),
        (LLAMA_31_8B_PARAMS, "Q8_0", 8_540_775_840),
        (LLAMA_31_8B_PARAMS, "IQ4_XS", 4_447_667_616),
        (LLAMA_32_3B_PARAMS, "Q4_K_M", 2_019_377_696),
        (LLAMA_32_3B_PARAMS, "Q8_0", 3_421_899_296),
        (QWEN_25_7B_PARAMS, "Q4_K_M", 4_683_073_536),
        (QWEN_25_7B_PARAMS, "Q5_K_M", 5_444_831_232),
        (QWEN_25_7B_PARAMS, "Q6_K", 6_254_198_784),
        (QWEN_14B_PARAMS, "Q4_K_M", 8_988_109_984),
        (QWEN_14B_PARAMS, "Q6_K", 12_124_683_424),
        (LLAMA_31_70B_PARAMS, "Q8_0", 74.98e9),
        (LLAMA_31_70B_PARAMS, "Q6_K", 57.89e9),
        (LLAMA_31_70B_PARAMS, "Q5_K_M", 49.95e9),
        (LLAMA_31_70B_PARAMS, "Q5_K_S", 48.66e9),
        (LLAMA_31_70B_PARAMS, "Q4_K_M", 42.52e9),
        (LLAMA_31_70B_PARAMS, "Q4_K_S", 40.35e9),
        (LLAMA_31_70B_PARAMS, "Q4_0", 40.12e9),
        (LLAMA_31_70B_PARAMS, "IQ4_XS", 37.90e9),
        (LLAMA_31_70B_PARAMS, "Q3_K_L", 37.14e9),
        (LLAMA_31_70B_PARAMS, "Q3_K_M", 34.27e9),
        (LLAMA_31_70B_PARAMS, "IQ3_M", 31.94e9),
        (LLAMA_31_70B_PARAMS, "Q3_K_S", 30.91e9),
    ],
)
def test_weights_match_published_gguf_files(
    parameters: int, quantization: str, published_bytes: float
) -> None:
    # Within 3% below and 5% above: the bits come from an 8B model with a large vocabulary,
    # so bigger models come out slightly high, which is the safe side for placement.
    ratio = weights_bytes(parameters, quantization) / published_bytes
    assert 0.97 <= ratio <= 1.05


def test_awq_keeps_embeddings_in_16_bits_when_the_vocabulary_is_known() -> None:
    arch = read_hf_config(LLAMA_31_8B)
    flat = weights_bytes(LLAMA_31_8B_PARAMS, "AWQ")
    split = weights_bytes(LLAMA_31_8B_PARAMS, "AWQ", arch)
    embeddings = 2 * 128256 * 4096
    assert split == round((LLAMA_31_8B_PARAMS - embeddings) * 4.25 / 8 + embeddings * 2)
    assert split > flat
    # Quantizations that store embeddings like the rest ignore the split.
    assert weights_bytes(LLAMA_31_8B_PARAMS, "Q4_K_M", arch) == weights_bytes(
        LLAMA_31_8B_PARAMS, "Q4_K_M"
    )


def test_total_is_weights_plus_kv_plus_overhead() -> None:
    estimate = estimate_memory(
        quantization="Q4_K_M",
        rules=runtime_for(Engine.LLAMACPP).sizing,
        context_length=4096,
        parallel=4,
        architecture=read_hf_config(QWEN_25_7B),
    )
    assert estimate.total_bytes == (
        estimate.weights_bytes + estimate.kv_cache_bytes + estimate.overhead_bytes
    )
    assert estimate.overhead_bytes == GIB + round(estimate.weights_bytes * 0.05)
    data = estimate.as_dict()
    assert data["totalBytes"] == estimate.total_bytes
    assert data["kvSource"] == "architecture"
    assert data["weightsSource"] == "parameters"


def test_overhead_per_engine_and_device() -> None:
    assert overhead_bytes(runtime_for(Engine.LLAMACPP).sizing, 0, 1) == GIB
    assert overhead_bytes(runtime_for(Engine.VLLM).sizing, 0, 1) == 2 * GIB
    assert overhead_bytes(runtime_for(Engine.VLLM).sizing, 0, 4) == 8 * GIB
    assert overhead_bytes(runtime_for(Engine.VLLM).sizing, 100 * GIB, 1) == 2 * GIB + 5 * GIB


def test_tensor_parallel_beyond_kv_heads_replicates_the_cache() -> None:
    arch = read_hf_config(QWEN_25_7B)  # 4 KV heads
    common: dict[str, Any] = {
        "quantization": "BF16",
        "rules": runtime_for(Engine.VLLM).sizing,
        "context_length": 4096,
        "parallel": 1,
        "architecture": arch,
    }
    tp4 = estimate_memory(**common, devices=4, tensor_parallel_size=4)
    tp8 = estimate_memory(**common, devices=8, tensor_parallel_size=8)
    assert tp8.kv_cache_bytes == 2 * tp4.kv_cache_bytes


def test_fallback_kv_for_a_known_size_class_matches_llama() -> None:
    # Llama-3.1-8B's real layout is the fallback's: 32 layers of 8 KV heads x 128.
    real = read_hf_config(LLAMA_31_8B).kv_bytes_per_token()
    assert fallback_kv_bytes_per_token(8_000_000_000) == real
    real_70b = read_hf_config(LLAMA_31_70B).kv_bytes_per_token()
    assert fallback_kv_bytes_per_token(70_000_000_000) == real_70b
    # Qwen2.5-7B has only 4 KV heads: the fallback errs high, never low.
    assert (
        fallback_kv_bytes_per_token(7_000_000_000)
        >= read_hf_config(QWEN_25_7B).kv_bytes_per_token()
    )


def test_fallback_layers_are_monotonic() -> None:
    sizes = [5e8, 1e9, 3e9, 8e9, 14e9, 32e9, 70e9, 405e9]
    layers = [fallback_layers(round(s)) for s in sizes]
    assert layers == sorted(layers)
    assert layers[-1] == 126
    assert [limit for limit, _ in FALLBACK_LAYERS] == sorted(limit for limit, _ in FALLBACK_LAYERS)


def test_estimate_without_architecture_uses_fallback() -> None:
    estimate = estimate_memory(
        quantization="Q4_K_M",
        rules=runtime_for(Engine.LLAMACPP).sizing,
        context_length=4096,
        parallel=1,
        parameters=7_000_000_000,
    )
    assert estimate.kv_source == "fallback"
    assert estimate.weights_source == "parameters"


def test_estimate_needs_a_parameter_count() -> None:
    with pytest.raises(ValueError, match="parameter count"):
        estimate_memory(
            quantization="Q4_K_M",
            rules=runtime_for(Engine.LLAMACPP).sizing,
            context_length=4096,
            parallel=1,
        )


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("hf://Qwen/Qwen2.5-7B-Instruct-GGUF", 7_000_000_000),
        ("hf://meta-llama/Llama-3.1-70B-Instruct", 70_000_000_000),
        ("hf://Qwen/Qwen2.5-0.5B-Instruct", 500_000_000),
        ("hf://HuggingFaceTB/SmolLM2-360M-Instruct", 360_000_000),
        ("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", 56_000_000_000),
        ("hf://openai-community/gpt2", None),
    ],
)
def test_parameters_from_name(text: str, count: int | None) -> None:
    assert parameters_from_name(text) == count


def test_config_reader_variants(tmp_path: Path) -> None:
    awq = read_hf_config({**QWEN_25_7B, "quantization_config": {"quant_method": "awq", "bits": 4}})
    assert awq.quantization == "AWQ"
    explicit_head = read_hf_config({**LLAMA_31_8B, "head_dim": 64})
    assert explicit_head.key_length == 64
    nested = read_hf_config({"architectures": ["X"], "text_config": LLAMA_31_8B})
    assert nested.layers == 32 and nested.parameters == LLAMA_31_8B_PARAMS
    mha = read_hf_config({k: v for k, v in LLAMA_31_8B.items() if k != "num_key_value_heads"})
    assert mha.kv_heads == 32
    moe = read_hf_config({**LLAMA_31_8B, "num_local_experts": 8})
    assert moe.parameters is None  # not a dense shape: the hint decides
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN_25_7B))
    assert load_hf_config(path) == read_hf_config(QWEN_25_7B)
    path.write_text("[]")
    with pytest.raises(ValueError, match="JSON object"):
        load_hf_config(path)


def test_dense_parameter_count_needs_every_shape() -> None:
    assert dense_parameter_count(ModelArchitecture(layers=2)) is None


def _write_gguf(path: Path, *, kv_heads: int | list[int] = 2, q8: bool = False) -> None:
    """A tiny but real GGUF: llama metadata and small random tensors."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(kv_heads)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.ALL_F32))
    writer.add_token_list([f"t{i}" for i in range(32)])
    writer.add_tensor("token_embd.weight", rng.standard_normal((32, 64), dtype=np.float32))
    weight = rng.standard_normal((64, 64), dtype=np.float32)
    if q8:
        quantized = gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(
            "blk.0.attn_q.weight", quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0
        )
    else:
        writer.add_tensor("blk.0.attn_q.weight", weight)
        writer.add_tensor("output.weight", rng.standard_normal((32, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_header_reader(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path)
    arch = read_gguf_metadata(path)
    assert arch.architecture == "llama"
    assert (arch.layers, arch.attention_heads, arch.kv_heads) == (2, 4, 2)
    assert (arch.hidden_size, arch.key_length, arch.value_length) == (64, 16, 16)
    assert arch.context_length == 2048
    assert arch.vocab_size == 32
    assert arch.intermediate_size == 128
    assert arch.quantization == "F32"
    assert arch.parameters == 32 * 64 + 64 * 64 + 32 * 64
    assert arch.weights_bytes == 4 * arch.parameters  # f32
    assert arch.tie_word_embeddings is False
    # 2 layers x 2 KV heads x (16 + 16) x 2 bytes
    assert arch.kv_bytes_per_token() == 256


def test_gguf_file_drives_the_estimate(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_gguf(path)
    arch = read_gguf_metadata(path)
    estimate = estimate_memory(
        quantization="F32",
        rules=runtime_for(Engine.LLAMACPP).sizing,
        context_length=1024,
        parallel=2,
        parameters=7_000_000_000,  # a hint the file overrides
        architecture=arch,
    )
    assert estimate.weights_source == "file"
    assert estimate.weights_bytes == arch.weights_bytes
    assert estimate.parameters == arch.parameters
    assert estimate.kv_cache_bytes == 256 * 1024 * 2


def test_gguf_q8_0_block_size_is_8_5_bits(tmp_path: Path) -> None:
    path = tmp_path / "q8.gguf"
    _write_gguf(path, q8=True)
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    assert tensor.n_bytes * 8 / tensor.n_elements == 8.5  # 32 int8 + one f16 scale per block
    arch = read_gguf_metadata(path)
    assert arch.quantization == "Q8_0"
    assert arch.tie_word_embeddings is True  # no output.weight: the embeddings are reused


def test_gguf_per_layer_kv_heads(tmp_path: Path) -> None:
    path = tmp_path / "varying.gguf"
    _write_gguf(path, kv_heads=[2, 4])
    arch = read_gguf_metadata(path)
    assert arch.kv_heads_total == 6
    assert arch.kv_bytes_per_token() == 6 * 32 * 2


@pytest.mark.parametrize(
    ("engine", "context", "parallel", "tokens"),
    [
        (Engine.LLAMACPP, 8192, 4, 32768),  # every slot allocated up front
        (Engine.VLLM, 8192, 1, 8192),
        (Engine.VLLM, 8192, 4, 8192 + 3 * 2048),  # one full sequence, the rest typical
        (Engine.VLLM, 1024, 4, 4096),  # short contexts are never padded to 2048
        (Engine.VLLM, 32768, 64, 32768 + 63 * 2048),
    ],
)
def test_kv_tokens(engine: Engine, context: int, parallel: int, tokens: int) -> None:
    assert kv_tokens(runtime_for(engine).sizing, context, parallel) == tokens
