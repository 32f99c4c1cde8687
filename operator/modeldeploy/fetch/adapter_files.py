"""A LoRA adapter's files: which of a source's files make the adapter, and what they say.

An adapter is one GGUF LoRA file (llama.cpp; ``convert_lora_to_gguf.py`` writes them) or a
PEFT directory: ``adapter_config.json`` beside ``adapter_model.safetensors`` (vLLM, SGLang).
``files`` globs override the choice. Before download the resolver reads the GGUF header or
``adapter_config.json`` (untrusted: bounded like every header, ``fetch.untrusted``) for
``AdapterFacts``; whether the adapter fits its base is the core's decision
(``modeldeploy.adapters``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from modeldeploy.fetch.errors import InvalidArtifactError, MissingFileError, SelectionError
from modeldeploy.fetch.gguf_header import RangeReader, read_gguf_header
from modeldeploy.fetch.select import Selection
from modeldeploy.fetch.untrusted import MAX_FACT, load_json
from modeldeploy.resolution import AdapterFacts, ArtifactFile

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
MAX_PEFT_CONFIG = 1 << 20  # an adapter_config.json is a few hundred bytes


def select_adapter_files(names: Sequence[str], source: str, globs: Sequence[str]) -> Selection:
    """The adapter's files: the globs' matches, else its one GGUF, else its PEFT pair."""
    if globs:
        chosen = sorted({n for g in globs for n in names if fnmatch.fnmatchcase(n, g)})
        missing = [g for g in globs if not any(fnmatch.fnmatchcase(n, g) for n in names)]
        if missing:
            raise MissingFileError(f"{source}: no file matches {missing[0]!r}")
        return Selection(tuple(chosen), _format_of(chosen, source), None, ())
    ggufs = [n for n in names if "/" not in n and n.lower().endswith(".gguf")]
    if len(ggufs) == 1:
        return Selection((ggufs[0],), "gguf", None, ())
    if PEFT_CONFIG in names and PEFT_WEIGHTS in names:
        return Selection((PEFT_CONFIG, PEFT_WEIGHTS), "peft", None, ())
    shown = ", ".join(sorted(names)[:20]) or "no files"
    if len(ggufs) > 1:
        raise SelectionError(
            f"{source} holds {len(ggufs)} GGUF files; name the adapter's with files: ({shown})"
        )
    raise SelectionError(
        f"{source} holds no LoRA adapter: expected one .gguf file, or {PEFT_CONFIG} with "
        f"{PEFT_WEIGHTS}; available: {shown}"
    )


def _format_of(chosen: Sequence[str], source: str) -> str:
    if any(n.lower().endswith(".gguf") for n in chosen):
        return "gguf"
    if any(n.rsplit("/", 1)[-1] == PEFT_CONFIG for n in chosen):
        return "peft"
    raise SelectionError(
        f"{source}: the files {', '.join(chosen)} hold neither a .gguf adapter nor {PEFT_CONFIG}"
    )


def read_adapter_facts(
    read: RangeReader, format: str, files: Sequence[ArtifactFile]
) -> AdapterFacts:
    """What the adapter's GGUF header or ``adapter_config.json`` says (InvalidArtifact if bad)."""
    if format == "gguf":
        gguf = next(f for f in files if f.name.lower().endswith(".gguf"))
        header = read_gguf_header(read, gguf)
        general_type, adapter_type = header.value("general.type"), header.value("adapter.type")
        kind = f"{general_type}/{adapter_type}" if adapter_type else general_type
        return AdapterFacts(
            "gguf",
            kind=_text(kind, gguf.name),
            architecture=_text(header.value("general.architecture"), gguf.name),
            alpha=_number(header.value("adapter.lora.alpha"), gguf.name),
        )
    config = next(f for f in files if f.name.rsplit("/", 1)[-1] == PEFT_CONFIG)
    if config.size > MAX_PEFT_CONFIG:
        raise InvalidArtifactError(
            config.name, f"{config.size} bytes; at most {MAX_PEFT_CONFIG} are read"
        )
    data = read(config, 0, config.size)[: config.size]
    document = load_json(data, config.name, what=PEFT_CONFIG, max_bytes=MAX_PEFT_CONFIG)
    if not isinstance(document, dict):
        raise InvalidArtifactError(config.name, f"{PEFT_CONFIG} must hold a JSON object")
    mapping = document.get("auto_mapping")
    base_class = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    rank = document.get("r")
    if rank is not None and not (isinstance(rank, int) and 0 < rank <= MAX_FACT):
        raise InvalidArtifactError(config.name, f"r {repr(rank)[:40]} is not a positive rank")
    return AdapterFacts(
        "peft",
        kind=_text(document.get("peft_type"), config.name),
        architecture=_text(base_class, config.name),
        rank=rank,
        alpha=_number(document.get("lora_alpha"), config.name),
    )


def _text(value: Any, file: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise InvalidArtifactError(file, f"{repr(value)[:80]} is not a name")
    return value


def _number(value: Any, file: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or abs(value) > MAX_FACT:
        raise InvalidArtifactError(file, f"{repr(value)[:80]} is not a number")
    return float(value)
