"""The wall clock as the project writes it: one RFC 3339 UTC timestamp format, to the second.

Pure and dependency-free so that both the operator core (``status``, ``reconcile``) and the
fetcher (``fetch/``) can import it: condition ``lastTransitionTime`` values (metav1.Time)
and provenance timestamps are the same ``2006-01-02T15:04:05Z`` shape.
"""

from __future__ import annotations

import datetime


def utc_now() -> str:
    """Now as an RFC 3339 UTC timestamp to the second (``YYYY-MM-DDTHH:MM:SSZ``)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
