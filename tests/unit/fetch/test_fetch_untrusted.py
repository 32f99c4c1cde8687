"""Untrusted metadata: every header, config or listing ends in a result or one refusal.

The GGUF, safetensors and ``config.json`` readers are fuzzed (hypothesis) with mutated real
headers (a small GGUF written here with ``gguf.GGUFWriter``, a safetensors file laid out
as the format says, a real ``config.json``) and given crafted hostile ones (an unknown
tensor type, arrays nested 100 000 deep, counts up to 2^64-1, 3 million empty strings, every
truncation). Each input ends in a parsed architecture or one ``InvalidArtifactError`` that
names the file; never another exception.

Bounds this test states: at most ``EXAMPLES`` examples a property, each within
hypothesis's ``DEADLINE`` (2 s of wall time; the readers' own bound is
``MAX_PARSE_CPU_S`` = 2 s of CPU); the memory a parse allocates (tracemalloc's peak, the
input itself aside) stays under ``MEMORY_BOUND`` (8 MiB) for the fuzzed inputs and under
``HOSTILE_MEMORY_BOUND`` (4 MiB) for the 24 MB header of 3 million empty strings, which is
refused after its first read (256 KiB) instead of parsed.
"""

from __future__ import annotations

import functools
import json
import struct
import tempfile
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.fetch import hostile
from tests.unit.fetch.conftest import HUB_TOKEN
from tests.unit.fetch.standins import HubStandin

from modeldeploy.artifacts import REFUSING_REASONS
from modeldeploy.fetch import gguf_header, untrusted
from modeldeploy.fetch.errors import InvalidArtifactError
from modeldeploy.fetch.gguf_header import (
    MAX_ARRAY,
    MAX_ARRAY_DEPTH,
    MAX_STRINGS,
    GgufParser,
    load_hf_config,
    parse_gguf_header,
    read_architecture,
    read_gguf_header,
    read_gguf_metadata,
)
from modeldeploy.fetch.sources.oci import OciSource
from modeldeploy.fetch.untrusted import MAX_JSON_DEPTH, check_listing, load_json
from modeldeploy.fetch.uri import parse_source
from modeldeploy.resolution import ArtifactFile
from modeldeploy.resolver import REFUSAL_RECHECK_S, RETRY_FIRST_S, ArtifactResolver
from modeldeploy.sizing import ModelArchitecture

T = TypeVar("T")

EXAMPLES = 150
DEADLINE = timedelta(seconds=2)
MEMORY_BOUND = 8 * 1024 * 1024
HOSTILE_MEMORY_BOUND = 4 * 1024 * 1024
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=DEADLINE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

GGUF_NAME = "tiny-F16.gguf"
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "sliding_window": 32768,
    "use_sliding_window": False,
}


