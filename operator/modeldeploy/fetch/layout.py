"""The model cache's layout as names: where a source's revision and its files live.

Pure string functions, no file system access, so that rendering (the engine's model path in
the pod spec) and the fetcher (``cache.py``, which reads and writes the directories) agree
on one layout. See ``cache.py`` for the layout itself and how entries are published.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

META_DIR = ".modeldeploy"
PARTIAL_DIR = ".partial"
LOCK_DIR = ".locks"


def source_key(canonical_source: str) -> str:
    """The cache directory name of a source: 16 hex characters of its sha256."""
    return hashlib.sha256(canonical_source.encode()).hexdigest()[:16]


def revision_dirname(revision: str) -> str:
    """A revision as a single safe path component (``sha256:ab..`` -> ``sha256_ab..``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", revision)


def selection_id(format: str, quantization: str, globs: Sequence[str]) -> str:
    """A short id of what was asked for from a revision (format, quantization, file globs)."""
    payload = json.dumps(
        {"format": format, "quantization": quantization.upper(), "files": sorted(globs)}
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def model_path(cache_root: str, canonical_source: str, revision: str, file: str = "") -> str:
    """Where a published file (or the revision directory) lives: for the engine's arguments."""
    base = f"{cache_root.rstrip('/')}/{source_key(canonical_source)}/{revision_dirname(revision)}"
    return f"{base}/{file}" if file else base
