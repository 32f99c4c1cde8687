"""Model artifacts: resolve a source to exact files, fetch, verify, cache, record provenance.

Modules: ``uri`` (source URIs), ``select`` (files for a quantization), ``sources/`` (one
per scheme), ``resolve`` (the resolution the operator records), ``gguf_header`` (the
architecture from range reads), ``download`` and ``transport`` (parallel, resumable,
verified transfers), ``lock`` and ``cache`` (the shared cache), ``provenance``, ``fetcher``
(the whole fetch), ``cli`` (``modeldeploy fetch``) and ``podspec`` (the init container).

The names below load on first use, so that ``modeldeploy fetch`` on a warm cache starts
without importing any client library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArtifactFile": "modeldeploy.fetch.artifact",
    "Resolution": "modeldeploy.fetch.artifact",
    "FetchError": "modeldeploy.fetch.errors",
    "FetchOptions": "modeldeploy.fetch.fetcher",
    "FetchResult": "modeldeploy.fetch.fetcher",
    "fetch": "modeldeploy.fetch.fetcher",
    "FetchRequest": "modeldeploy.fetch.request",
    "resolve": "modeldeploy.fetch.resolve",
    "resolve_model": "modeldeploy.fetch.resolve",
    "fetch_command": "modeldeploy.fetch.podspec",
    "fetch_env": "modeldeploy.fetch.podspec",
    "fetch_secret_volume": "modeldeploy.fetch.podspec",
    "served_path": "modeldeploy.fetch.podspec",
}

__all__ = [
    "ArtifactFile",
    "FetchError",
    "FetchOptions",
    "FetchRequest",
    "FetchResult",
    "Resolution",
    "fetch",
    "fetch_command",
    "fetch_env",
    "fetch_secret_volume",
    "resolve",
    "resolve_model",
    "served_path",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
