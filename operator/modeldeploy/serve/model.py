"""Finding the model the fetcher published, and the GGUF facts the launcher needs.

The fetcher (``modeldeploy.fetch``) publishes each selection under
``<cache>/<source key>/<revision>/`` with a completion marker and a provenance record
listing its files. The launcher never writes the cache: it takes ``MODELDEPLOY_MODEL_PATH``
when the pod names the path outright, else it picks the complete selection of the source
that matches the revision, format and quantization it was given (the newest if several do).
LoRA adapters (``MODELDEPLOY_ADAPTERS``) are found the same way, by source and revision.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldeploy.adapters import DEFAULT_SCALE
from modeldeploy.fetch.cache import CacheEntry
from modeldeploy.fetch.errors import FetchError
from modeldeploy.fetch.gguf_header import (
    GGUF_MAGIC,
    find_string_field,
    gguf_architecture,
    read_local_gguf_header,
)
from modeldeploy.fetch.layout import META_DIR, source_key
from modeldeploy.fetch.uri import parse_source
from modeldeploy.runtimes import ADAPTERS_ENV
from modeldeploy.runtimes.base import ChatFacts, LaunchAdapter, Runtime
from modeldeploy.sizing import ModelArchitecture


class ModelNotFoundError(Exception):
    """No usable copy of the model: what was looked for and where."""


@dataclass(frozen=True)
class PublishedModel:
    """A complete selection in the cache: its directory and file names."""

    path: Path
    files: tuple[str, ...]
    revision: str


@dataclass(frozen=True)
class GgufInfo:
    """What the launcher reads from a GGUF header."""

    architecture: ModelArchitecture
    has_chat_template: bool


def find_published(
    cache_root: Path,
    source: str,
    *,
    revision: str | None = None,
    format: str | None = None,
    quantization: str | None = None,
) -> PublishedModel:
    """The newest complete selection of ``source`` that matches, or ModelNotFoundError."""
    try:
        canonical = parse_source(source).canonical
    except FetchError as error:
        raise ModelNotFoundError(str(error)) from None
    key_dir = cache_root / source_key(canonical)
    candidates: list[tuple[str, PublishedModel]] = []
    for marker in sorted(key_dir.glob(f"*/{META_DIR}/complete-*")):
        selection = marker.name.removeprefix("complete-")
        record = _read_json(marker.parent / f"provenance-{selection}.json")
        resolved = str(record.get("resolvedRevision") or "")
        entry = CacheEntry(cache_root, canonical, resolved)
        if not resolved or entry.path != marker.parent.parent or entry.lookup(selection) is None:
            continue
        if revision and revision not in (resolved, record.get("requestedRevision")):
            continue
        if format and format != "auto" and record.get("format") not in (None, format):
            continue
        recorded = record.get("quantization")
        wanted_quantization = quantization and quantization != "auto"
        if wanted_quantization and recorded and str(recorded).upper() != str(quantization).upper():
            continue
        names = tuple(str(f["name"]) for f in record.get("files", []))
        finished = str(record.get("finishedAt") or "")
        candidates.append((finished, PublishedModel(entry.path, names, resolved)))
    if not candidates:
        wanted = ", ".join(
            f"{k} {v}"
            for k, v in (("revision", revision), ("format", format), ("quantization", quantization))
            if v and v != "auto"
        )
        raise ModelNotFoundError(
            f"no complete copy of {source}{f' ({wanted})' if wanted else ''} in {cache_root}: "
            "the fetch (the pod's init container, or `modeldeploy fetch`) must run first"
        )
    return max(candidates, key=lambda item: item[0])[1]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_location(env: Mapping[str, str], runtime: Runtime) -> Path:
    """The path to serve: the runtime's model file (a GGUF's first shard), or the directory."""
    explicit = env.get("MODELDEPLOY_MODEL_PATH")
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise ModelNotFoundError(f"MODELDEPLOY_MODEL_PATH {path} does not exist")
        if runtime.serves_single_file and path.is_dir():
            names = [p.name for p in path.iterdir() if p.is_file()]
            return path / _model_file(runtime, names, path)
        return path
    source = env.get("MODELDEPLOY_MODEL_SOURCE")
    cache = env.get("MODELDEPLOY_CACHE_DIR")
    if not source or not cache:
        raise ModelNotFoundError(
            "set MODELDEPLOY_MODEL_PATH, or MODELDEPLOY_MODEL_SOURCE and MODELDEPLOY_CACHE_DIR"
        )
    published = find_published(
        Path(cache),
        source,
        revision=env.get("MODELDEPLOY_MODEL_REVISION"),
        format=env.get("MODELDEPLOY_MODEL_FORMAT"),
        quantization=env.get("MODELDEPLOY_QUANTIZATION"),
    )
    if runtime.serves_single_file:
        return published.path / _model_file(runtime, list(published.files), published.path)
    return published.path


def _model_file(runtime: Runtime, names: list[str], where: Path) -> str:
    try:
        chosen = runtime.model_file(names)
    except ValueError as error:
        raise ModelNotFoundError(f"{where}: {error}") from None
    if chosen is None:
        raise ModelNotFoundError(f"{where}: no model file among {', '.join(sorted(names))}")
    return chosen


def read_chat_facts(path: Path) -> ChatFacts:
    """``general.architecture`` and whether ``tokenizer.chat_template`` is set, found fast.

    A full header parse walks every token string of the vocabulary (seconds for a 256k
    vocabulary in Python); ``find_string_field`` finds these two string fields by their
    encoded form instead, within the header's bound, which takes milliseconds.
    """
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[: len(GGUF_MAGIC)] != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file")
        architecture = find_string_field(mm, "general.architecture")
        has_template = find_string_field(mm, "tokenizer.chat_template", max_length=0) is not None
    return ChatFacts(architecture, has_template)


def read_gguf_info(path: Path) -> GgufInfo:
    """Architecture and chat-template presence from a local GGUF file's header only."""
    header = read_local_gguf_header(path)
    return GgufInfo(
        architecture=gguf_architecture(header, path.stat().st_size),
        has_chat_template=bool(header.value("tokenizer.chat_template")),
    )


