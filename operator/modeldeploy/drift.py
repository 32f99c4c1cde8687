"""Drift: whether a live object already holds everything the operator renders for it.

``needs_apply`` compares the rendered object with the live one without any call, so that an
unchanged world costs no write at all (a no-op server-side apply is still a PATCH request).
Only what the operator renders counts: fields others own (defaults the API server fills
in, an injected sidecar, a second ownerReference) are ignored, and resource quantities are
compared by value, since the API server stores them in canonical form. Pure: ``apply.py``
stays the only writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeldeploy.quantity import parse_quantity

# Keys that identify the elements of Kubernetes' associative lists ("listType: map"),
# so that elements others add (an injected sidecar, a second ownerReference) are ignored.
_LIST_KEYS = ("uid", "name", "containerPort", "port", "mountPath", "devicePath", "key")


def _matches(desired: Any, live: Any) -> bool:
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            _matches(value, live.get(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if len(desired) == len(live):
            return all(_matches(d, item) for d, item in zip(desired, live, strict=True))
        return _keyed_subset(desired, live)
    if isinstance(desired, str) and isinstance(live, str) and desired != live:
        return _same_quantity(desired, live)
    return bool(desired == live)


def _keyed_subset(desired: list[Any], live: list[Any]) -> bool:
    if not all(isinstance(d, Mapping) for d in desired):
        return False
    key = next((k for k in _LIST_KEYS if all(k in d for d in desired)), None)
    if key is None:
        return False
    by_key = {item.get(key): item for item in live if isinstance(item, Mapping)}
    return all(_matches(d, by_key.get(d[key])) for d in desired)


def _same_quantity(a: str, b: str) -> bool:
    # The API server stores resource quantities in canonical form ("1024Mi" -> "1Gi").
    try:
        return parse_quantity(a) == parse_quantity(b)
    except ValueError:
        return False


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """True unless ``live`` already holds every field of ``desired`` with the same value."""
    return live is None or not _matches(desired, live)
