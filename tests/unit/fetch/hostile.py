"""Hostile and broken model metadata, written byte by byte (no library would write them).

``gguf`` encodes a GGUF file from (key, type, value) fields and (name, dims, type, offset)
tensors, with any counts, types or version the caller states; the named makers give the
cases issue 15 lists: a tensor of an unknown type, arrays nested without end, counts
beyond any real file, a vocabulary of millions of empty strings.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<?",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}
F32_TYPE, F16_TYPE = 0, 1  # GGML tensor types

Field = tuple[str, int, Any]
Tensor = tuple[str, Sequence[int], int, int]  # name, dims, GGML type, data offset

LLAMA: list[Field] = [
    ("general.architecture", STRING, "llama"),
    ("llama.block_count", U32, 2),
    ("llama.context_length", U32, 2048),
    ("llama.embedding_length", U32, 64),
    ("llama.feed_forward_length", U32, 256),
    ("llama.attention.head_count", U32, 4),
    ("llama.attention.head_count_kv", U32, 2),
    ("general.file_type", U32, 1),
]


def string(text: str | bytes) -> bytes:
    """A GGUF string: u64 length and the bytes."""
    data = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(data)) + data


def value(kind: int, item: Any) -> bytes:
    """A value without its type; an ARRAY value is (element type, elements)."""
    if kind in _FORMATS:
        return struct.pack(_FORMATS[kind], item)
    if kind == STRING:
        return string(item)
    if kind == ARRAY:
        inner, items = item
        return struct.pack("<IQ", inner, len(items)) + b"".join(value(inner, i) for i in items)
    raise ValueError(f"cannot encode type {kind}")


def field(key: str, kind: int, item: Any) -> bytes:
    """One metadata key-value pair."""
    return string(key) + struct.pack("<I", kind) + value(kind, item)


def tensor(name: str, dims: Sequence[int], kind: int, offset: int) -> bytes:
    """One tensor table entry."""
    return (
        string(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", kind, offset)
    )


def gguf(
    fields: Sequence[Field] = (),
    tensors: Sequence[Tensor] = (),
    *,
    version: int = 3,
    n_fields: int | None = None,
    n_tensors: int | None = None,
    raw_fields: bytes = b"",
    data: bytes = b"",
) -> bytes:
    """A GGUF file: header, ``raw_fields`` after the fields, padding to 32 and ``data``."""
    body = b"".join(field(*f) for f in fields) + raw_fields
    body += b"".join(tensor(*t) for t in tensors)
    head = b"GGUF" + struct.pack(
        "<IQQ",
        version,
        len(tensors) if n_tensors is None else n_tensors,
        len(fields) if n_fields is None else n_fields,
    )
    header = head + body
    return header + b"\0" * (-len(header) % 32) + data


def unknown_tensor_type(kind: int = 99) -> bytes:
    """A llama GGUF whose one tensor names GGML type ``kind``, which does not exist."""
    return gguf(LLAMA, [("token_embd.weight", [64, 32], kind, 0)], data=b"\0" * 8192)


def nested_arrays(depth: int) -> bytes:
    """A field holding an array of an array of ... ``depth`` levels (12 bytes each)."""
    key = "general.nested"
    raw = string(key) + struct.pack("<I", ARRAY)
    raw += struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", U8, 0)
    return gguf(LLAMA, raw_fields=raw, n_fields=len(LLAMA) + 1)


def empty_strings(count: int, arrays: int = 1) -> bytes:
    """``arrays`` token lists of ``count`` empty strings each (8 bytes a string)."""
    raw = b""
    for index in range(arrays):
        key = "tokenizer.ggml.tokens" if index == 0 else f"tokenizer.ggml.tokens{index}"
        raw += string(key) + struct.pack("<IIQ", ARRAY, STRING, count) + b"\0" * (8 * count)
    return gguf(LLAMA, raw_fields=raw, n_fields=len(LLAMA) + arrays)
