"""Memory sizing: how many bytes one replica of a model needs, and where the facts come from.

This module owns the memory estimate the planner fits against nodes, and the rules that
turn real model metadata (GGUF header fields, a Hugging Face ``config.json`` mapping) into
a ``ModelArchitecture``. It reads no file: ``fetch.gguf_header`` parses the bytes, from a
source or a local file.

The estimate for one replica is::

    total    = weights + kv_cache + overhead
    weights  = file size, when the artifact is known (sum of the GGUF's tensor bytes)
             | parameters * bits_per_weight / 8          (bits from catalog.QUANTIZATIONS)
               AWQ/GPTQ keep embeddings and LM head in 16 bits, counted apart when the
               vocabulary and hidden size are known
    kv_cache = layers * kv_heads * (key_length + value_length) * bytes_per_element * tokens
             = 2 * layers * kv_heads * head_dim * 2 bytes (f16) * tokens
               when keys and values have the same head size (every model here)
    overhead = llama.cpp: 1 GiB per device (process, compute buffers at n_ubatch 512,
               CUDA context) + 5% of the weights (compute buffers grow with model width)
               vLLM:      2 GiB per GPU (CUDA context, CUDA graphs, NCCL buffers)
                          + 5% of the weights (activation peak of the profiling run)

The tokens the cache must hold depend on how the engine allocates it:

- llama.cpp allocates ``--ctx-size = contextLength * parallel`` up front, so every slot
  counts in full: ``tokens = contextLength * maxConcurrentRequests``;
- vLLM pages its cache (PagedAttention) and allocates blocks as tokens arrive. It refuses
  to start unless one sequence of ``--max-model-len`` fits, and beyond its blocks it queues
  or preempts requests rather than failing them. The plan reserves one full-length
  sequence plus ``maxConcurrentRequests - 1`` typical ones of 2048 tokens:
  ``tokens = contextLength + (maxConcurrentRequests - 1) * min(contextLength, 2048)``.

Under tensor parallelism each GPU holds ``kv_heads / tp`` heads; when ``tp > kv_heads``
vLLM replicates heads, so the cache grows by ``tp / kv_heads``.

Without the architecture (no GGUF header or config.json yet), the KV cache uses the layout
of today's grouped-query-attention models (8 KV heads of 128) with the layer count of the
size class, from the config.json of Llama 3.x and Qwen2.5 (see ``FALLBACK_LAYERS``). That
over-estimates models with fewer KV heads (Qwen2.5-7B has 4), which is the safe side.
See docs/sizing.md for the sources of every figure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from modeldeploy.catalog import GGUF_FILE_TYPES, quantization_info

MIB = 1024**2
GIB = 1024**3

KV_BYTES_PER_ELEMENT = 2  # f16 keys and values: llama.cpp's default cache type, vLLM's "auto"
OVERHEAD_WEIGHTS_FRACTION = 0.05
# A paged KV cache allocates blocks as tokens arrive; a typical chat or RAG request (prompt
# plus answer) stays within this many tokens.
TYPICAL_SEQUENCE_TOKENS = 2048

# Fallback layer counts by parameter count, from the config.json of these models:
# Llama-3.2-1B 16, Llama-3.2-3B 28, Llama-3.1-8B 32, Qwen2.5-14B 48, Qwen2.5-32B 64,
# Llama-3.1-70B 80, Llama-3.1-405B 126.
FALLBACK_LAYERS: tuple[tuple[float, int], ...] = (
    (2e9, 16),
    (4e9, 28),
    (10e9, 32),
    (20e9, 48),
    (40e9, 64),
    (100e9, 80),
)
FALLBACK_LAYERS_LARGEST = 126
FALLBACK_KV_HEADS = 8
FALLBACK_HEAD_DIM = 128

_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32", "half": "F16"}
_QUANT_METHODS = {"awq": "AWQ", "gptq": "GPTQ", "fp8": "FP8"}
_SIZE_IN_NAME = re.compile(r"(?<![0-9A-Za-z.])(?:(\d+)x)?(\d+(?:\.\d+)?)([BbMm])(?![A-Za-z0-9])")


@dataclass(frozen=True)
class SizingRules:
    """How one engine allocates memory; each runtime module gives its own (``Runtime.sizing``).

    ``paged_kv_cache``: blocks are allocated as tokens arrive (vLLM's PagedAttention, SGLang's
    token pool), so the plan reserves one full sequence plus typical ones; otherwise every
    slot's context is allocated up front (llama.cpp's ``--ctx-size``).
    """

    engine: str
    overhead_per_device: int
    paged_kv_cache: bool


@dataclass(frozen=True)
class ModelArchitecture:
    """Facts about a model read from its artifact; None where the artifact is silent."""

    architecture: str | None = None
    parameters: int | None = None
    layers: int | None = None
    attention_heads: int | None = None
    kv_heads: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    context_length: int | None = None
    tie_word_embeddings: bool = False
    quantization: str | None = None
    weights_bytes: int | None = None
    # Sum over layers of KV heads, for models whose head count varies by layer.
    kv_heads_total: int | None = None

    def kv_bytes_per_token(self, element_bytes: int = KV_BYTES_PER_ELEMENT) -> int | None:
        """Bytes of KV cache one token costs, or None when the architecture is incomplete."""
        if self.key_length is None:
            return None
        value_length = self.value_length or self.key_length
        if self.kv_heads_total is not None:
            heads = self.kv_heads_total
        elif self.layers is not None and self.kv_heads is not None:
            heads = self.layers * self.kv_heads
        else:
            return None
        return heads * (self.key_length + value_length) * element_bytes


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes one replica needs, with the parts and where each came from."""

    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    kv_bytes_per_token: int
    kv_tokens: int
    parameters: int
    quantization: str
    bits_per_weight: float
    context_length: int
    parallel: int
    engine: str
    devices: int
    weights_source: str  # "file" or "parameters"
    kv_source: str  # "architecture" or "fallback"
    adapter_bytes: int = 0  # LoRA adapters, all resident (adapters.adapter_bytes)

    @property
    def total_bytes(self) -> int:
        """Weights plus adapters plus KV cache plus overhead."""
        return self.weights_bytes + self.adapter_bytes + self.kv_cache_bytes + self.overhead_bytes

    def as_dict(self) -> dict[str, Any]:
        """The breakdown as camelCase JSON, for status and the CLI."""
        return {
            "totalBytes": self.total_bytes,
            "weightsBytes": self.weights_bytes,
            "kvCacheBytes": self.kv_cache_bytes,
            "overheadBytes": self.overhead_bytes,
            "kvBytesPerToken": self.kv_bytes_per_token,
            "kvTokens": self.kv_tokens,
            "parameters": self.parameters,
            "quantization": self.quantization,
            "bitsPerWeight": self.bits_per_weight,
            "contextLength": self.context_length,
            "parallel": self.parallel,
            "engine": self.engine,
            "devices": self.devices,
            "weightsSource": self.weights_source,
            "kvSource": self.kv_source,
        } | ({"adapterBytes": self.adapter_bytes} if self.adapter_bytes else {})


