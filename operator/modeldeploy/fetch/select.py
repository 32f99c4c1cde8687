"""Choosing the files to serve from a source's listing, for a format and a quantization.

GGUF repositories hold one file (or one split set ``-00001-of-00003.gguf``) per
quantization; the quantization is read from the file name (case-insensitively) and the
request must match exactly one file or one complete split set. Safetensors checkpoints are
every top-level ``*.safetensors`` plus the JSON, tokenizer and template files an engine
reads. Explicit ``files`` globs override both. Every refusal lists what the source offers.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from modeldeploy.catalog import (
    DEFAULT_GGUF_QUANTIZATION,
    QUANTIZATION_ALIASES,
    quantization_from_name,
)
from modeldeploy.fetch.errors import MissingFileError, SelectionError

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_LABEL = re.compile(
    r"(?<![A-Za-z0-9])(I?Q\d+(?:_[A-Za-z0-9]+)*|BF16|FP16|F16|FP32|F32|FP8|MXFP4)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
# Files that sit beside GGUF weights but are not a model: multimodal projectors, imatrix data.
_GGUF_NOT_MODEL = re.compile(r"(^|[-_.])(mmproj|imatrix)([-_.]|$)", re.IGNORECASE)
_SAFETENSORS_SIDE_FILES = (
    "*.json",
    "tokenizer.model",
    "*.tiktoken",
    "vocab.txt",
    "merges.txt",
    "*.jinja",
)
_MAX_LISTED = 40


@dataclass(frozen=True)
class Selection:
    """The chosen files, the format they are in and the quantization they carry."""

    files: tuple[str, ...]
    format: str
    quantization: str | None
    available_quantizations: tuple[str, ...]


def normalize_quantization(label: str) -> str:
    """Upper-case a quantization label and map aliases (``q4_k`` -> ``Q4_K_M``)."""
    upper = label.upper()
    return QUANTIZATION_ALIASES.get(upper, upper)


def gguf_label(name: str) -> str | None:
    """The quantization label in a GGUF file name (``x-UD-Q4_K_XL.gguf`` -> ``Q4_K_XL``)."""
    base = posixpath.basename(name)
    split = _SPLIT.match(base)
    stem = split.group("stem") if split else base.rsplit(".", 1)[0]
    labels = _LABEL.findall(stem)
    return normalize_quantization(labels[-1]) if labels else None


@dataclass(frozen=True)
class _GgufModel:
    """One quantized model inside a listing: a single file or a split set."""

    key: str
    label: str | None
    files: tuple[str, ...]
    problem: str | None = None

    def describe(self) -> str:
        label = self.label or "unknown quantization"
        if len(self.files) == 1:
            return f"{label} ({self.files[0]})"
        return f"{label} ({self.key}, {len(self.files)} parts)"


def _gguf_models(names: Sequence[str]) -> list[_GgufModel]:
    """Group GGUF files into models: split sets by stem, complete or flagged incomplete."""
    singles: list[_GgufModel] = []
    splits: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for name in names:
        base = posixpath.basename(name)
        if not base.lower().endswith(".gguf") or _GGUF_NOT_MODEL.search(base):
            continue
        match = _SPLIT.match(base)
        if match:
            key = posixpath.join(posixpath.dirname(name), match.group("stem"))
            splits[key].append((int(match.group("part")), int(match.group("count")), name))
        else:
            singles.append(_GgufModel(name, gguf_label(name), (name,)))
    models = list(singles)
    for key, parts in splits.items():
        parts.sort()
        counts = {count for _, count, _ in parts}
        numbers = [part for part, _, _ in parts]
        files = tuple(name for _, _, name in parts)
        problem = None
        if len(counts) != 1:
            problem = f"split set {key} disagrees on its part count: {sorted(counts)}"
        else:
            (count,) = counts
            missing = sorted(set(range(1, count + 1)) - set(numbers))
            if missing:
                problem = (
                    f"split set {key} is incomplete: parts {', '.join(map(str, missing))} "
                    f"of {count} are missing"
                )
        models.append(_GgufModel(key, gguf_label(files[0]), files, problem))
    return sorted(models, key=lambda m: m.key)


def _listing_summary(names: Sequence[str]) -> str:
    shown = sorted(names)[:_MAX_LISTED]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "") if shown else "nothing"


def available_gguf_quantizations(names: Sequence[str]) -> list[str]:
    """The quantization labels of the GGUF models in a listing, sorted."""
    return sorted({m.label for m in _gguf_models(names) if m.label})


def select_files(
    names: Sequence[str],
    *,
    source: str,
    format: str = "auto",
    quantization: str = "auto",
    globs: Sequence[str] = (),
) -> Selection:
    """Choose the files to serve, or raise SelectionError/MissingFileError listing what exists."""
    if not names:
        raise MissingFileError(f"{source}: the source holds no files")
    gguf_quants = tuple(available_gguf_quantizations(names))
    if globs:
        return _select_globs(names, source, globs, gguf_quants)
    has_gguf = bool(_gguf_models(names))
    has_safetensors = any(_top_level_safetensors(names))
    fmt = format
    if fmt == "auto":
        fmt = _auto_format(has_gguf, has_safetensors, quantization, source, names)
    if fmt == "gguf":
        return _select_gguf(names, source, quantization, gguf_quants)
    return _select_safetensors(names, source, quantization, gguf_quants)


def _auto_format(
    has_gguf: bool, has_safetensors: bool, quantization: str, source: str, names: Sequence[str]
) -> str:
    if has_gguf and not has_safetensors:
        return "gguf"
    if has_safetensors and not has_gguf:
        return "safetensors"
    if has_gguf and has_safetensors:
        wanted = normalize_quantization(quantization)
        if quantization != "auto" and wanted in available_gguf_quantizations(names):
            return "gguf"
        if quantization == "auto" and quantization_from_name(source) is None:
            raise SelectionError(
                f"{source} holds both GGUF and safetensors files; set format: gguf or "
                "format: safetensors"
            )
        return "safetensors"
    raise SelectionError(
        f"{source} holds no GGUF or safetensors model files; available: {_listing_summary(names)}"
    )


def _select_gguf(
    names: Sequence[str], source: str, quantization: str, available: tuple[str, ...]
) -> Selection:
    models = _gguf_models(names)
    offer = "; ".join(m.describe() for m in models) or "no GGUF files"
    if not models:
        raise SelectionError(
            f"{source} holds no GGUF model files; available: {_listing_summary(names)}"
        )
    if quantization == "auto":
        named = quantization_from_name(source)
        if len(models) == 1:
            candidates = models
        else:
            wanted = named or DEFAULT_GGUF_QUANTIZATION
            candidates = [m for m in models if m.label == wanted]
            if not candidates:
                raise SelectionError(
                    f"{source} holds {len(models)} GGUF models and quantization is auto; "
                    f"choose one of: {', '.join(available) or offer}"
                )
    else:
        wanted = normalize_quantization(quantization)
        candidates = [m for m in models if m.label == wanted]
        if not candidates:
            raise SelectionError(
                f"{source} has no GGUF file for quantization {quantization}; "
                f"available: {', '.join(available) if available else offer}"
            )
    if len(candidates) > 1:
        raise SelectionError(
            f"{source} has {len(candidates)} GGUF models for quantization "
            f"{candidates[0].label}: {'; '.join(m.describe() for m in candidates)}; "
            "name one with files:"
        )
    (model,) = candidates
    if model.problem:
        raise MissingFileError(f"{source}: {model.problem}")
    return Selection(model.files, "gguf", model.label, available)


def _top_level_safetensors(names: Sequence[str]) -> list[str]:
    return [n for n in names if "/" not in n and n.lower().endswith(".safetensors")]


def _select_safetensors(
    names: Sequence[str], source: str, quantization: str, available: tuple[str, ...]
) -> Selection:
    weights = _top_level_safetensors(names)
    if not weights:
        raise SelectionError(
            f"{source} holds no top-level *.safetensors files; available: {_listing_summary(names)}"
        )
    side = [
        n
        for n in names
        if "/" not in n and any(fnmatch.fnmatchcase(n, g) for g in _SAFETENSORS_SIDE_FILES)
    ]
    if "config.json" not in side:
        raise MissingFileError(
            f"{source}: a safetensors checkpoint needs config.json; it is missing"
        )
    quant = None if quantization == "auto" else normalize_quantization(quantization)
    return Selection(tuple(sorted({*weights, *side})), "safetensors", quant, available)


def _select_globs(
    names: Sequence[str], source: str, globs: Sequence[str], available: tuple[str, ...]
) -> Selection:
    chosen: set[str] = set()
    for glob in globs:
        matched = [n for n in names if fnmatch.fnmatchcase(n, glob)]
        if not matched:
            raise MissingFileError(
                f"{source}: no file matches {glob!r}; available: {_listing_summary(names)}"
            )
        chosen.update(matched)
    # A matched part of a split GGUF brings its whole set, which must be complete.
    for model in _gguf_models(names):
        if len(model.files) > 1 and chosen.intersection(model.files):
            if model.problem:
                raise MissingFileError(f"{source}: {model.problem}")
            chosen.update(model.files)
    files = tuple(sorted(chosen))
    ggufs = [f for f in files if f.lower().endswith(".gguf") and not _GGUF_NOT_MODEL.search(f)]
    fmt = "gguf" if ggufs else "safetensors"
    labels = {gguf_label(f) for f in ggufs}
    quant = labels.pop() if len(labels) == 1 else None
    return Selection(files, fmt, quant, available)
