"""LoRA adapters once resolved: whether each fits its base, what they weigh, what status says.

``spec.adapters`` are resolved like the model (``resolver.py``, ``fetch/adapter_files.py``);
the outcome is a ``ResolvedAdapter`` per adapter, in spec order (llama.cpp numbers its
adapters by the order of its ``--lora`` flags). ``adapter_problems`` is the one judgement of
fit: a GGUF base (llama.cpp) loads GGUF LoRA adapters of its own ``general.architecture``;
a safetensors base (vLLM, SGLang) loads PEFT LoRA adapters, as trained (no ``scale``), up to
the largest rank vLLM allocates for. The recorded form in ``status.artifact.adapters`` lets a
restarted operator plan without asking the sources again.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import Adapter
from modeldeploy.resolution import AdapterFacts, ArtifactFile, Resolution

INCOMPATIBLE_ADAPTER = "IncompatibleAdapter"
# vLLM's --max-lora-rank choices (vllm/config/lora.py, MaxLoRARanks); it sizes one LoRA slot
# per --max-loras at this rank, so the smallest choice that holds every adapter is used.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_SCALE = 1.0
_ADAPTER_KINDS = {"gguf": "adapter/lora", "peft": "LORA"}


@dataclass(frozen=True)
class ResolvedAdapter:
    """One of ``spec.adapters`` resolved to exact files, with what its metadata says."""

    name: str
    scale: float | None
    resolution: Resolution

    @property
    def facts(self) -> AdapterFacts:
        """The adapter's own metadata (format only, when it could not be read)."""
        return self.resolution.adapter or AdapterFacts(self.resolution.format)


def adapters_hash(adapters: Sequence[Adapter]) -> str:
    """A short digest of ``spec.adapters``: a change of it means resolving again."""
    fields = [adapter.model_dump(mode="json", by_alias=True) for adapter in adapters]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def adapter_problems(base: Resolution | None, adapters: Sequence[ResolvedAdapter]) -> list[str]:
    """Why adapters cannot be served on this base, one line per adapter (empty: they fit)."""
    if base is None:
        return []
    problems = []
    base_architecture = base.architecture.architecture if base.architecture else None
    for adapter in adapters:
        facts = adapter.facts
        where = f"adapter {adapter.name} ({adapter.resolution.source})"
        if base.format == "gguf" and facts.format != "gguf":
            problems.append(
                f"{where} is a PEFT adapter; a GGUF base is served by llama.cpp, which loads "
                "GGUF LoRA adapters only (convert it with llama.cpp's convert_lora_to_gguf.py)"
            )
        elif base.format == "safetensors" and facts.format != "peft":
            problems.append(
                f"{where} is a GGUF adapter; a safetensors base is served by vLLM or SGLang, "
                "which load PEFT adapters (adapter_config.json with adapter_model.safetensors)"
            )
        elif facts.kind is not None and facts.kind != _ADAPTER_KINDS[facts.format]:
            problems.append(
                f"{where} is not a LoRA adapter: it says {facts.kind!r} "
                f"(expected {_ADAPTER_KINDS[facts.format]!r})"
            )
        elif (
            facts.format == "gguf"
            and base_architecture
            and facts.architecture
            and facts.architecture != base_architecture
        ):
            problems.append(
                f"{where} was made for architecture {facts.architecture}; the base model is "
                f"{base_architecture}"
            )
        elif facts.format == "peft" and adapter.scale is not None:
            problems.append(
                f"{where} sets scale {adapter.scale:g}; vLLM and SGLang apply PEFT adapters "
                "as trained (lora_alpha / r): remove scale"
            )
        elif facts.format == "peft" and (facts.rank or 0) > VLLM_LORA_RANKS[-1]:
            problems.append(
                f"{where} has rank {facts.rank}; the engines allocate LoRA slots of rank "
                f"{VLLM_LORA_RANKS[-1]} at most"
            )
    return problems


def max_lora_rank(adapters: Sequence[ResolvedAdapter]) -> int:
    """The smallest ``--max-lora-rank`` choice that holds every adapter's rank."""
    highest = max((a.facts.rank or 0 for a in adapters), default=0)
    return next(rank for rank in VLLM_LORA_RANKS if rank >= max(highest, 16))


def adapter_bytes(adapters: Sequence[ResolvedAdapter]) -> int:
    """The adapters' weights: every engine here keeps all of them resident."""
    return sum(a.resolution.total_bytes for a in adapters)


def adapters_status(adapters: Sequence[ResolvedAdapter]) -> list[dict[str, Any]]:
    """``status.artifact.adapters``: each adapter's revision, files, digests and facts."""
    out = []
    for adapter in adapters:
        entry = {"name": adapter.name, **adapter.resolution.as_status()}
        facts = adapter.facts
        entry["format"] = facts.format
        entry |= {
            key: value
            for key, value in (
                ("architecture", facts.architecture),
                ("rank", facts.rank),
                ("kind", facts.kind),
            )
            if value is not None
        }
        out.append(entry)
    return out


def adapters_from_status(
    recorded: Sequence[Mapping[str, Any]], adapters: Sequence[Adapter]
) -> tuple[ResolvedAdapter, ...] | None:
    """The adapters recorded in ``status.artifact.adapters``, if they match ``spec.adapters``."""
    by_name = {str(entry.get("name")): entry for entry in recorded}
    restored = []
    for adapter in adapters:
        entry = by_name.get(adapter.name)
        if entry is None or not entry.get("resolvedRevision"):
            return None
        files = tuple(
            ArtifactFile(f["name"], int(f.get("sizeBytes") or 0), f.get("sha256"))
            for f in entry.get("files") or []
        )
        facts = AdapterFacts(
            str(entry.get("format") or "gguf"),
            kind=entry.get("kind"),
            architecture=entry.get("architecture"),
            rank=entry.get("rank"),
        )
        resolution = Resolution(
            source=str(entry.get("source") or adapter.source),
            revision=str(entry["resolvedRevision"]),
            format=facts.format,
            quantization=None,
            files=files,
            adapter=facts,
        )
        restored.append(ResolvedAdapter(adapter.name, adapter.scale, resolution))
    return tuple(restored)