def parameters_from_name(text: str) -> int | None:
    """Find a size such as ``7B``, ``0.5B``, ``270M`` or ``8x7B`` in a model name."""
    matches = _SIZE_IN_NAME.findall(text)
    if not matches:
        return None
    experts, number, unit = matches[-1]
    value = float(number) * (1e9 if unit in "Bb" else 1e6)
    return round(value * (int(experts) if experts else 1))


def fallback_layers(parameters: int) -> int:
    """Layer count typical of a model this size (see ``FALLBACK_LAYERS``)."""
    for limit, layers in FALLBACK_LAYERS:
        if parameters <= limit:
            return layers
    return FALLBACK_LAYERS_LARGEST


def fallback_kv_bytes_per_token(parameters: int) -> int:
    """KV bytes per token of a typical GQA model of this size, for when nothing is known."""
    layers = fallback_layers(parameters)
    return 2 * layers * FALLBACK_KV_HEADS * FALLBACK_HEAD_DIM * KV_BYTES_PER_ELEMENT


def kv_tokens(rules: SizingRules, context_length: int, parallel: int) -> int:
    """Tokens of KV cache a replica reserves: every slot full, or a paged cache's share."""
    if rules.paged_kv_cache:
        typical = min(context_length, TYPICAL_SEQUENCE_TOKENS)
        return context_length + (parallel - 1) * typical
    return context_length * parallel


def weights_bytes(
    parameters: int, quantization: str, architecture: ModelArchitecture | None = None
) -> int:
    """Bytes of weights for ``parameters`` at a quantization's effective bits per weight."""
    info = quantization_info(quantization)
    embedding = 0
    if (
        info.embedding_bits is not None
        and architecture is not None
        and architecture.vocab_size is not None
        and architecture.hidden_size is not None
    ):
        tables = 1 if architecture.tie_word_embeddings else 2
        embedding = min(parameters, tables * architecture.vocab_size * architecture.hidden_size)
        return round(
            (parameters - embedding) * info.bits_per_weight / 8
            + embedding * info.embedding_bits / 8
        )
    return round(parameters * info.bits_per_weight / 8)