@dataclass(frozen=True)
class FoundAdapter:
    """An adapter of ``MODELDEPLOY_ADAPTERS`` found in the cache, with its scale."""

    adapter: LaunchAdapter
    scale: float


def adapter_locations(env: Mapping[str, str], runtime: Runtime) -> list[FoundAdapter]:
    """Each adapter ``MODELDEPLOY_ADAPTERS`` lists, found in the cache (spec order kept)."""
    text = env.get(ADAPTERS_ENV)
    if not text:
        return []
    cache = env.get("MODELDEPLOY_CACHE_DIR")
    try:
        entries = json.loads(text)
    except ValueError:
        raise ModelNotFoundError(f"{ADAPTERS_ENV} is not JSON") from None
    if not cache or not isinstance(entries, list):
        raise ModelNotFoundError(f"{ADAPTERS_ENV} needs MODELDEPLOY_CACHE_DIR and a JSON list")
    found = []
    for entry in entries:
        name, source = str(entry.get("name") or ""), str(entry.get("source") or "")
        published = find_published(Path(cache), source, revision=entry.get("revision"))
        where = f"adapter {name}"
        path = published.path
        if runtime.serves_single_file:
            ggufs = [n for n in published.files if n.lower().endswith(".gguf")]
            if len(ggufs) != 1:
                raise ModelNotFoundError(f"{where}: expected one .gguf among {published.files}")
            path = path / ggufs[0]
        scale = float(entry.get("scale") or DEFAULT_SCALE)
        found.append(FoundAdapter(LaunchAdapter(name, path), scale))
    return found
