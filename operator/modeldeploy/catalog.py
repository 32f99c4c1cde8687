"""What the planner knows about formats, quantizations, engines and GPU products.

This module owns the static facts the planner reasons with:

- every quantization the API accepts, with its file format and its effective bits per weight
  (what a whole model file costs per parameter, embeddings and mixed tensors included);
- which engine serves which format on which accelerator (GGUF: llama.cpp on CPU or GPU;
  safetensors, AWQ, GPTQ, FP8: vLLM on GPUs only), and the GPU generation each needs;
- the compute capability of NVIDIA products, for nodes whose GPU Feature Discovery labels do
  not publish ``nvidia.com/gpu.compute.major``/``minor``;
- how ``format: auto`` and ``quantization: auto`` resolve from the source URI.

Pure data and pure functions: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Format(StrEnum):
    """An on-disk model format."""

    GGUF = "gguf"
    SAFETENSORS = "safetensors"


class Engine(StrEnum):
    """A serving engine."""

    VLLM = "vllm"
    LLAMACPP = "llamacpp"
    SGLANG = "sglang"


class Accelerator(StrEnum):
    """Where the engine computes."""

    GPU = "gpu"
    CPU = "cpu"


@dataclass(frozen=True)
class QuantizationInfo:
    """One quantization: its formats, effective size and what vLLM needs to serve it."""

    name: str
    formats: frozenset[Format]
    bits_per_weight: float
    # vLLM ``--quantization`` value; None for unquantized checkpoints (served by --dtype).
    vllm_method: str | None = None
    # Below this compute capability vLLM cannot serve it (None: vLLM's own minimum).
    vllm_min_compute_capability: tuple[int, int] | None = None
    # AWQ/GPTQ checkpoints keep the token embeddings and the LM head in 16 bits.
    embedding_bits: float | None = None

    @property
    def is_gguf_only(self) -> bool:
        """True for llama.cpp block quantizations, which exist only as GGUF files."""
        return self.formats == frozenset({Format.GGUF})


_GGUF = frozenset({Format.GGUF})
_SAFETENSORS = frozenset({Format.SAFETENSORS})
_BOTH = frozenset({Format.GGUF, Format.SAFETENSORS})

# Effective bits per weight of llama.cpp's quantization mixes. Source: the size column of
# llama.cpp's quantize table (tools/quantize/quantize.cpp, QUANT_OPTIONS, measured on
# Llama-3-8B: 8.03e9 parameters), converted as GiB * 2**30 * 8 / 8.03e9:
#   Q2_K 2.96G -> 3.17   Q3_K_S 3.41G -> 3.65   Q3_K_M 3.74G -> 4.00   Q3_K_L 4.03G -> 4.31
#   Q4_0 4.34G -> 4.64   Q4_K_S 4.37G -> 4.67   Q4_K_M 4.58G -> 4.90   Q5_0 5.21G -> 5.57
#   Q5_K_S 5.21G -> 5.57 Q5_K_M 5.33G -> 5.70   Q6_K 6.14G -> 6.57     Q8_0 7.96G -> 8.52
# These reproduce published GGUF file sizes within 1% (bartowski/Meta-Llama-3.1-8B-Instruct-
# GGUF: Q4_K_M 4.92 GB, Q8_0 8.54 GB, Q2_K 3.18 GB). They sit slightly above the older
# per-model figures of llama.cpp's examples/quantize/README.md (Llama 2 7B: Q4_K_M 4.84,
# Q3_K_M 3.91, Q6_K 6.56), because Llama 3's 128k vocabulary makes the higher-precision
# embedding and output tensors a larger share; that errs on the safe side for modern models.
# The IQ mixes are listed in QUANT_OPTIONS by bpw of their main type (IQ4_XS 4.25, IQ3_M
# 3.66, IQ2_M 2.7); whole files run higher, so these use the same bartowski 3.1-8B files:
# IQ4_XS 4.45 GB -> 4.43, IQ3_M 3.78 GB -> 3.77, IQ2_M 2.95 GB -> 2.94.
QUANTIZATIONS: dict[str, QuantizationInfo] = {
    info.name: info
    for info in (
        QuantizationInfo("F32", _BOTH, 32.0, vllm_min_compute_capability=(7, 0)),
        QuantizationInfo("F16", _BOTH, 16.0, vllm_min_compute_capability=(7, 0)),
        # vLLM refuses bfloat16 below compute capability 8.0 (Ampere).
        QuantizationInfo("BF16", _BOTH, 16.0, vllm_min_compute_capability=(8, 0)),
        QuantizationInfo("Q8_0", _GGUF, 8.52),
        QuantizationInfo("Q6_K", _GGUF, 6.57),
        QuantizationInfo("Q5_K_M", _GGUF, 5.70),
        QuantizationInfo("Q5_K_S", _GGUF, 5.57),
        QuantizationInfo("Q5_0", _GGUF, 5.57),
        QuantizationInfo("Q4_K_M", _GGUF, 4.90),
        QuantizationInfo("Q4_K_S", _GGUF, 4.67),
        QuantizationInfo("Q4_0", _GGUF, 4.64),
        QuantizationInfo("Q3_K_L", _GGUF, 4.31),
        QuantizationInfo("Q3_K_M", _GGUF, 4.00),
        QuantizationInfo("Q3_K_S", _GGUF, 3.65),
        QuantizationInfo("Q2_K", _GGUF, 3.17),
        QuantizationInfo("IQ4_XS", _GGUF, 4.43),
        QuantizationInfo("IQ3_M", _GGUF, 3.77),
        QuantizationInfo("IQ2_M", _GGUF, 2.94),
        # 4-bit weights plus one fp16 scale (and a zero point) per group of 128: 4 + 32/128.
        QuantizationInfo(
            "AWQ",
            _SAFETENSORS,
            4.25,
            vllm_method="awq",
            vllm_min_compute_capability=(7, 5),
            embedding_bits=16.0,
        ),
        QuantizationInfo(
            "GPTQ",
            _SAFETENSORS,
            4.25,
            vllm_method="gptq",
            vllm_min_compute_capability=(7, 0),
            embedding_bits=16.0,
        ),
        # FP8 W8A8 needs the FP8 tensor cores of Ada Lovelace and Hopper (8.9+).
        QuantizationInfo(
            "FP8",
            _SAFETENSORS,
            8.0,
            vllm_method="fp8",
            vllm_min_compute_capability=(8, 9),
        ),
    )
}

# Aliases llama.cpp's quantize tool accepts, and spellings seen in file names.
QUANTIZATION_ALIASES: dict[str, str] = {
    "Q4_K": "Q4_K_M",
    "Q5_K": "Q5_K_M",
    "Q3_K": "Q3_K_M",
    "FP16": "F16",
    "FP32": "F32",
}

# What ``quantization: auto`` resolves to when neither the source name nor the artifact says:
# Q4_K_M is llama.cpp's recommended size/quality balance; safetensors are served as published.
DEFAULT_GGUF_QUANTIZATION = "Q4_K_M"
DEFAULT_SAFETENSORS_QUANTIZATION = "BF16"

# llama.cpp's ``general.file_type`` values (gguf.LlamaFileType) for the quantizations above.
GGUF_FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    7: "Q8_0",
    8: "Q5_0",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    27: "IQ3_M",
    29: "IQ2_M",
    30: "IQ4_XS",
    32: "BF16",
}

# The engines able to serve each format, in order of preference (``engine: auto`` takes the
# first), and where they run. SGLang serves only when a spec names it.
ENGINES_FOR_FORMAT: dict[Format, tuple[Engine, ...]] = {
    Format.GGUF: (Engine.LLAMACPP,),
    Format.SAFETENSORS: (Engine.VLLM, Engine.SGLANG),
}
ACCELERATORS_FOR_ENGINE: dict[Engine, tuple[Accelerator, ...]] = {
    Engine.LLAMACPP: (Accelerator.GPU, Accelerator.CPU),
    Engine.VLLM: (Accelerator.GPU,),
    Engine.SGLANG: (Accelerator.GPU,),
}
# The Marlin kernels (much faster AWQ/GPTQ) need Ampere or newer.
MARLIN_MIN_COMPUTE_CAPABILITY = (8, 0)

# Compute capability by a token of the ``nvidia.com/gpu.product`` label (split on "-"), from
# NVIDIA's CUDA GPU table (developer.nvidia.com/cuda-gpus). Used when the node does not carry
# GFD's ``nvidia.com/gpu.compute.major``/``minor`` labels.
GPU_COMPUTE_CAPABILITY: dict[str, tuple[int, int]] = {
    "B200": (10, 0),
    "B100": (10, 0),
    "GB200": (10, 0),
    "H200": (9, 0),
    "H100": (9, 0),
    "H800": (9, 0),
    "H20": (9, 0),
    "GH200": (9, 0),
    "L40S": (8, 9),
    "L40": (8, 9),
    "L20": (8, 9),
    "L4": (8, 9),
    "4090": (8, 9),
    "4080": (8, 9),
    "ADA": (8, 9),
    "A100": (8, 0),
    "A800": (8, 0),
    "A30": (8, 0),
    "A40": (8, 6),
    "A10G": (8, 6),
    "A10": (8, 6),
    "A16": (8, 6),
    "A2": (8, 6),
    "3090": (8, 6),
    "T4": (7, 5),
    "V100": (7, 0),
    "P100": (6, 0),
    "P4": (6, 1),
}

_QUANT_IN_NAME = re.compile(
    r"(?<![A-Z0-9])(IQ[1-4]_(?:XXS|XS|S|M|NL)|Q[2-8]_K(?:_[SML])?|Q[4-8]_[01]|BF16|FP16|F16|"
    r"FP32|F32|AWQ|GPTQ|FP8)(?![A-Z0-9])"
)


def quantization_info(name: str) -> QuantizationInfo:
    """Return the catalog entry for a quantization name or alias (case-insensitive)."""
    key = name.upper()
    key = QUANTIZATION_ALIASES.get(key, key)
    try:
        return QUANTIZATIONS[key]
    except KeyError:
        raise KeyError(f"unknown quantization {name!r}") from None


def compute_capability(product: str) -> tuple[int, int] | None:
    """Return the compute capability of an ``nvidia.com/gpu.product`` value, if known."""
    tokens = [token.upper() for token in re.split(r"[-_ ]+", product) if token]
    for token in tokens:
        if token in GPU_COMPUTE_CAPABILITY:
            return GPU_COMPUTE_CAPABILITY[token]
    return None


def quantization_from_name(text: str) -> str | None:
    """Find a quantization named in a source URI or file name (``...-Q4_K_M.gguf``)."""
    matches = _QUANT_IN_NAME.findall(text.upper())
    if not matches:
        return None
    found: str = matches[-1]
    return QUANTIZATION_ALIASES.get(found, found)


def source_looks_gguf(source: str) -> bool:
    """True when a source URI names a GGUF file or a GGUF repository."""
    lowered = source.lower().rstrip("/")
    return (
        lowered.endswith(".gguf")
        or re.search(r"(?<![a-z0-9])gguf(?![a-z0-9])", lowered) is not None
    )


def resolve_format(format_: str, quantization: str, source: str) -> Format:
    """Resolve ``format: auto`` from the quantization, else from the source name."""
    if format_ != "auto":
        return Format(format_)
    if quantization != "auto":
        info = quantization_info(quantization)
        if len(info.formats) == 1:
            return next(iter(info.formats))
    named = quantization_from_name(source)
    if named is not None and named in QUANTIZATIONS and len(QUANTIZATIONS[named].formats) == 1:
        return next(iter(QUANTIZATIONS[named].formats))
    return Format.GGUF if source_looks_gguf(source) else Format.SAFETENSORS


def resolve_quantization(quantization: str, fmt: Format, source: str) -> str:
    """Resolve ``quantization: auto`` from the source name, else the format's default."""
    if quantization != "auto":
        return quantization_info(quantization).name
    named = quantization_from_name(source)
    if named is not None and named in QUANTIZATIONS and fmt in QUANTIZATIONS[named].formats:
        return named
    return DEFAULT_GGUF_QUANTIZATION if fmt is Format.GGUF else DEFAULT_SAFETENSORS_QUANTIZATION


def vllm_quantization_argument(name: str, capability: tuple[int, int] | None) -> str | None:
    """The ``--quantization`` value for vLLM: Marlin kernels where the GPU supports them."""
    method = quantization_info(name).vllm_method
    if method in {"awq", "gptq"} and (
        capability is not None and capability >= MARLIN_MIN_COMPUTE_CAPABILITY
    ):
        return f"{method}_marlin"
    return method