def overhead_bytes(rules: SizingRules, weights: int, devices: int) -> int:
    """Runtime overhead: a per-device constant plus a share of the weights."""
    return rules.overhead_per_device * max(1, devices) + round(weights * OVERHEAD_WEIGHTS_FRACTION)


def estimate_memory(
    *,
    quantization: str,
    rules: SizingRules,
    context_length: int,
    parallel: int,
    parameters: int | None = None,
    architecture: ModelArchitecture | None = None,
    devices: int = 1,
    tensor_parallel_size: int = 1,
    adapter_bytes: int = 0,
) -> MemoryEstimate:
    """Estimate one replica's memory; ``devices`` is GPUs spanned (1 for a CPU).

    LoRA adapters (``adapter_bytes``) are counted in full: llama.cpp loads each one, and
    vLLM's ``--max-loras`` slots hold every adapter at once at up to ``--max-lora-rank``.
    """
    arch = architecture or ModelArchitecture()
    params = arch.parameters or parameters
    if params is None or params <= 0:
        raise ValueError("the parameter count is unknown: give a hint such as 7B")
    info = quantization_info(quantization)
    if arch.weights_bytes is not None:
        weights, weights_source = arch.weights_bytes, "file"
    else:
        weights, weights_source = weights_bytes(params, info.name, arch), "parameters"
    per_token = arch.kv_bytes_per_token()
    kv_source = "architecture"
    if per_token is None:
        per_token, kv_source = fallback_kv_bytes_per_token(params), "fallback"
    tokens = kv_tokens(rules, context_length, parallel)
    kv_cache = per_token * tokens
    kv_heads = arch.kv_heads if arch.kv_heads is not None else FALLBACK_KV_HEADS
    if tensor_parallel_size > kv_heads:
        # vLLM replicates KV heads when there are more ranks than heads.
        kv_cache = kv_cache * tensor_parallel_size // kv_heads
    return MemoryEstimate(
        weights_bytes=weights,
        kv_cache_bytes=kv_cache,
        overhead_bytes=overhead_bytes(rules, weights, devices),
        kv_bytes_per_token=per_token,
        kv_tokens=tokens,
        parameters=params,
        quantization=info.name,
        bits_per_weight=info.bits_per_weight,
        context_length=context_length,
        parallel=parallel,
        engine=rules.engine,
        devices=max(1, devices),
        weights_source=weights_source,
        kv_source=kv_source,
        adapter_bytes=adapter_bytes,
    )


def dense_parameter_count(arch: ModelArchitecture) -> int | None:
    """Parameters of a dense Llama-style decoder from its shapes (biases and norms aside)."""
    needed = (
        arch.layers,
        arch.attention_heads,
        arch.kv_heads,
        arch.key_length,
        arch.hidden_size,
        arch.intermediate_size,
        arch.vocab_size,
    )
    if any(value is None for value in needed):
        return None
    assert arch.layers is not None and arch.attention_heads is not None
    assert arch.kv_heads is not None and arch.key_length is not None
    assert arch.hidden_size is not None and arch.intermediate_size is not None
    assert arch.vocab_size is not None
    hidden, head = arch.hidden_size, arch.key_length
    attention = hidden * head * (2 * arch.attention_heads + 2 * arch.kv_heads)
    mlp = 3 * hidden * arch.intermediate_size  # gate, up and down projections
    norms = 2 * hidden
    embeddings = arch.vocab_size * hidden * (1 if arch.tie_word_embeddings else 2)
    return arch.layers * (attention + mlp + norms) + embeddings + hidden


def read_hf_config(config: Mapping[str, Any]) -> ModelArchitecture:
    """Read the architecture from a Hugging Face ``config.json`` mapping."""
    text = config.get("text_config")
    merged: dict[str, Any] = dict(config)
    if isinstance(text, Mapping):
        merged.update(text)  # multimodal wrappers keep the language model's shapes inside
    layers = _int(merged.get("num_hidden_layers"))
    heads = _int(merged.get("num_attention_heads"))
    kv_heads = _int(merged.get("num_key_value_heads")) or heads
    hidden = _int(merged.get("hidden_size"))
    head_dim = _int(merged.get("head_dim"))
    if head_dim is None and hidden is not None and heads:
        head_dim = hidden // heads
    quantization = None
    quant_config = merged.get("quantization_config")
    if isinstance(quant_config, Mapping):
        quantization = _QUANT_METHODS.get(str(quant_config.get("quant_method", "")).lower())
    else:
        dtype = merged.get("torch_dtype") or merged.get("dtype")
        quantization = _DTYPES.get(str(dtype)) if dtype is not None else None
    experts = max(
        _int(merged.get(key)) or 0
        for key in ("num_local_experts", "num_experts", "n_routed_experts")
    )
    arch = ModelArchitecture(
        architecture=_first(merged.get("architectures")) or merged.get("model_type"),
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        key_length=head_dim,
        value_length=head_dim,
        hidden_size=hidden,
        intermediate_size=_int(merged.get("intermediate_size")),
        vocab_size=_int(merged.get("vocab_size")),
        context_length=_int(merged.get("max_position_embeddings")),
        tie_word_embeddings=bool(merged.get("tie_word_embeddings", False)),
        quantization=quantization,
    )
    # Mixture-of-experts shapes are not dense: leave the count to the parameters hint.
    return arch if experts > 1 else replace(arch, parameters=dense_parameter_count(arch))