@functools.cache
def real_gguf() -> bytes:
    """A small real GGUF file, as llama.cpp's converters write one (``gguf.GGUFWriter``)."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / GGUF_NAME
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_name("tiny")
        writer.add_block_count(2)
        writer.add_context_length(2048)
        writer.add_embedding_length(64)
        writer.add_feed_forward_length(256)
        writer.add_head_count(4)
        writer.add_head_count_kv(2)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_token_list([f"tok{i}" for i in range(40)])
        writer.add_token_scores([0.5] * 40)
        writer.add_array("tiny.nested", [[1, 2], [3, 4, 5]])
        writer.add_tensor("token_embd.weight", np.ones((40, 64), dtype=np.float16))
        writer.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float16))
        writer.add_tensor("output_norm.weight", np.ones((64,), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


@functools.cache
def real_header_bytes() -> int:
    return parse_gguf_header(real_gguf()).header_bytes


def safetensors_file(header: dict[str, Any] | None = None) -> bytes:
    """A safetensors file (8-byte length, JSON header padded to 8, data) of two tensors."""
    tensors = {
        "model.embed_tokens.weight": np.ones((32, 16), dtype=np.float16),
        "model.layers.0.mlp.up_proj.weight": np.ones((16, 16), dtype=np.float32),
    }
    dtypes = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
    built: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, array in tensors.items():
        raw = array.tobytes()
        built[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header if header is not None else built).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def reader(files: dict[str, bytes]) -> Callable[[ArtifactFile, int, int], bytes]:
    def read(file: ArtifactFile, offset: int, length: int) -> bytes:
        return files[file.name][offset : offset + length]

    return read


def outcome(
    run: Callable[[], T], name: str, bound: int | None = MEMORY_BOUND
) -> T | InvalidArtifactError:
    """``run()``'s result or its ``InvalidArtifactError`` (anything else propagates), the
    error naming ``name`` and the parse allocating at most ``bound`` bytes at its peak
    (None: not traced, where tracing every allocation would slow a long parse)."""
    if bound is not None:
        tracemalloc.start()
    try:
        result: T | InvalidArtifactError = run()
    except InvalidArtifactError as error:
        result = error
    finally:
        if bound is not None:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    if bound is not None:
        assert peak <= bound, f"the parse allocated {peak} bytes"
    if isinstance(result, InvalidArtifactError):
        assert result.file == name and str(result).startswith(f"{name}: "), str(result)
        assert result.reason == "InvalidArtifact" and result.problem
    return result


# Values that break parsers: type codes, lengths at and past every bound, 2^64-1.
EXTREMES = st.sampled_from(
    [
        *(0, 1, 2, 7, 8, 9, 12, 13, 99, 255, 4096, 4097, MAX_ARRAY, MAX_ARRAY + 1, 3_000_000),
        *(1 << 31, (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 63) - 1, 1 << 63, (1 << 64) - 1),
    ]
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, region: int, start: int = 0) -> bytes:
    """``data`` with a few edits from ``start`` within its first ``region`` bytes: a byte,
    an extreme u32 or u64 written over what was there, bytes inserted or deleted, or the
    rest cut off. (A GGUF file's edits start past its magic, which is checked first.)"""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 5))):
        if not out:
            break
        at = draw(st.integers(min(start, len(out) - 1), min(region, len(out)) - 1))
        op = draw(st.sampled_from(["byte", "u32", "u64", "insert", "delete", "cut"]))
        if op == "byte":
            out[at] = draw(st.integers(0, 255))
        elif op in ("u32", "u64"):
            size = 4 if op == "u32" else 8
            number = draw(EXTREMES | st.integers(0, (1 << (8 * size)) - 1)) % (1 << (8 * size))
            out[at : at + size] = number.to_bytes(size, "little")
        elif op == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 24))]
        else:
            del out[at:]
    return bytes(out)


def gguf_outcome(data: bytes) -> ModelArchitecture | InvalidArtifactError:
    file = ArtifactFile(GGUF_NAME, len(data))
    return outcome(lambda: read_architecture(reader({GGUF_NAME: data}), "gguf", [file]), GGUF_NAME)


