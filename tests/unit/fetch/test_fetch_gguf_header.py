"""The architecture from a GGUF header read with small ranges, before any download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import RangeServer

from modeldeploy.fetch.gguf_header import (
    gguf_architecture,
    parse_gguf_header,
    read_gguf_header,
    read_gguf_metadata,
)
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve
from modeldeploy.resolution import ArtifactFile
from modeldeploy.sizing import ModelArchitecture, gguf_architecture_from


def _reference_architecture(path: Path) -> ModelArchitecture:
    """The architecture by ``gguf.GGUFReader`` (gguf-py's own reader of the whole file)."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key: str) -> Any:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    tokens = reader.get_field("tokenizer.ggml.tokens")
    return gguf_architecture_from(
        value,
        [(t.name, int(t.n_elements), int(t.n_bytes)) for t in reader.tensors],
        lambda: len(tokens.data) if tokens else None,
    )


def test_the_prefix_parser_agrees_with_gguf_readers_on_a_whole_file(
    ggufs: GgufFactory, tmp_path: Path
) -> None:
    data = ggufs.model("Q8_0", layers=3, hidden=64)
    path = tmp_path / "m-Q8_0.gguf"
    path.write_bytes(data)
    header = parse_gguf_header(data)
    assert gguf_architecture(header) == _reference_architecture(path)
    assert read_gguf_metadata(path) == _reference_architecture(path)


def test_only_the_header_is_transferred(ggufs: GgufFactory, range_server: RangeServer) -> None:
    data = ggufs.model("Q4_K_M", padding=400_000)  # 1.6 MB of tensor data
    range_server.add("m-Q4_K_M.gguf", data)
    source = range_server.https("m-Q4_K_M.gguf")
    resolution = resolve(FetchRequest(source=source), env=range_server.env)
    arch = resolution.architecture
    assert arch is not None
    assert (arch.architecture, arch.layers, arch.kv_heads, arch.key_length) == ("llama", 2, 2, 16)
    assert arch.quantization == "Q4_K_M"
    assert arch.context_length == 2048
    served = range_server.bytes_served["/m-Q4_K_M.gguf"]
    assert served <= 256 * 1024 < len(data)


def test_a_header_bigger_than_the_first_read_is_read_in_growing_ranges(
    ggufs: GgufFactory,
) -> None:
    data = ggufs.model("F16", layers=40, hidden=16)
    reads: list[tuple[int, int]] = []

    def read(file: ArtifactFile, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return data[offset : offset + length]

    import modeldeploy.fetch.gguf_header as module

    original = module.FIRST_READ
    module.FIRST_READ = 64
    try:
        header = read_gguf_header(read, ArtifactFile("m.gguf", len(data)))
    finally:
        module.FIRST_READ = original
    assert header.value("llama.block_count") == 40
    assert len(reads) > 1
    # Ranges continue where the previous ended: no byte is fetched twice.
    assert all(reads[i + 1][0] == reads[i][0] + reads[i][1] for i in range(len(reads) - 1))


def test_the_first_part_of_a_split_gguf_sizes_from_its_label_and_all_parts(
    ggufs: GgufFactory,
) -> None:
    header = parse_gguf_header(ggufs.model("F16", split=(1, 3)))
    arch = gguf_architecture(header, total_bytes=123_456)
    assert arch.parameters == 1_000_000
    assert arch.weights_bytes == 123_456


def test_not_a_gguf_file_is_reported() -> None:
    from modeldeploy.fetch.errors import FetchError

    with pytest.raises(FetchError, match="bad magic"):
        parse_gguf_header(b"PK\x03\x04" + b"\0" * 100)
