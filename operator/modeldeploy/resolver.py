"""The operator's artifact resolution: ask the source once per ``spec.model``, remember it.

``ArtifactResolver.state_for`` gives the ``ArtifactState`` a reconcile pass plans with. It
resolves when ``spec.model`` is new to it (not on every pass, and not on a change of
replicas or serving flags, so a moving branch does not roll the workload out), takes the
resolution recorded in ``status.artifact`` after an operator restart, and retries failures
after a delay: a source that cannot be reached with backoff, a refusal (digest mismatch,
no such quantization, credentials denied, metadata that is malformed or out of bounds:
``InvalidArtifact``) slowly, since a fix may come from the source's side. Calls use short
timeouts and few attempts: a pass must not hang on a slow hub.

Credentials come from the Secret ``spec.model.credentialsSecret`` names, read when needed
and never kept, logged or written anywhere; every message is redacted of their values.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modeldeploy.api import ModelSource, SpecError, parse_model_deployment
from modeldeploy.artifacts import (
    REFUSING_REASONS,
    ArtifactState,
    describe,
    model_hash,
    state_from_status,
)
from modeldeploy.fetch.credentials import redact
from modeldeploy.fetch.download import DownloadOptions
from modeldeploy.fetch.envvars import GCS_KEY_FILE
from modeldeploy.fetch.errors import FetchError
from modeldeploy.fetch.resolve import resolve_model
from modeldeploy.fetch.uri import parse_source

log = logging.getLogger(__name__)

# Resolution runs inside a reconcile pass: bounded, unlike the init container's transfers.
RESOLVE_OPTIONS = DownloadOptions(
    attempts=2, backoff_base=0.5, backoff_max=2.0, connect_timeout=5.0, read_timeout=15.0
)
RETRY_FIRST_S = 15.0
RETRY_MAX_S = 600.0
REFUSAL_RECHECK_S = 600.0


class SecretNotFoundError(FetchError):
    """The Secret ``spec.model.credentialsSecret`` names does not exist (yet): retried."""

    reason = "SecretNotFound"


SecretReader = Callable[[str, str], Mapping[str, str] | None]


@dataclass
class _Entry:
    state: ArtifactState
    retry_at: float | None  # None: final for this spec.model
    delay: float


class ArtifactResolver:
    """Resolution outcomes per ModelDeployment uid, refreshed when ``spec.model`` changes."""

    def __init__(
        self,
        read_secret: SecretReader,
        settings: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_secret = read_secret
        self._settings = dict(settings)
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def forget(self, uid: str) -> None:
        """Drop what is known of a deleted ModelDeployment."""
        with self._lock:
            self._entries.pop(uid, None)

    def state_for(self, md: Mapping[str, Any]) -> ArtifactState | None:
        """The artifact state to plan with; None when the spec itself is invalid."""
        try:
            model = parse_model_deployment(md).spec.model
        except SpecError:
            return None
        uid = str(md.get("metadata", {}).get("uid", ""))
        digest = model_hash(model)
        with self._lock:
            entry = self._entries.get(uid)
        now = self._clock()
        if entry is not None and entry.state.model_hash == digest:
            if entry.retry_at is None or now < entry.retry_at:
                return entry.state
        else:
            restored = state_from_status(md.get("status") or {}, model)
            if restored is not None:
                self._store(uid, _Entry(restored, None, 0.0))
                return restored
            entry = None
        namespace = str(md.get("metadata", {}).get("namespace", ""))
        state = self._resolve(namespace, model, digest)
        if state.reason in ("Resolved", "ResolvedByFetcher"):
            new = _Entry(state, None, 0.0)
        elif state.refused:
            new = _Entry(state, now + REFUSAL_RECHECK_S, REFUSAL_RECHECK_S)
        else:
            delay = RETRY_FIRST_S if entry is None else min(RETRY_MAX_S, entry.delay * 2)
            new = _Entry(state, now + delay, delay)
        self._store(uid, new)
        return state

    def _store(self, uid: str, entry: _Entry) -> None:
        with self._lock:
            self._entries[uid] = entry

    def _resolve(self, namespace: str, model: ModelSource, digest: str) -> ArtifactState:
        uri = parse_source(model.source)
        if uri.scheme == "pvc":
            message = (
                f"{uri.canonical} is read by the fetch init container, which mounts the claim; "
                "the files and digests appear here when it has verified them"
            )
            return ArtifactState(None, "ResolvedByFetcher", message, digest, uri.canonical)
        # The API server's refusal to read the Secret (403) is not the source's fault: it
        # propagates, and the operator reports the missing permission.
        try:
            credentials = self._credentials(namespace, model)
        except SecretNotFoundError as error:
            return ArtifactState(None, error.reason, str(error), digest, uri.canonical)
        secrets = [v for v in credentials.values() if len(v) >= 6]
        try:
            with _key_file(credentials) as env:
                resolution = resolve_model(
                    model, credentials=env, settings=self._settings, options=RESOLVE_OPTIONS
                )
        except FetchError as error:
            reason = error.reason if error.reason in REFUSING_REASONS else "SourceUnreachable"
            message = redact(str(error), secrets)
        except Exception as error:  # a client library's own network error, DNS, TLS, ...
            reason = "SourceUnreachable"
            message = redact(f"{uri.canonical}: {type(error).__name__}: {error}", secrets)
        else:
            message = describe(resolution)
            return ArtifactState(resolution, "Resolved", message, digest, uri.canonical)
        log.warning("resolving %s: %s (%s)", uri.canonical, message, reason)
        return ArtifactState(None, reason, message, digest, uri.canonical)

    def _credentials(self, namespace: str, model: ModelSource) -> dict[str, str]:
        if model.credentials_secret is None:
            return {}
        data = self._read_secret(namespace, model.credentials_secret)
        if data is None:
            raise SecretNotFoundError(
                f"Secret {model.credentials_secret} (spec.model.credentialsSecret) does not "
                f"exist in namespace {namespace}"
            )
        return dict(data)


@contextlib.contextmanager
def _key_file(credentials: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The credentials as env entries; a gs:// key is written to a private temporary file."""
    env = {k: v for k, v in credentials.items() if k != GCS_KEY_FILE}
    if GCS_KEY_FILE not in credentials:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="modeldeploy-gcs-") as directory:
        path = Path(directory) / GCS_KEY_FILE
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(credentials[GCS_KEY_FILE])
        yield {**env, "GOOGLE_APPLICATION_CREDENTIALS": str(path)}
