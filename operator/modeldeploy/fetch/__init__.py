"""Model artifacts: resolve a source to exact files, fetch, verify, cache, record provenance.

Modules: ``uri`` (source URIs), ``envvars`` (the names of credentials and settings),
``select`` (files for a quantization), ``sources/`` (one per scheme), ``resolve`` (the
resolution the operator records, a ``modeldeploy.resolution.Resolution``), ``gguf_header``
(the one GGUF header parser: the architecture from range reads or a local file),
``untrusted`` (the bounds within which headers, configs and listings are read),
``download`` and ``transport`` (parallel, resumable, verified transfers), ``layout`` (the
cache's names), ``lock`` and ``cache`` (the shared cache), ``provenance``, ``signature``
(model-signing bundles, verified offline before publishing), ``fetcher`` (the whole fetch)
and ``cli`` (``modeldeploy fetch``). The init container that runs it in a
model pod is rendered by ``modeldeploy.render.fetch_init``.

The names below load on first use, so that ``modeldeploy fetch`` on a warm cache starts
without importing any client library.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ArtifactFile": "modeldeploy.resolution",
    "Resolution": "modeldeploy.resolution",
    "FetchError": "modeldeploy.fetch.errors",
    "FetchOptions": "modeldeploy.fetch.fetcher",
    "FetchResult": "modeldeploy.fetch.fetcher",
    "fetch": "modeldeploy.fetch.fetcher",
    "FetchRequest": "modeldeploy.fetch.request",
    "resolve": "modeldeploy.fetch.resolve",
    "resolve_model": "modeldeploy.fetch.resolve",
    "TrustAnchor": "modeldeploy.fetch.signature",
}

__all__ = [
    "ArtifactFile",
    "FetchError",
    "FetchOptions",
    "FetchRequest",
    "FetchResult",
    "Resolution",
    "TrustAnchor",
    "fetch",
    "resolve",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
