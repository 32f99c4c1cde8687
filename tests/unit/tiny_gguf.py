"""Test support: tiny valid GGUF files written with the ``gguf`` package (no real weights).

``write_tiny_model`` writes a model header llama.cpp's readers accept (a few architecture
keys, Q4_K_M, one tensor); ``write_tiny_lora`` a LoRA adapter as llama.cpp's
``convert_lora_to_gguf.py`` labels one (``general.type=adapter``, ``adapter.type=lora``).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_model(path: Path, *, arch: str = "gemma3", template: str | None = None) -> Path:
    """A small valid GGUF model file: a few metadata keys and one tensor."""
    writer = _writer(path, arch)
    writer.add_block_count(2)
    writer.add_context_length(8192)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_file_type(15)  # MOSTLY_Q4_K_M
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    return _close(writer, path)


def write_tiny_lora(path: Path, *, arch: str = "gemma3", alpha: float = 16.0) -> Path:
    """A small GGUF LoRA adapter for ``arch``: its labels, alpha and one LoRA tensor."""
    writer = _writer(path, arch)
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((8, 64), dtype=np.float32))
    return _close(writer, path)


def _writer(path: Path, arch: str) -> gguf.GGUFWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    return gguf.GGUFWriter(str(path), arch)


def _close(writer: gguf.GGUFWriter, path: Path) -> Path:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
