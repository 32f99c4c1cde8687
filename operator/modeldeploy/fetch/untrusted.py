"""Bounds on what is read from a source before download, and the bounded JSON reader.

Everything a source says about a model before its weights are fetched is untrusted input
parsed inside the operator (a reconcile pass) or the fetcher: GGUF headers
(``gguf_header``), safetensors headers and ``config.json``, OCI manifests and every
listing. Each reader works within the bounds below, on size, count, depth and CPU time,
and reports anything malformed or out of bounds as one ``InvalidArtifactError`` naming
the file and what is wrong; no input makes a reader raise anything else, recurse without
bound, or spend more than ``MAX_PARSE_CPU_S`` of CPU (tests/unit/fetch/test_fetch_untrusted.py
fuzzes them).

The bounds are far above what real models need (the largest vocabularies have about
260 000 tokens; a safetensors shard a few thousand tensors; ``config.json`` kilobytes) and
far below what would hurt the operator.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Any

from modeldeploy.fetch.errors import InvalidArtifactError
from modeldeploy.resolution import ArtifactFile

MAX_PARSE_CPU_S = 2.0  # CPU seconds one header, config or manifest may take to parse

# JSON: config.json and safetensors headers; OCI manifests are smaller still.
MAX_JSON_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # what the OCI distribution spec asks registries to take
MAX_JSON_VALUES = 1 << 20  # values (scalars and containers) in one document
MAX_JSON_DEPTH = 64  # nesting of arrays and objects

# Listings, from every source.
MAX_LISTED_FILES = 100_000
MAX_NAME_CHARS = 4096
MAX_FILE_SIZE = (1 << 63) - 1

# Architecture facts: what survives into sizing and status.artifact (JSON-safe integers).
MAX_FACT = 1 << 53


class CpuBudget:
    """CPU time of this thread spent on one parse, which may run in several pieces."""

    def __init__(self, file: str, seconds: float | None = None) -> None:
        self.file = file
        self.seconds = MAX_PARSE_CPU_S if seconds is None else seconds
        self.spent = 0.0
        self._started: float | None = None

    def start(self) -> None:
        """Count from now (until ``stop``)."""
        self._started = time.thread_time()

    def stop(self) -> None:
        """Stop counting; the time since ``start`` is spent."""
        if self._started is not None:
            self.spent += time.thread_time() - self._started
            self._started = None

    def check(self) -> None:
        """Raise ``InvalidArtifactError`` once the budget is spent."""
        running = time.thread_time() - self._started if self._started is not None else 0.0
        if self.spent + running > self.seconds:
            raise InvalidArtifactError(
                self.file, f"parsing took more than {self.seconds:g} s of CPU; not read further"
            )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:32]} is out of range")
    return value


def load_json(
    data: bytes,
    file: str,
    *,
    what: str = "JSON",
    max_bytes: int = MAX_JSON_BYTES,
    max_values: int = MAX_JSON_VALUES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse untrusted JSON within bounds on bytes, values, depth and CPU time.

    The value count is bounded before parsing from the separators (commas and opening
    brackets, counted in C), so no document builds more than ``max_values`` objects. NaN,
    Infinity and numbers outside a float's range are refused (they are not JSON).
    """
    if len(data) > max_bytes:
        raise InvalidArtifactError(
            file, f"{what} is {len(data)} bytes; at most {max_bytes} are read"
        )
    opening = data.count(b"[") + data.count(b"{")
    values = data.count(b",") + opening + 1
    if values > max_values:
        raise InvalidArtifactError(
            file, f"{what} holds up to {values} values; at most {max_values} are read"
        )
    budget = CpuBudget(file)
    budget.start()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArtifactError(file, f"{what} is not UTF-8 (at byte {error.start})") from None
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidArtifactError(
            file, f"{what} is nested deeper than {max_depth} levels"
        ) from None
    except ValueError as error:  # json.JSONDecodeError, the number checks, int digit limits
        raise InvalidArtifactError(file, f"{what} is not valid JSON: {error}") from None
    if opening > max_depth:
        _check_depth(value, file, what, max_depth, budget)
    budget.check()
    return value


def _check_depth(value: Any, file: str, what: str, max_depth: int, budget: CpuBudget) -> None:
    """Walk the containers without recursion; refuse nesting deeper than ``max_depth``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    walked = 0
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise InvalidArtifactError(file, f"{what} is nested deeper than {max_depth} levels")
        children: Iterable[Any] = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
        walked += 1
        if walked % 4096 == 0:
            budget.check()


def check_listing(files: Iterable[ArtifactFile], where: str) -> None:
    """Refuse a listing no real model has: too many files, odd names, impossible sizes."""
    seen: set[str] = set()
    for file in files:
        if len(seen) >= MAX_LISTED_FILES:
            raise InvalidArtifactError(
                "listing",
                f"more than {MAX_LISTED_FILES} files; at most that many are read",
                where=where,
            )
        name = file.name
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS or "\0" in name:
            shown = repr(name)[:80]
            raise InvalidArtifactError(
                "listing",
                f"a file name ({shown}) is empty, has a NUL byte or is too long",
                where=where,
            )
        size = file.size
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
            raise InvalidArtifactError(
                "listing", f"{name} has an impossible size ({str(size)[:32]})", where=where
            )
        if name in seen:
            raise InvalidArtifactError("listing", f"{name} is listed twice", where=where)
        seen.add(name)