def test_the_real_files_parse() -> None:
    arch = gguf_outcome(real_gguf())
    assert isinstance(arch, ModelArchitecture), arch
    assert (arch.architecture, arch.layers, arch.kv_heads, arch.vocab_size) == ("llama", 2, 2, 40)
    header = parse_gguf_header(real_gguf())
    assert header.value("tiny.nested")[1].values == (3, 4, 5)
    files = {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": safetensors_file()}
    listed = [ArtifactFile(name, len(data)) for name, data in files.items()]
    config = read_architecture(reader(files), "safetensors", listed)
    assert config is not None and config.layers == 24
    assert config.parameters == 32 * 16 + 16 * 16  # counted from the shard's header


@FUZZ
@given(data=st.data())
def test_mutated_gguf_headers_parse_or_are_refused(data: st.DataObject) -> None:
    header = data.draw(mutated(real_gguf(), region=real_header_bytes() + 64, start=4))
    result = gguf_outcome(header)
    assert isinstance(result, ModelArchitecture | InvalidArtifactError)


@FUZZ
@given(data=st.data(), cuts=st.lists(st.integers(1, 512), max_size=12))
def test_parsing_in_pieces_gives_what_parsing_at_once_gives(
    data: st.DataObject, cuts: list[int]
) -> None:
    """The parser keeps its place: fed in any pieces, it ends as fed all at once."""
    header = data.draw(mutated(real_gguf(), region=real_header_bytes() + 64, start=4))
    whole = outcome(lambda: parse_gguf_header(header, GGUF_NAME, len(header)), GGUF_NAME)

    def in_pieces() -> Any:
        parser = GgufParser(GGUF_NAME, len(header))
        offset = 0
        for size in [*cuts, len(header)]:
            parsed = parser.feed(header[offset : offset + size])
            offset += size
            if parsed is not None:
                return parsed
            if offset >= len(header):
                break
        raise AssertionError("a whole file parsed in pieces neither ended nor was refused")

    pieces = outcome(in_pieces, GGUF_NAME)
    assert repr(pieces) == repr(whole)


@FUZZ
@given(data=st.data(), first=st.integers(1, 2048))
def test_ranges_are_read_once_each_and_within_the_bound(data: st.DataObject, first: int) -> None:
    header = data.draw(mutated(real_gguf(), region=real_header_bytes() + 64, start=4))
    reads: list[tuple[int, int]] = []

    def read(file: ArtifactFile, offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return header[offset : offset + length]

    original = gguf_header.FIRST_READ
    gguf_header.FIRST_READ = first
    try:
        outcome(lambda: read_gguf_header(read, ArtifactFile(GGUF_NAME, len(header))), GGUF_NAME)
    finally:
        gguf_header.FIRST_READ = original
    assert all(reads[i + 1][0] == sum(reads[i]) for i in range(len(reads) - 1)), reads
    assert sum(length for _, length in reads) <= len(header)


def _typed(kind: int, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[int, Any]]:
    return st.tuples(st.just(kind), values)


def _array(kind: int, values: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[int, Any]]:
    return _typed(hostile.ARRAY, st.tuples(st.just(kind), st.lists(values, min_size=0, max_size=4)))


# A value of any GGUF type, as a (type, value) pair the encoder writes.
GGUF_VALUES = st.one_of(
    _typed(hostile.U32, st.integers(0, (1 << 32) - 1)),
    _typed(hostile.I32, st.integers(-(1 << 31), (1 << 31) - 1)),
    _typed(hostile.U64, st.integers(0, (1 << 64) - 1)),
    _typed(hostile.I64, st.integers(-(1 << 63), (1 << 63) - 1)),
    _typed(hostile.F32, st.floats(width=32)),
    _typed(hostile.F64, st.floats()),
    _typed(hostile.BOOL, st.booleans()),
    _typed(hostile.STRING, st.text(max_size=12)),
    _array(hostile.U32, st.integers(0, (1 << 32) - 1)),
    _array(hostile.I32, st.integers(-(1 << 31), (1 << 31) - 1)),
    _array(hostile.F32, st.floats(width=32)),
    _array(hostile.STRING, st.text(max_size=4)),
    _typed(hostile.ARRAY, st.tuples(st.just(hostile.ARRAY), st.just([(hostile.U8, [1])]))),
)
GGUF_KEYS = st.sampled_from(
    [
        *(key for key, _, _ in hostile.LLAMA),
        *("llama.vocab_size", "llama.attention.key_length", "llama.attention.value_length"),
        *("split.count", "general.size_label", "general.alignment", "tokenizer.ggml.tokens"),
    ]
)


@FUZZ
@given(values=st.dictionaries(GGUF_KEYS, GGUF_VALUES, max_size=6))
def test_gguf_fields_of_any_type_parse_or_are_refused(values: dict[str, tuple[int, Any]]) -> None:
    """Well-formed headers whose fields hold any type and value: sizing's mapping of them
    ends in an architecture or the refusal, never a TypeError or OverflowError."""
    fields = [(k, t, v) for k, t, v in hostile.LLAMA if k not in values]
    fields += [(key, kind, item) for key, (kind, item) in values.items()]
    norm = ("output_norm.weight", [64], hostile.F32_TYPE, 0)
    data = hostile.gguf(fields, [norm], data=bytes(256))
    result = gguf_outcome(data)
    assert isinstance(result, ModelArchitecture | InvalidArtifactError)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    key=st.sampled_from([*CONFIG, "text_config", "quantization_config", "num_local_experts"]),
    replacement=JSON_VALUES,
)
def test_configs_with_any_value_in_any_field_parse_or_are_refused(
    key: str, replacement: Any
) -> None:
    text = json.dumps({**CONFIG, key: replacement}).encode()
    files = {"config.json": text}
    listed = [ArtifactFile("config.json", len(text))]
    result = outcome(lambda: read_architecture(reader(files), "safetensors", listed), "config.json")
    assert isinstance(result, ModelArchitecture | InvalidArtifactError)


@FUZZ
@given(data=st.data())
def test_mutated_config_bytes_parse_or_are_refused(data: st.DataObject) -> None:
    text = json.dumps(CONFIG).encode()
    broken = data.draw(mutated(text, region=len(text)))
    listed = [ArtifactFile("config.json", len(broken))]
    read = reader({"config.json": broken})
    result = outcome(lambda: read_architecture(read, "safetensors", listed), "config.json")
    assert isinstance(result, ModelArchitecture | InvalidArtifactError)


@FUZZ
@given(data=st.data(), structured=st.booleans())
def test_mutated_safetensors_headers_parse_or_are_refused(
    data: st.DataObject, structured: bool
) -> None:
    real = safetensors_file()
    if structured:  # a valid JSON header with any value in one place
        (length,) = struct.unpack("<Q", real[:8])
        header = json.loads(real[8 : 8 + length])
        name = data.draw(st.sampled_from(sorted(header)))
        if name != "__metadata__" and data.draw(st.booleans()):
            part = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
            header[name][part] = data.draw(JSON_VALUES)
        else:
            header[name] = data.draw(JSON_VALUES)
        shard = safetensors_file(header)
    else:
        shard = data.draw(mutated(real, region=8 + struct.unpack("<Q", real[:8])[0]))
    files = {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": shard}
    listed = [ArtifactFile(name, len(content)) for name, content in files.items()]
    result = outcome(
        lambda: read_architecture(reader(files), "safetensors", listed), "model.safetensors"
    )
    assert isinstance(result, ModelArchitecture | InvalidArtifactError)


def refused(data: bytes, match: str, bound: int | None = MEMORY_BOUND) -> InvalidArtifactError:
    """The refusal of a crafted GGUF file, read as from a source."""
    file = ArtifactFile(GGUF_NAME, len(data))
    result = outcome(lambda: read_gguf_header(reader({GGUF_NAME: data}), file), GGUF_NAME, bound)
    assert isinstance(result, InvalidArtifactError), result
    assert match in result.problem, result.problem
    return result


def test_the_crafted_file_encoder_writes_what_a_reader_reads() -> None:
    tiny = hostile.gguf(hostile.LLAMA, [("output_norm.weight", [64], hostile.F32_TYPE, 0)])
    header = parse_gguf_header(tiny + b"\0" * 256, file_size=len(tiny) + 256)
    assert header.value("llama.block_count") == 2 and header.tensors[0].n_bytes == 256


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (hostile.unknown_tensor_type(99), "has an unknown type 99"),
        (hostile.nested_arrays(100_000), f"nests arrays deeper than {MAX_ARRAY_DEPTH} levels"),
        (hostile.gguf(n_tensors=(1 << 64) - 1), "declares 18446744073709551615 tensors"),
        (hostile.gguf(n_fields=(1 << 64) - 1), "declares 18446744073709551615 metadata fields"),
        (
            hostile.gguf(
                raw_fields=hostile.string("k") + struct.pack("<IIQ", 9, 8, (1 << 64) - 1),
                n_fields=1,
            ),
            "is an array of 18446744073709551615 elements",
        ),
        (
            hostile.gguf(
                raw_fields=hostile.string("k") + struct.pack("<IQ", 8, (1 << 64) - 1), n_fields=1
            ),
            "holds a string of 18446744073709551615 bytes",
        ),
        (hostile.gguf(raw_fields=struct.pack("<Q", (1 << 64) - 1), n_fields=1), "bytes long"),
        (
            hostile.gguf(raw_fields=hostile.string("k") + struct.pack("<I", 13), n_fields=1),
            "unknown value type 13",
        ),
        (hostile.gguf([("a", hostile.U8, 1), ("a", hostile.U8, 2)]), "appears twice"),
        (
            hostile.gguf(tensors=[("t", [64], 0, 0), ("t", [64], 0, 256)], data=b"\0" * 512),
            "tensor 't' appears twice",
        ),
        (hostile.gguf(tensors=[("t", [64], 0, 0)]), "ends past the end of the file"),
        (
            hostile.gguf(tensors=[("t", [64], 0, 3)], data=b"\0" * 512),
            "not a multiple of the alignment",
        ),
        (hostile.gguf(tensors=[("t", [1, 1, 1, 1, 1], 0, 0)]), "has 5 dimensions"),
        (
            hostile.gguf(tensors=[("t", [33], 8, 0)], data=b"\0" * 64),
            "not a multiple of the block size",
        ),
        (hostile.gguf(version=1), "version 1 is too old"),
        (hostile.gguf(version=3 << 24), "big-endian"),
        (b"PK\x03\x04" + b"\0" * 100, "bad magic"),
        (b"GGU", "truncated"),
        (b"", "no bytes at offset 0"),
        (hostile.gguf([("general.alignment", hostile.U32, 48)]), "not a power of two"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_crafted_hostile_gguf_headers_are_refused(data: bytes, match: str) -> None:
    refused(data, match)


def test_three_million_empty_strings_are_refused_at_their_count() -> None:
    data = hostile.empty_strings(3_000_000)  # 24 MB of header
    assert len(data) > 24_000_000
    reads: list[int] = []
    read = reader({GGUF_NAME: data})

    def counting(file: ArtifactFile, offset: int, length: int) -> bytes:
        reads.append(length)
        return read(file, offset, length)

    file = ArtifactFile(GGUF_NAME, len(data))
    result = outcome(lambda: read_gguf_header(counting, file), GGUF_NAME, HOSTILE_MEMORY_BOUND)
    assert isinstance(result, InvalidArtifactError)
    assert "array of 3000000 elements; at most 1048576 are read" in result.problem
    assert sum(reads) <= 256 * 1024  # refused after the first read, not parsed


def test_strings_over_all_arrays_are_bounded() -> None:
    per_array = MAX_STRINGS // 2
    # Two arrays at the length bound parse (2 million strings); the third is refused.
    data = hostile.empty_strings(per_array, arrays=3)
    refused(data, f"more than {MAX_STRINGS} strings", bound=None)


def test_the_cpu_budget_stops_a_long_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(untrusted, "MAX_PARSE_CPU_S", 0.0)
    refused(hostile.empty_strings(100_000), "parsing took more than 0 s of CPU")


def test_every_truncation_of_a_real_header_is_refused() -> None:
    real = real_gguf()
    for cut in range(real_header_bytes()):
        prefix = real[:cut]
        refused(prefix, "no bytes" if cut == 0 else "truncated")


def test_local_readers_raise_the_same_error_which_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(hostile.unknown_tensor_type())
    with pytest.raises(InvalidArtifactError, match="unknown type 99") as caught:
        read_gguf_metadata(path)
    assert isinstance(caught.value, ValueError) and caught.value.file == str(path)
    config = tmp_path / "config.json"
    config.write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested deeper than"):
        load_hf_config(config)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
        (b"[" * 70 + b"]" * 70, "nested deeper than"),  # parsed, then refused
        (b"[" + b"0," * (1 << 20) + b"0]", "values; at most"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1e999}', "not valid JSON"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b"{", "not valid JSON"),
        (b" " * (17 * 1024 * 1024), "bytes; at most"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_hostile_json_is_refused(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArtifactError, match=match):
        load_json(data, "config.json")


def test_json_at_the_depth_bound_is_read() -> None:
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert load_json(deep, "x.json") is not None


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"t": {"dtype": "F16", "shape": [4], "data_offsets": [0, 10_000]}}, "outside the"),
        ({"t": {"dtype": "F16", "shape": [4], "data_offsets": [0, 4]}}, "not the 8 its shape"),
        ({"t": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 0]}}, "has a dimension -1"),
        ({"t": {"dtype": "F16", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 0]}}, r"2\^63"),
        ({"t": [1, 2]}, "is not an object"),
        ({"t": {"shape": [1]}}, "lacks a dtype"),
        ({"__metadata__": {"a": 1}}, "__metadata__"),
    ],
)
def test_hostile_safetensors_headers_are_refused(header: dict[str, Any], match: str) -> None:
    files = {
        "config.json": json.dumps(CONFIG).encode(),
        "model.safetensors": safetensors_file(header),
    }
    listed = [ArtifactFile(name, len(content)) for name, content in files.items()]
    with pytest.raises(InvalidArtifactError, match=match) as caught:
        read_architecture(reader(files), "safetensors", listed)
    assert caught.value.file == "model.safetensors"