def gguf_architecture_from(
    value: Callable[[str], Any],
    tensors: Sequence[tuple[str, int, int]],
    token_count: Callable[[], int | None],
    split_weights_bytes: int | None = None,
) -> ModelArchitecture:
    """The architecture GGUF metadata describes, whoever parsed the header.

    ``value(key)`` reads a metadata field (None when absent), ``tensors`` are (name,
    elements, bytes) of the tensors in this file, ``token_count`` counts the vocabulary
    when ``vocab_size`` is absent, and ``split_weights_bytes`` is the weights' size when
    this is the first shard of a split model (None if unknown).
    """
    arch = value("general.architecture")
    prefix = f"{arch}." if arch else ""
    layers = _int(value(f"{prefix}block_count"))
    heads = _max_int(value(f"{prefix}attention.head_count"))
    kv_value = value(f"{prefix}attention.head_count_kv")
    kv_heads_total = None
    if isinstance(kv_value, list):
        kv_heads_total = sum(int(v) for v in kv_value)
        kv_heads = max((int(v) for v in kv_value), default=None)
    else:
        kv_heads = _int(kv_value) or heads
    hidden = _int(value(f"{prefix}embedding_length"))
    key_length = _int(value(f"{prefix}attention.key_length"))
    if key_length is None and hidden is not None and heads:
        key_length = hidden // heads
    value_length = _int(value(f"{prefix}attention.value_length")) or key_length
    vocab = _int(value(f"{prefix}vocab_size")) or token_count()
    file_type = _int(value("general.file_type"))
    parameters: int | None = sum(elements for _, elements, _ in tensors)
    weights: int | None = sum(size for _, _, size in tensors)
    if (_int(value("split.count")) or 1) > 1:
        # The first shard holds only part of the tensors: size from the name label instead.
        label = value("general.size_label")
        parameters = parameters_from_name(str(label)) if label else None
        weights = split_weights_bytes
    return ModelArchitecture(
        architecture=str(arch) if arch else None,
        parameters=parameters or None,
        layers=layers,
        attention_heads=heads,
        kv_heads=kv_heads,
        key_length=key_length,
        value_length=value_length,
        hidden_size=hidden,
        intermediate_size=_max_int(value(f"{prefix}feed_forward_length")),
        vocab_size=vocab,
        context_length=_int(value(f"{prefix}context_length")),
        tie_word_embeddings=not any(name == "output.weight" for name, _, _ in tensors),
        quantization=GGUF_FILE_TYPES.get(file_type) if file_type is not None else None,
        weights_bytes=weights or None,
        kv_heads_total=kv_heads_total,
    )


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _max_int(value: Any) -> int | None:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return max((int(v) for v in value), default=None)
    return _int(value)


def _first(value: Any) -> str | None:
    if isinstance(value, Sequence) and not isinstance(value, str) and value:
        return str(value[0])
    return None


# llama.cpp's token generation streams every weight once per token, so it is bound by memory
# bandwidth, not cores: users measure no gain past 3-4 threads on a desktop
# (ggml-org/llama.cpp#12966) and 7B Q4 slowing down past 6 threads (ggml-org/llama.cpp#39);
# more threads shorten prompt processing, and parallel slots batch more work per weight.
MIN_CPU_THREADS = 2
GIB = 1024**3


def cpu_threads(weights: int, parallel: int, max_threads: int) -> int:
    """llama.cpp threads (and CPU cores requested) for a model on a CPU node.

    Two, plus one per started GiB of weights, plus one per four parallel slots beyond the
    first, at most ``max_threads``: about 3 for a 270M model, 7 for a 7B Q4_K_M, the cap
    for 70B; so several small replicas share a node instead of each taking most of it.
    """
    threads = MIN_CPU_THREADS + -(-weights // GIB) + (parallel - 1) // 4
    return max(1, min(max_threads, threads))
