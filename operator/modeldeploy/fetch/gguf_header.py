"""Reading a model's architecture from the source with small range reads, before download.

A GGUF file starts with its metadata and tensor table; a safetensors checkpoint comes with
``config.json`` and each shard starts with an 8-byte length and a JSON header. Reading
those (kilobytes to a few MiB, fetched in growing ranges) gives the planner the real layer
count, KV heads, head size, context length and weight bytes, so the memory estimate is
right before any large transfer starts.

This is the project's one GGUF header parser. It parses a byte prefix (``gguf.GGUFReader``
needs the whole file) from any ``RangeReader``: a source's Range requests, or a local file
(``read_local_gguf_header``, for ``modeldeploy plan --gguf`` and the launcher), within
``MAX_HEADER`` bytes; ``sizing.gguf_architecture_from`` maps the metadata to a
``ModelArchitecture`` (a test proves the result agrees with ``gguf.GGUFReader``'s).
``find_string_field`` finds one string field without a parse, for the launcher's start.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modeldeploy.fetch.errors import FetchError
from modeldeploy.resolution import ArtifactFile
from modeldeploy.sizing import ModelArchitecture, gguf_architecture_from, read_hf_config

RangeReader = Callable[[ArtifactFile, int, int], bytes]
"""Read ``length`` bytes at ``offset`` of a file of the source."""

FIRST_READ = 256 * 1024
MAX_HEADER = 64 * 1024 * 1024  # the most of a file read as its header (GGUF, safetensors, config)
GGUF_MAGIC = b"GGUF"
_MAX_KEPT_ARRAY = 4096  # longer arrays (token lists) keep only their length

_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9


class _NeedMoreError(Exception):
    def __init__(self, needed: int) -> None:
        self.needed = needed


@dataclass(frozen=True)
class GgufArray:
    """A metadata array: its values when short, else only its length."""

    length: int
    values: tuple[Any, ...] | None


@dataclass(frozen=True)
class GgufTensor:
    """One entry of the tensor table."""

    name: str
    n_elements: int
    n_bytes: int


@dataclass(frozen=True)
class GgufHeader:
    """The parsed start of a GGUF file: metadata, tensor table and its length in bytes."""

    version: int
    fields: dict[str, Any]
    tensors: tuple[GgufTensor, ...]
    header_bytes: int

    def value(self, key: str) -> Any:
        """A field's value as ``GGUFReader``'s ``contents()`` gives it (arrays as lists)."""
        value = self.fields.get(key)
        if isinstance(value, GgufArray):
            return list(value.values) if value.values is not None else None
        return value

    def length(self, key: str) -> int | None:
        """The length of an array field."""
        value = self.fields.get(key)
        return value.length if isinstance(value, GgufArray) else None


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise _NeedMoreError(end)
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: str, size: int) -> Any:
        return struct.unpack(fmt, self.take(size))[0]

    def string(self) -> str:
        length = self.unpack("<Q", 8)
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(*_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner = self.unpack("<I", 4)
            count = self.unpack("<Q", 8)
            if inner in _SCALARS and count > _MAX_KEPT_ARRAY:
                self.take(count * _SCALARS[inner][1])
                return GgufArray(count, None)
            values = [self.value(inner) for _ in range(count)]
            return GgufArray(count, tuple(values) if count <= _MAX_KEPT_ARRAY else None)
        raise FetchError(f"GGUF metadata has an unknown value type {kind}")


def parse_gguf_header(data: bytes) -> GgufHeader:
    """Parse a GGUF header from a prefix of the file; raises _NeedMoreError when it is too short."""
    import gguf

    cursor = _Cursor(data)
    if cursor.take(4) != GGUF_MAGIC:
        raise FetchError("not a GGUF file (bad magic)")
    version = cursor.unpack("<I", 4)
    if version < 2:
        raise FetchError(f"GGUF version {version} is too old to read")
    n_tensors = cursor.unpack("<Q", 8)
    n_fields = cursor.unpack("<Q", 8)
    fields: dict[str, Any] = {}
    for _ in range(n_fields):
        key = cursor.string()
        fields[key] = cursor.value(cursor.unpack("<I", 4))
    tensors = []
    for _ in range(n_tensors):
        name = cursor.string()
        dims = [cursor.unpack("<Q", 8) for _ in range(cursor.unpack("<I", 4))]
        kind = cursor.unpack("<I", 4)
        cursor.unpack("<Q", 8)  # offset into the data section
        elements = 1
        for dim in dims:
            elements *= dim
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        tensors.append(GgufTensor(name, elements, elements * type_size // block))
    return GgufHeader(version, fields, tuple(tensors), cursor.pos)


def read_gguf_header(read: RangeReader, file: ArtifactFile) -> GgufHeader:
    """Fetch just enough of a remote GGUF file to parse its header."""
    data = b""
    want = min(FIRST_READ, file.size)
    while True:
        if want > len(data):
            data += read(file, len(data), want - len(data))
        try:
            return parse_gguf_header(data)
        except _NeedMoreError as more:
            if more.needed > min(MAX_HEADER, file.size) or len(data) >= file.size:
                raise FetchError(
                    f"{file.name}: the GGUF header is larger than {MAX_HEADER} bytes or truncated"
                ) from None
            want = min(file.size, MAX_HEADER, max(more.needed, 2 * len(data)))


def read_local_gguf_header(path: str | Path) -> GgufHeader:
    """The header of a GGUF file on this machine, read in the same growing ranges."""
    path = Path(path)
    with path.open("rb") as handle:
        fd = handle.fileno()

        def read(_: ArtifactFile, offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        return read_gguf_header(read, ArtifactFile(path.name, os.fstat(fd).st_size))


def find_string_field(data: bytes | mmap.mmap, key: str, max_length: int = 256) -> str | None:
    """The value (at most ``max_length`` characters) of the string field ``key``, found by
    its encoded form within the first ``MAX_HEADER`` bytes of a GGUF file; None if absent.

    A full parse walks every token string of the vocabulary (seconds for a 256k vocabulary
    in Python); finding one field this way takes milliseconds.
    """
    encoded = struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", _STRING)
    at = data.find(encoded, 0, min(len(data), MAX_HEADER))
    if at < 0:
        return None
    start = at + len(encoded)
    (length,) = struct.unpack_from("<Q", data, start)
    return bytes(data[start + 8 : start + 8 + min(length, max_length)]).decode(errors="replace")


def gguf_architecture(header: GgufHeader, total_bytes: int | None = None) -> ModelArchitecture:
    """The architecture a remotely read GGUF header describes (shared rules in sizing)."""
    return gguf_architecture_from(
        header.value,
        [(t.name, t.n_elements, t.n_bytes) for t in header.tensors],
        lambda: header.length("tokenizer.ggml.tokens"),
        split_weights_bytes=total_bytes,
    )


def safetensors_parameters(read: RangeReader, shards: Sequence[ArtifactFile]) -> int | None:
    """The parameter count summed over safetensors shard headers (8 bytes + JSON each)."""
    total = 0
    for shard in shards:
        if shard.size < 8:
            return None
        (length,) = struct.unpack("<Q", read(shard, 0, 8))
        if length > MAX_HEADER or 8 + length > shard.size:
            return None
        header = json.loads(read(shard, 8, length))
        for name, tensor in header.items():
            if name == "__metadata__" or not isinstance(tensor, dict):
                continue
            elements = 1
            for dim in tensor.get("shape", []):
                elements *= int(dim)
            total += elements
    return total or None


def read_architecture(
    read: RangeReader, format: str, files: Sequence[ArtifactFile]
) -> ModelArchitecture | None:
    """Read the architecture of the selected files from the source, or None if it cannot."""
    if format == "gguf":
        ggufs = sorted((f for f in files if f.name.lower().endswith(".gguf")), key=lambda f: f.name)
        if not ggufs:
            return None
        header = read_gguf_header(read, ggufs[0])
        return gguf_architecture(header, total_bytes=sum(f.size for f in ggufs))
    config = next((f for f in files if f.name.rsplit("/", 1)[-1] == "config.json"), None)
    if config is None or config.size > MAX_HEADER:
        return None
    data = json.loads(read(config, 0, config.size))
    if not isinstance(data, dict):
        return None
    arch = read_hf_config(data)
    shards = [f for f in files if f.name.endswith(".safetensors")]
    weights = sum(f.size for f in shards) or None

    counted = safetensors_parameters(read, shards) if shards else None
    return replace(arch, parameters=counted or arch.parameters, weights_bytes=weights)


def read_gguf_metadata(path: str | Path, total_bytes: int | None = None) -> ModelArchitecture:
    """The architecture, quantization and size a local GGUF file's header describes.

    ``total_bytes`` is the weights' size when this is the first part of a split model.
    Raises OSError when the file cannot be read, ValueError when it is not a readable GGUF.
    """
    try:
        header = read_local_gguf_header(path)
    except FetchError as error:
        raise ValueError(f"{path}: {error}") from None
    return gguf_architecture(header, total_bytes)


def load_hf_config(path: str | Path) -> ModelArchitecture:
    """The architecture a local Hugging Face ``config.json`` file describes."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: config.json must hold a JSON object")
    return read_hf_config(data)
