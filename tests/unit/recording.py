"""Test support: a stand-in for ``apply.Writer`` that records a reconcile pass's writes.

Used only where the real API server cannot produce the input (a spec the CRD would refuse,
an artifact outcome built by hand); the e2e tests drive the real writer.
"""

from __future__ import annotations

from typing import Any


class RecordingWriter:
    """Stand-in for ``apply.Writer``: records calls instead of sending them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.applied: list[dict[str, Any]] = []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", f"{obj['kind']}/{obj['metadata']['name']}"))
        self.applied.append(obj)
        return obj

    def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.calls.append(("delete", f"{kind}/{name}"))

    def apply_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.calls.append(("status", status))

    def event(self, md: Any, event_type: str, reason: str, message: str, action: str) -> None:
        self.calls.append(("event", (event_type, reason)))

    def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str | None
    ) -> None:
        self.calls.append(("finalizers", (name, finalizers, resource_version)))