def test_a_safetensors_length_beyond_the_file_is_refused() -> None:
    shard = struct.pack("<Q", (1 << 64) - 1) + b"{}"
    files = {"config.json": json.dumps(CONFIG).encode(), "model.safetensors": shard}
    listed = [ArtifactFile(name, len(content)) for name, content in files.items()]
    with pytest.raises(InvalidArtifactError, match="at most"):
        read_architecture(reader(files), "safetensors", listed)


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ([ArtifactFile("a", 1), ArtifactFile("a", 2)], "a is listed twice"),
        ([ArtifactFile("a", -1)], "impossible size"),
        ([ArtifactFile("", 1)], "is empty"),
        ([ArtifactFile("a\0b", 1)], "NUL"),
        ([ArtifactFile(f"f{i}", 1) for i in range(untrusted.MAX_LISTED_FILES + 1)], "more than"),
    ],
)
def test_impossible_listings_are_refused(files: list[ArtifactFile], match: str) -> None:
    with pytest.raises(InvalidArtifactError, match=match):
        check_listing(files, "s3://bucket/model")


def test_the_resolver_refuses_a_hostile_header_and_checks_it_again_slowly(
    hub: HubStandin,
) -> None:
    """``InvalidArtifact`` is a refusal (ArtifactVerified=False), re-checked after
    ``REFUSAL_RECHECK_S``, not the unreachable source's backoff."""
    assert "InvalidArtifact" in REFUSING_REASONS
    now = [1000.0]
    hub.repo("acme/Hostile-GGUF").commit({"hostile-Q4_K_M.gguf": hostile.unknown_tensor_type()})
    resolver = ArtifactResolver(
        lambda namespace, name: {"HF_TOKEN": HUB_TOKEN},
        {"HF_ENDPOINT": hub.url},
        clock=lambda: now[0],
    )
    md = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {
                "source": "hf://acme/Hostile-GGUF",
                "format": "gguf",
                "quantization": "Q4_K_M",
                "credentialsSecret": "hub-token",
            },
            "hardware": {"accelerator": "cpu"},
        },
    }
    state = resolver.state_for(md)
    assert state is not None and state.reason == "InvalidArtifact" and state.refused
    assert state.resolution is None
    revision = hub.repo("acme/Hostile-GGUF").branches["main"]
    assert f"hf://acme/Hostile-GGUF@{revision}: hostile-Q4_K_M.gguf: " in state.message
    assert "tensor 'token_embd.weight' has an unknown type 99" in state.message
    asked = len(hub.requests)
    now[0] += RETRY_FIRST_S * 4  # past the unreachable source's first retries
    assert resolver.state_for(md) == state
    assert len(hub.requests) == asked
    now[0] += REFUSAL_RECHECK_S
    assert resolver.state_for(md) == state
    assert len(hub.requests) > asked


