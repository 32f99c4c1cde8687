"""Real GGUF LoRA adapters for a base GGUF model, written with ``gguf.GGUFWriter``.

``write_lora_adapter`` reads the base model's architecture and the shapes of the target
weights of every block (``blk.N.attn_q.weight``, ...) and writes a random F32 adapter in the
layout llama.cpp's loader (``src/llama-adapter.cpp``) expects: ``general.type=adapter``,
``adapter.type=lora``, ``adapter.lora.alpha``, and for each base weight of ne ``[n_in, n_out]``
a ``.lora_a`` of ne ``[n_in, rank]`` and a ``.lora_b`` of ne ``[rank, n_out]`` (numpy shapes
are the reverse). The same arguments give the same bytes. With the default ``strength`` the
adapter changes gemma 270M's greedy answers yet keeps them fluent; from about 0.2 they turn to
noise whose greedy path flips with batch numerics (prompt cache on or off).
``architecture=`` and ``wrong_shape=True`` write adapters that llama.cpp must refuse.

    python -m e2e.lora BASE.gguf OUT.gguf [--rank 8] [--seed 0] [--architecture llama]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import gguf
import numpy as np

TARGETS = ("attn_q", "attn_v", "ffn_gate", "ffn_up", "ffn_down")


@functools.cache
def _read_base(base: Path) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    """The architecture and the 2-D block weights (name, ne[0], ne[1]) of a GGUF file."""
    reader = gguf.GGUFReader(base)  # about 10 s for gemma: it parses 262k vocabulary strings
    field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if field is None:
        raise ValueError(f"{base}: no {gguf.Keys.General.ARCHITECTURE}")
    blocks = tuple(
        (t.name, int(t.shape[0]), int(t.shape[1]))  # ne[0] = inputs, ne[1] = outputs
        for t in reader.tensors
        if t.name.startswith("blk.") and len(t.shape) == 2
    )
    return str(field.contents()), blocks


def write_lora_adapter(
    base: Path,
    out: Path,
    *,
    rank: int = 8,
    alpha: float = 16.0,
    seed: int = 0,
    targets: tuple[str, ...] = TARGETS,
    strength: float = 0.1,
    architecture: str | None = None,
    wrong_shape: bool = False,
) -> Path:
    """Write a random LoRA adapter for ``base`` to ``out``; returns ``out``."""
    base_arch, blocks = _read_base(base)
    suffixes = tuple(f".{target}.weight" for target in targets)
    weights = [weight for weight in blocks if weight[0].endswith(suffixes)]
    if not weights:
        raise ValueError(f"{base}: no tensor matches {targets}")
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), architecture or base_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, n_in, n_out in weights:
        a_in = n_in + 1 if wrong_shape else n_in
        lora_a = rng.standard_normal((rank, a_in)) / np.sqrt(a_in)  # numpy shapes: reversed ne
        lora_b = rng.standard_normal((n_out, rank)) * strength / np.sqrt(rank)
        writer.add_tensor(f"{name}.lora_a", lora_a.astype(np.float32))
        writer.add_tensor(f"{name}.lora_b", lora_b.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str]) -> int:
    """``python -m e2e.lora BASE OUT``: write an adapter, print its path."""
    parser = argparse.ArgumentParser(prog="python -m e2e.lora")
    parser.add_argument("base", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strength", type=float, default=0.1)
    parser.add_argument("--architecture", default=None)
    parser.add_argument("--wrong-shape", action="store_true")
    args = parser.parse_args(argv)
    print(
        write_lora_adapter(
            args.base,
            args.out,
            rank=args.rank,
            seed=args.seed,
            strength=args.strength,
            architecture=args.architecture,
            wrong_shape=args.wrong_shape,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
