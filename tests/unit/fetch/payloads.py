"""Tiny real GGUF files, written with ``gguf.GGUFWriter`` the way llama.cpp's converters do."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

_FILE_TYPES = {
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_K_M": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "Q2_K": gguf.LlamaFileType.MOSTLY_Q2_K,
    "Q5_K_M": gguf.LlamaFileType.MOSTLY_Q5_K_M,
}


class GgufFactory:
    """Writes small llama-architecture GGUF files; the same arguments give the same bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model(
        self,
        quantization: str = "Q4_K_M",
        *,
        layers: int = 2,
        hidden: int = 64,
        padding: int = 0,
        split: tuple[int, int] | None = None,
        seed: int = 0,
    ) -> bytes:
        """A GGUF file's bytes; ``padding`` float32 values make it bigger; ``split`` = (i, n)."""
        name = f"m-{quantization}-{layers}-{hidden}-{padding}-{split}-{seed}.gguf"
        path = self.root / name
        if not path.exists():
            self._write(
                path,
                quantization=quantization,
                layers=layers,
                hidden=hidden,
                padding=padding,
                split=split,
                seed=seed,
            )
        return path.read_bytes()

    def _write(
        self,
        path: Path,
        *,
        quantization: str,
        layers: int,
        hidden: int,
        padding: int,
        split: tuple[int, int] | None,
        seed: int,
    ) -> None:
        rng = np.random.default_rng(seed)
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("tiny")
        writer.add_size_label("1M")
        writer.add_block_count(layers)
        writer.add_context_length(2048)
        writer.add_embedding_length(hidden)
        writer.add_feed_forward_length(hidden * 4)
        writer.add_head_count(4)
        writer.add_head_count_kv(2)
        writer.add_file_type(_FILE_TYPES.get(quantization, gguf.LlamaFileType.ALL_F32))
        writer.add_token_list([f"tok{i}" for i in range(32)])
        if split is not None:
            writer.add_uint16("split.no", split[0] - 1)
            writer.add_uint16("split.count", split[1])
            writer.add_int32("split.tensors.count", layers + 1)
        writer.add_tensor("token_embd.weight", rng.random((32, hidden), dtype=np.float32))
        for layer in range(layers):
            writer.add_tensor(
                f"blk.{layer}.attn_q.weight", rng.random((hidden, hidden), dtype=np.float32)
            )
        if padding:
            writer.add_tensor("pad.weight", rng.random((padding,), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
