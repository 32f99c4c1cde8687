"""Reading a model's architecture from the source with small range reads, before download.

A GGUF file starts with its metadata and tensor table; a safetensors checkpoint comes with
``config.json`` and each shard starts with an 8-byte length and a JSON header. Reading
those (kilobytes to a few MiB, fetched in growing ranges) gives the planner the real layer
count, KV heads, head size, context length and weight bytes, so the memory estimate is
right before any large transfer starts.

This is the project's one GGUF header parser. ``GgufParser`` is incremental: it is fed the
file's bytes in order as they arrive, parses as far as they reach and keeps its place, so
a header read in growing ranges is parsed once (``gguf.GGUFReader`` needs the whole file).
It reads from any ``RangeReader``: a source's Range requests, or a local file
(``read_local_gguf_header``, for ``modeldeploy plan --gguf`` and the launcher);
``sizing.gguf_architecture_from`` maps the metadata to a ``ModelArchitecture`` (a test
proves the result agrees with ``gguf.GGUFReader``'s). ``find_string_field`` finds one
string field without a parse, for the launcher's start.

The bytes are untrusted: every reader here works within the bounds below and those of
``fetch.untrusted`` (size, counts, nesting, CPU time) and reports anything malformed as
one ``InvalidArtifactError`` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from modeldeploy.fetch.errors import InvalidArtifactError
from modeldeploy.fetch.untrusted import MAX_FACT, MAX_JSON_BYTES, CpuBudget, load_json
from modeldeploy.resolution import ArtifactFile
from modeldeploy.sizing import ModelArchitecture, gguf_architecture_from, read_hf_config

RangeReader = Callable[[ArtifactFile, int, int], bytes]
"""Read ``length`` bytes at ``offset`` of a file of the source."""

FIRST_READ = 256 * 1024
MAX_HEADER = 64 * 1024 * 1024  # the most of a GGUF file read as its header
MAX_CONFIG = MAX_JSON_BYTES  # config.json
MAX_SAFETENSORS_HEADER = MAX_JSON_BYTES  # the JSON header of one safetensors shard
GGUF_MAGIC = b"GGUF"

# The bounds of a GGUF header; real files stay far below them (the largest vocabularies
# have about 260 000 tokens, models a few thousand tensors and a few dozen fields).
MAX_FIELDS = 65_536  # metadata key-value pairs
MAX_TENSORS = 131_072  # entries of the tensor table
MAX_ARRAY = 1 << 20  # elements of one metadata array
MAX_STRINGS = 1 << 21  # string and array elements of all arrays together
MAX_ARRAY_DEPTH = 4  # arrays of arrays of ...
MAX_NAME_BYTES = 65_535  # a key or a tensor name
MAX_STRING_BYTES = 16 * 1024 * 1024  # one string value
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_KEPT = 1 << 16  # array values kept over all arrays; past it arrays keep their length
_MAX_KEPT_ARRAY = 4096  # longer arrays (token lists) keep only their length
_MAX_ELEMENTS = (1 << 63) - 1
_CHECK_EVERY = 1 << 14  # elements parsed between two looks at the CPU budget
_DEFAULT_ALIGNMENT = 32

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
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PREAMBLE = struct.Struct("<4sIQQ")
_TYPE_AND_OFFSET = struct.Struct("<IQ")

# safetensors element sizes in bytes (dtypes not listed are accepted unchecked).
_SAFETENSORS_DTYPES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
}


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
    name: str = ""  # the file it was read from, for messages

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


@dataclass
class _Array:
    """An array being parsed: its element type, length, the elements done, kept values."""

    kind: int
    count: int
    values: list[Any] | None
    done: int = 0


_MORE = object()  # not enough bytes yet: ``needed`` says how many
_PUSHED = object()  # an array was opened: its elements come next

_PHASE_PREAMBLE, _PHASE_KEY, _PHASE_VALUE, _PHASE_TENSORS = range(4)


class GgufParser:
    """An incremental GGUF header parser that keeps its place between reads.

    ``feed`` appends the next bytes of the file and parses as far as they reach: every
    unit (a key, a string, an array's head, a block of scalars, a tensor entry) is parsed
    once, when all of it has arrived; long arrays of strings resume element by element.
    ``needed`` is then the file offset the parse needs bytes up to. Bytes already parsed
    are dropped. Raises ``InvalidArtifactError`` for a malformed header or one outside the
    bounds (``MAX_*``, ``MAX_HEADER`` bytes, ``MAX_PARSE_CPU_S`` of CPU over all feeds).
    """

    def __init__(self, name: str, file_size: int | None = None) -> None:
        self.name = name
        self.file_size = file_size
        self.needed = _PREAMBLE.size
        self._buf = bytearray()
        self._base = 0  # file offset of _buf[0]
        self._pos = 0  # the parse's place in _buf
        self._phase = _PHASE_PREAMBLE
        self._version = 0
        self._n_tensors = 0
        self._n_fields = 0
        self._fields: dict[str, Any] = {}
        self._key = ""
        self._kind = 0
        self._stack: list[_Array] = []
        self._elements = 0  # string and array elements of arrays, so far
        self._kept = 0
        self._tensors: list[GgufTensor] = []
        self._offsets: list[int] = []
        self._tensor_names: set[str] = set()
        self._budget = CpuBudget(name)
        self._header: GgufHeader | None = None

    @property
    def offset(self) -> int:
        """How many bytes of the file have been fed."""
        return self._base + len(self._buf)

    def feed(self, data: bytes) -> GgufHeader | None:
        """Take the next bytes; the header once complete, else None (see ``needed``)."""
        if self._header is not None:
            return self._header
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        self._buf += data
        self._budget.start()
        try:
            self._header = self._parse()
        finally:
            self._budget.stop()
        if self._header is None:
            if self.needed > MAX_HEADER:
                self._invalid(
                    f"the header is larger than {MAX_HEADER} bytes (it needs {self.needed})"
                )
            if self.file_size is not None and self.needed > self.file_size:
                self._invalid(
                    f"truncated: the header needs {self.needed} bytes, the file has "
                    f"{self.file_size}"
                )
        return self._header

    def _invalid(self, problem: str) -> NoReturn:
        raise InvalidArtifactError(self.name, problem)

    def _have(self, end: int) -> bool:
        """Whether ``_buf`` reaches ``end``; else note the file offset that is needed."""
        if end <= len(self._buf):
            return True
        self.needed = self._base + end
        return False

    def _parse(self) -> GgufHeader | None:
        while True:
            if self._phase == _PHASE_PREAMBLE:
                if not self._preamble():
                    return None
            elif self._phase == _PHASE_KEY:
                if len(self._fields) == self._n_fields:
                    self._phase = _PHASE_TENSORS
                elif not self._field_key():
                    return None
            elif self._phase == _PHASE_VALUE:
                value = self._array_step() if self._stack else self._start(self._kind)
                if value is _MORE:
                    return None
                if value is not _PUSHED:
                    self._fields[self._key] = value
                    self._phase = _PHASE_KEY
            else:
                if not self._tensor_table():
                    return None
                return self._finish()

    def _preamble(self) -> bool:
        if self._buf[: len(GGUF_MAGIC)] != GGUF_MAGIC[: len(self._buf)]:
            self._invalid("not a GGUF file (bad magic)")
        if not self._have(_PREAMBLE.size):
            return False
        magic, version, n_tensors, n_fields = _PREAMBLE.unpack_from(self._buf, 0)
        if magic != GGUF_MAGIC:
            self._invalid("not a GGUF file (bad magic)")
        if version & 0xFFFF == 0 and version:
            self._invalid(f"a big-endian GGUF file (version field {version:#x}) is not supported")
        if version < 2:
            self._invalid(f"GGUF version {version} is too old to read")
        if n_tensors > MAX_TENSORS:
            self._invalid(
                f"the header declares {n_tensors} tensors; at most {MAX_TENSORS} are read"
            )
        if n_fields > MAX_FIELDS:
            self._invalid(
                f"the header declares {n_fields} metadata fields; at most {MAX_FIELDS} are read"
            )
        self._version, self._n_tensors, self._n_fields = version, n_tensors, n_fields
        self._pos = _PREAMBLE.size
        self._phase = _PHASE_KEY
        return True

    def _name(self, what: str) -> tuple[str, int] | None:
        """A length-prefixed name at ``_pos``: (the name, the offset after it), or None;
        ``what`` says whose name it is."""
        pos = self._pos
        if not self._have(pos + 8):
            return None
        (length,) = _U64.unpack_from(self._buf, pos)
        if length > MAX_NAME_BYTES:
            self._invalid(f"{what} is {length} bytes long; at most {MAX_NAME_BYTES} are read")
        end = pos + 8 + length
        if not self._have(end):
            return None
        return self._buf[pos + 8 : end].decode("utf-8", errors="replace"), end

    def _field_key(self) -> bool:
        found = self._name(f"the name of metadata field {len(self._fields)}")
        if found is None:
            return False
        key, end = found
        if not self._have(end + 4):
            return False
        if key in self._fields:
            self._invalid(f"the metadata key {key[:80]!r} appears twice")
        (self._kind,) = _U32.unpack_from(self._buf, end)
        self._key = key
        self._pos = end + 4
        self._phase = _PHASE_VALUE
        return True

    def _start(self, kind: int) -> Any:
        """A value of ``kind`` at ``_pos``: the value, ``_PUSHED`` for an array, or ``_MORE``."""
        buf, pos = self._buf, self._pos
        scalar = _SCALARS.get(kind)
        if scalar is not None:
            if not self._have(pos + scalar[1]):
                return _MORE
            self._pos = pos + scalar[1]
            return struct.unpack_from(scalar[0], buf, pos)[0]
        if kind == _STRING:
            if not self._have(pos + 8):
                return _MORE
            (length,) = _U64.unpack_from(buf, pos)
            if length > MAX_STRING_BYTES:
                self._invalid(f"{self._key[:80]!r} holds a string of {length} bytes")
            if not self._have(pos + 8 + length):
                return _MORE
            self._pos = pos + 8 + length
            return buf[pos + 8 : pos + 8 + length].decode("utf-8", errors="replace")
        if kind == _ARRAY:
            return self._open_array()
        return self._invalid(f"{self._key[:80]!r} has an unknown value type {kind}")

    def _open_array(self) -> Any:
        pos = self._pos
        if not self._have(pos + 12):
            return _MORE
        (inner,) = _U32.unpack_from(self._buf, pos)
        (count,) = _U64.unpack_from(self._buf, pos + 4)
        key = repr(self._key[:80])
        if inner not in _SCALARS and inner not in (_STRING, _ARRAY):
            self._invalid(f"{key} is an array of an unknown value type {inner}")
        if len(self._stack) >= MAX_ARRAY_DEPTH:
            self._invalid(f"{key} nests arrays deeper than {MAX_ARRAY_DEPTH} levels")
        if count > MAX_ARRAY:
            self._invalid(f"{key} is an array of {count} elements; at most {MAX_ARRAY} are read")
        if inner in (_STRING, _ARRAY):
            self._elements += count
            if self._elements > MAX_STRINGS:
                self._invalid(
                    f"the arrays up to {key} hold more than {MAX_STRINGS} strings or arrays"
                )
        keep = count <= _MAX_KEPT_ARRAY and self._kept + count <= MAX_KEPT
        if keep:
            self._kept += count
        self._stack.append(_Array(inner, count, [] if keep else None))
        self._pos = pos + 12
        return _PUSHED

    def _array_step(self) -> Any:
        """Advance the innermost open array: a completed value, ``_PUSHED`` or ``_MORE``."""
        top = self._stack[-1]
        if top.kind == _STRING:
            if not self._strings(top):
                return _MORE
        elif top.kind == _ARRAY:
            if top.done < top.count:
                return self._open_array()
        else:
            fmt, size = _SCALARS[top.kind]
            end = self._pos + top.count * size
            if not self._have(end):
                return _MORE
            if top.values is not None:
                top.values.extend(struct.unpack_from(f"<{top.count}{fmt[1]}", self._buf, self._pos))
            self._pos = end
            top.done = top.count
        self._stack.pop()
        done = GgufArray(top.count, tuple(top.values) if top.values is not None else None)
        if not self._stack:
            return done
        parent = self._stack[-1]
        if parent.values is not None:
            parent.values.append(done)
        parent.done += 1
        return _PUSHED

    def _strings(self, top: _Array) -> bool:
        """Parse the array's remaining strings as far as the bytes reach; True when done."""
        buf, pos, size = self._buf, self._pos, len(self._buf)
        unpack, values, done, count = _U64.unpack_from, top.values, top.done, top.count
        try:
            while done < count:
                stop = min(count, done + _CHECK_EVERY)
                while done < stop:
                    if pos + 8 > size:
                        self.needed = self._base + pos + 8
                        return False
                    (length,) = unpack(buf, pos)
                    if length > MAX_STRING_BYTES:
                        self._invalid(f"{self._key[:80]!r} holds a string of {length} bytes")
                    end = pos + 8 + length
                    if end > size:
                        self.needed = self._base + end
                        return False
                    if values is not None:
                        values.append(buf[pos + 8 : end].decode("utf-8", errors="replace"))
                    pos = end
                    done += 1
                self._budget.check()
            return True
        finally:
            self._pos, top.done = pos, done

    def _tensor_table(self) -> bool:
        import gguf

        while len(self._tensors) < self._n_tensors:
            found = self._name(f"the name of tensor {len(self._tensors)}")
            if found is None:
                return False
            name, at = found
            if not self._have(at + 4):
                return False
            (n_dims,) = _U32.unpack_from(self._buf, at)
            shown = repr(name[:80])
            if n_dims > MAX_DIMS:
                self._invalid(f"tensor {shown} has {n_dims} dimensions; GGML allows {MAX_DIMS}")
            end = at + 4 + 8 * n_dims + _TYPE_AND_OFFSET.size
            if not self._have(end):
                return False
            dims = struct.unpack_from(f"<{n_dims}Q", self._buf, at + 4)
            kind, offset = _TYPE_AND_OFFSET.unpack_from(self._buf, at + 4 + 8 * n_dims)
            if name in self._tensor_names:
                self._invalid(f"tensor {shown} appears twice")
            try:
                block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                self._invalid(f"tensor {shown} has an unknown type {kind}")
            elements = 1
            for dim in dims:
                elements *= dim
            if elements > _MAX_ELEMENTS:
                self._invalid(f"tensor {shown} has more than 2^63 elements {list(dims)}")
            if dims and dims[0] % block:
                self._invalid(
                    f"tensor {shown}: its first dimension {dims[0]} is not a multiple of the "
                    f"block size {block} of its type {kind}"
                )
            self._tensor_names.add(name)
            self._tensors.append(GgufTensor(name, elements, elements * type_size // block))
            self._offsets.append(offset)
            self._pos = end
            if len(self._tensors) % 4096 == 0:
                self._budget.check()
        return True

    def _finish(self) -> GgufHeader:
        header_bytes = self._base + self._pos
        alignment = self._fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if (
            isinstance(alignment, bool)
            or not isinstance(alignment, int)
            or alignment <= 0
            or alignment & (alignment - 1)
        ):
            self._invalid(f"general.alignment {alignment!r} is not a power of two")
        data_start = -(-header_bytes // alignment) * alignment
        for tensor, offset in zip(self._tensors, self._offsets, strict=True):
            if offset % alignment:
                self._invalid(
                    f"tensor {tensor.name[:80]!r} starts at offset {offset}, not a multiple "
                    f"of the alignment {alignment}"
                )
            if self.file_size is not None and data_start + offset + tensor.n_bytes > self.file_size:
                self._invalid(
                    f"tensor {tensor.name[:80]!r} ({tensor.n_bytes} bytes at offset {offset}) "
                    f"ends past the end of the file ({self.file_size} bytes)"
                )
        return GgufHeader(
            self._version, self._fields, tuple(self._tensors), header_bytes, self.name
        )


def parse_gguf_header(
    data: bytes, name: str = "GGUF header", file_size: int | None = None
) -> GgufHeader:
    """Parse a GGUF header from a prefix of the file (``InvalidArtifactError`` when the
    prefix ends within the header, or the header is malformed)."""
    parser = GgufParser(name, file_size)
    header = parser.feed(data)
    if header is None:
        raise InvalidArtifactError(
            name, f"truncated: the header needs {parser.needed} bytes, {len(data)} are given"
        )
    return header


def read_gguf_header(read: RangeReader, file: ArtifactFile) -> GgufHeader:
    """Fetch just enough of a remote GGUF file to parse its header, each byte once.

    Reads start at ``FIRST_READ`` and grow (at least doubling) to what the parse needs,
    within ``MAX_HEADER`` and the file's size; the parser keeps its place between them.
    """
    parser = GgufParser(file.name, file.size)
    limit = min(file.size, MAX_HEADER)
    want = min(FIRST_READ, limit)
    while True:
        offset = parser.offset
        chunk = read(file, offset, want - offset)[: want - offset] if want > offset else b""
        if not chunk:
            raise InvalidArtifactError(
                file.name, f"the source served no bytes at offset {offset}, within the header"
            )
        header = parser.feed(chunk)
        if header is not None:
            return header
        want = min(limit, max(parser.needed, 2 * parser.offset))


def read_local_gguf_header(path: str | Path) -> GgufHeader:
    """The header of a GGUF file on this machine, read in the same growing ranges."""
    path = Path(path)
    with path.open("rb") as handle:
        fd = handle.fileno()

        def read(_: ArtifactFile, offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        return read_gguf_header(read, ArtifactFile(str(path), os.fstat(fd).st_size))


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
    if start + 8 > len(data):
        return None
    (length,) = struct.unpack_from("<Q", data, start)
    return bytes(data[start + 8 : start + 8 + min(length, max_length)]).decode(errors="replace")


_MAPPING_ERRORS = (ArithmeticError, LookupError, TypeError, ValueError, AttributeError)


def _facts(file: str, build: Callable[[], ModelArchitecture]) -> ModelArchitecture:
    """The architecture ``build`` maps from untrusted metadata, refused unless every fact
    is a plausible value (a string, a boolean, or an integer in [0, 2^53])."""
    try:
        arch = build()
    except _MAPPING_ERRORS as error:
        raise InvalidArtifactError(
            file, f"metadata that does not describe a model ({type(error).__name__}: {error})"
        ) from None
    for fact in dataclasses.fields(arch):
        value = getattr(arch, fact.name)
        if value is None or isinstance(value, bool):
            continue
        if fact.name in ("architecture", "quantization"):
            if not isinstance(value, str) or len(value) > 256:
                raise InvalidArtifactError(file, f"{fact.name} {repr(value)[:80]} is not a name")
        elif not isinstance(value, int) or not 0 <= value <= MAX_FACT:
            raise InvalidArtifactError(file, f"{fact.name} {repr(value)[:80]} is out of range")
    return arch


def gguf_architecture(header: GgufHeader, total_bytes: int | None = None) -> ModelArchitecture:
    """The architecture a remotely read GGUF header describes (shared rules in sizing)."""
    return _facts(
        header.name or "GGUF header",
        lambda: gguf_architecture_from(
            header.value,
            [(t.name, t.n_elements, t.n_bytes) for t in header.tensors],
            lambda: header.length("tokenizer.ggml.tokens"),
            split_weights_bytes=total_bytes,
        ),
    )


def _read_exactly(read: RangeReader, file: ArtifactFile, offset: int, length: int) -> bytes:
    data = read(file, offset, length)[:length] if length else b""
    if len(data) != length:
        raise InvalidArtifactError(
            file.name, f"the source served {len(data)} of {length} bytes at offset {offset}"
        )
    return data


def read_safetensors_header(read: RangeReader, shard: ArtifactFile) -> tuple[dict[str, Any], int]:
    """A safetensors shard's JSON header and the size of its data section."""
    if shard.size < 8:
        raise InvalidArtifactError(shard.name, "shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", _read_exactly(read, shard, 0, 8))
    if length > MAX_SAFETENSORS_HEADER:
        raise InvalidArtifactError(
            shard.name,
            f"the header is {length} bytes; at most {MAX_SAFETENSORS_HEADER} are read",
        )
    if 8 + length > shard.size:
        raise InvalidArtifactError(
            shard.name, f"truncated: the header needs {8 + length} bytes, the file has {shard.size}"
        )
    header = load_json(
        _read_exactly(read, shard, 8, length),
        shard.name,
        what="the safetensors header",
        max_bytes=MAX_SAFETENSORS_HEADER,
    )
    if not isinstance(header, dict):
        raise InvalidArtifactError(shard.name, "the safetensors header is not a JSON object")
    return header, shard.size - 8 - length


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_elements(header: dict[str, Any], data_bytes: int, file: str) -> int:
    """The elements of every tensor a shard's header lists, each entry checked."""
    budget = CpuBudget(file)
    budget.start()
    total = 0
    for index, (name, tensor) in enumerate(header.items()):
        if index % 4096 == 4095:
            budget.check()
        shown = repr(name[:80])
        if name == "__metadata__":
            if not isinstance(tensor, dict) or not all(isinstance(v, str) for v in tensor.values()):
                raise InvalidArtifactError(file, "__metadata__ is not an object of strings")
            continue
        if not isinstance(tensor, dict):
            raise InvalidArtifactError(file, f"tensor {shown} is not an object")
        dtype, shape, offsets = tensor.get("dtype"), tensor.get("shape"), tensor.get("data_offsets")
        if not (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and isinstance(offsets, list)
            and len(offsets) == 2
        ):
            raise InvalidArtifactError(file, f"tensor {shown} lacks a dtype, shape or data_offsets")
        elements = 1
        for dim in shape:
            if not _is_count(dim):
                raise InvalidArtifactError(file, f"tensor {shown} has a dimension {dim!r}")
            elements *= dim
            if elements > _MAX_ELEMENTS:
                raise InvalidArtifactError(file, f"tensor {shown} has more than 2^63 elements")
        begin, end = offsets
        if not (_is_count(begin) and _is_count(end) and begin <= end <= data_bytes):
            raise InvalidArtifactError(
                file,
                f"tensor {shown} has data_offsets {repr(offsets)[:80]} outside the "
                f"{data_bytes} bytes of data",
            )
        size = _SAFETENSORS_DTYPES.get(dtype)
        if size is not None and end - begin != elements * size:
            raise InvalidArtifactError(
                file,
                f"tensor {shown} holds {end - begin} bytes, not the {elements * size} its "
                f"shape and dtype {dtype} need",
            )
        total += elements
    budget.stop()
    budget.check()
    return total


def safetensors_parameters(read: RangeReader, shards: Sequence[ArtifactFile]) -> int | None:
    """The parameter count summed over safetensors shard headers (8 bytes + JSON each)."""
    total = 0
    for shard in shards:
        header, data_bytes = read_safetensors_header(read, shard)
        total += safetensors_elements(header, data_bytes, shard.name)
        if total > MAX_FACT:
            raise InvalidArtifactError(
                shard.name, f"the shards' headers add up to more than 2^53 parameters ({total})"
            )
    return total or None


def parse_hf_config(data: bytes, file: str) -> ModelArchitecture:
    """The architecture untrusted ``config.json`` bytes describe."""
    config = load_json(data, file, what="config.json", max_bytes=MAX_CONFIG)
    if not isinstance(config, dict):
        raise InvalidArtifactError(file, "config.json must hold a JSON object")
    return _facts(file, lambda: read_hf_config(config))


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
    if config is None:
        return None
    if config.size > MAX_CONFIG:
        raise InvalidArtifactError(
            config.name, f"config.json is {config.size} bytes; at most {MAX_CONFIG} are read"
        )
    arch = parse_hf_config(_read_exactly(read, config, 0, config.size), config.name)
    shards = [f for f in files if f.name.endswith(".safetensors")]
    weights = sum(f.size for f in shards) or None

    counted = safetensors_parameters(read, shards) if shards else None
    return _facts(
        config.name,
        lambda: replace(arch, parameters=counted or arch.parameters, weights_bytes=weights),
    )


def read_gguf_metadata(path: str | Path, total_bytes: int | None = None) -> ModelArchitecture:
    """The architecture, quantization and size a local GGUF file's header describes.

    ``total_bytes`` is the weights' size when this is the first part of a split model.
    Raises OSError when the file cannot be read, ``InvalidArtifactError`` (a ValueError)
    when it is not a readable GGUF.
    """
    return gguf_architecture(read_local_gguf_header(path), total_bytes)


def load_hf_config(path: str | Path) -> ModelArchitecture:
    """The architecture a local Hugging Face ``config.json`` file describes (OSError, or
    ``InvalidArtifactError``, a ValueError)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_CONFIG:
        raise InvalidArtifactError(
            str(path), f"config.json is {size} bytes; at most {MAX_CONFIG} are read"
        )
    return parse_hf_config(path.read_bytes(), str(path))