class _Registry:
    """Stands in for oras-py's registry client: every manifest request gets ``body``."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def get_container(self, reference: str) -> Any:
        return SimpleNamespace(manifest_url=lambda: "127.0.0.1:9/v2/models/tiny/manifests/v1")

    def do_request(self, url: str, method: str, headers: dict[str, str]) -> Any:
        return SimpleNamespace(status_code=200, content=self.body)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"[" * 100_000, "nested deeper than"),
        (b"[]", "not a JSON object"),
        (b'{"layers": "all"}', "layers is not a list"),
        (b'{"layers": [{"digest": 7, "size": 1}]}', "layer 0 has no digest"),
        (b'{"layers": [{"digest": "sha256:00", "size": -1}]}', "layer 0 has a negative size"),
        (b'{"layers": [{"digest": "sha256:00", "size": "1"}]}', "layer 0 has no integer size"),
        (b'{"layers": [], "annotations": {"org.opencontainers.image.licenses": 1}}', "licenses"),
        (b" " * (5 * 1024 * 1024), "bytes; at most"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_hostile_oci_manifests_are_refused(body: bytes, match: str) -> None:
    source = OciSource(parse_source("oci://127.0.0.1:9/models/tiny:v1"), {})
    source._registry = _Registry(body)
    with pytest.raises(InvalidArtifactError, match=match) as caught:
        source.list(None)
    assert caught.value.file == "manifest"
