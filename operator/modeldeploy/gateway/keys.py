"""The gateway's API keys: which key may reach which models, by the key's sha256 digest.

A ``Grant`` names the Secret a key came from and the namespaces and model names it may
reach; the ``KeyRing`` maps key digests to grants. Only digests are kept, a lookup compares
every digest in constant time, and nothing here ever holds or shows a key for longer than
one lookup. Pure: discovery reads the Secrets and calls ``KeyRing.replace``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from modeldeploy.gateway.routing import ModelTarget


def key_digest(key: str) -> str:
    """The sha256 hex digest the ring knows ``key`` by."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one key may reach: ``name`` is its Secret's name; an empty set allows any."""

    name: str
    namespaces: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()

    def allows(self, target: ModelTarget) -> bool:
        """Whether this key may reach ``target``."""
        namespace_ok = not self.namespaces or target.namespace in self.namespaces
        return namespace_ok and (not self.models or target.model in self.models)


class KeyRing:
    """The grants by key digest; thread-safe. ``required``: every request needs a key."""

    def __init__(self, required: bool = False) -> None:
        self.required = required
        self._lock = threading.Lock()
        self._grants: tuple[tuple[bytes, Grant], ...] = ()

    def replace(self, grants: Mapping[str, Grant]) -> None:
        """Swap in ``grants``: the sha256 hex digest of each key to its grant."""
        entries = tuple((digest.lower().encode(), grant) for digest, grant in grants.items())
        with self._lock:
            self._grants = entries

    @property
    def enforced(self) -> bool:
        """Whether requests must carry a key: required, or any key configured."""
        with self._lock:
            return self.required or bool(self._grants)

    def lookup(self, key: str) -> Grant | None:
        """The grant of ``key``, comparing it with every digest in constant time."""
        if not key:
            return None
        with self._lock:
            entries = self._grants
        wanted = key_digest(key).encode()
        found: Grant | None = None
        for digest, grant in entries:
            if hmac.compare_digest(digest, wanted) and found is None:
                found = grant
        return found
