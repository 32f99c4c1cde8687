"""The operator's artifact resolution: ask the source once per ``spec.model``, remember it.

``ArtifactResolver.state_for`` gives the ``ArtifactState`` a reconcile pass plans with. It
resolves when ``spec.model`` is new to it (not on every pass, and not on a change of
replicas or serving flags, so a moving branch does not roll the workload out), takes the
resolution recorded in ``status.artifact`` after an operator restart, and retries failures
after a delay: a source that cannot be reached with backoff, a refusal (digest mismatch,
no such quantization, credentials denied, metadata that is malformed or out of bounds:
``InvalidArtifact``) slowly, since a fix may come from the source's side. Calls use short
timeouts and few attempts: a pass must not hang on a slow hub.

Many ModelDeployments often ask for one model at once (a copy per tenant or team, a batch
of creates). Passes that need a resolution while one for the same namespace (credentials
Secrets are per namespace), ``spec.model`` and ``spec.adapters`` is under way wait for it
and take its outcome instead of asking the source again. Nothing is kept after it: a later
create asks the source itself (the source may have changed meanwhile).

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modeldeploy.adapters import INCOMPATIBLE_ADAPTER, ResolvedAdapter, adapter_problems
from modeldeploy.api import Adapter, ModelSource, SpecError, parse_model_deployment
from modeldeploy.artifacts import (
    REFUSING_REASONS,
    ArtifactState,
    artifact_hash,
    describe,
    state_from_status,
)
from modeldeploy.fetch.credentials import redact
from modeldeploy.fetch.download import DownloadOptions
from modeldeploy.fetch.envvars import GCS_KEY_FILE
from modeldeploy.fetch.errors import FetchError
from modeldeploy.fetch.resolve import resolve_adapter, resolve_model
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


@dataclass
class _Flight:
    """A resolution under way; passes that need the same one wait for ``done``."""

    done: threading.Event = field(default_factory=threading.Event)
    state: ArtifactState | None = None


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
        self._resolving: dict[tuple[str, str], _Flight] = {}

    def forget(self, uid: str) -> None:
        """Drop what is known of a deleted ModelDeployment."""
        with self._lock:
            self._entries.pop(uid, None)

    def state_for(self, md: Mapping[str, Any]) -> ArtifactState | None:
        """The artifact state to plan with; None when the spec itself is invalid."""
        try:
            spec = parse_model_deployment(md).spec
        except SpecError:
            return None
        model, adapters = spec.model, tuple(spec.adapters)
        uid = str(md.get("metadata", {}).get("uid", ""))
        digest = artifact_hash(model, adapters)
        with self._lock:
            entry = self._entries.get(uid)
        now = self._clock()
        if entry is not None and entry.state.model_hash == digest:
            if entry.retry_at is None or now < entry.retry_at:
                return entry.state
        else:
            restored = state_from_status(md.get("status") or {}, model, adapters)
            if restored is not None:
                self._store(uid, _Entry(restored, None, 0.0))
                return restored
            entry = None
        namespace = str(md.get("metadata", {}).get("namespace", ""))
        state = self._shared_outcome(namespace, model, adapters, digest)
        now = self._clock()
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

    def _shared_outcome(
        self, namespace: str, model: ModelSource, adapters: tuple[Adapter, ...], digest: str
    ) -> ArtifactState:
        """The outcome of the resolution under way for this namespace and digest, else of
        a new one."""
        key = (namespace, digest)
        with self._lock:
            flight = self._resolving.get(key)
            mine = flight is None
            if flight is None:
                flight = self._resolving[key] = _Flight()
        if not mine:
            flight.done.wait()  # set when it ends (bounded by the resolution's timeouts)
            if flight.state is not None:
                return flight.state
            return self._shared_outcome(namespace, model, adapters, digest)  # it raised
        try:
            state = self._resolve(namespace, model, digest)
            if adapters and state.reason == "Resolved":
                state = self._resolve_adapters(namespace, model, adapters, state)
            flight.state = state
        finally:
            with self._lock:
                del self._resolving[key]
            flight.done.set()
        return state

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
        except Exception as error:  # a client library's own network error, DNS, TLS, ...
            return _failure(error, uri.canonical, secrets, digest, uri.canonical)
        message = describe(resolution)
        return ArtifactState(resolution, "Resolved", message, digest, uri.canonical)

    def _resolve_adapters(
        self,
        namespace: str,
        model: ModelSource,
        adapters: tuple[Adapter, ...],
        base: ArtifactState,
    ) -> ArtifactState:
        """The base's state with ``spec.adapters`` resolved, or the first adapter's failure.

        Adapters from ``pvc://`` are left to the fetch init container, like such a model.
        """
        credentials = self._credentials(namespace, model)
        secrets = [v for v in credentials.values() if len(v) >= 6]
        resolved = []
        for adapter in adapters:
            if parse_source(adapter.source).scheme == "pvc":
                continue
            try:
                with _key_file(credentials) as env:
                    resolution = resolve_adapter(
                        adapter, credentials=env, settings=self._settings, options=RESOLVE_OPTIONS
                    )
            except Exception as error:  # as for the model
                what = f"adapter {adapter.name}"
                return _failure(error, what, secrets, base.model_hash, base.source)
            resolved.append(ResolvedAdapter(adapter.name, adapter.scale, resolution))
        problems = adapter_problems(base.resolution, resolved)
        if problems:
            message = "; ".join(problems)
            return ArtifactState(None, INCOMPATIBLE_ADAPTER, message, base.model_hash, base.source)
        noun = "adapter" if len(resolved) == 1 else "adapters"
        message = f"{base.message}; {len(resolved)} {noun} resolved" if resolved else base.message
        return replace(base, adapters=tuple(resolved), message=message)

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


def _failure(
    error: Exception, what: str, secrets: list[str], digest: str, source: str
) -> ArtifactState:
    """The state of a failed resolution: a refusal, else unreachable (retried); redacted."""
    if isinstance(error, FetchError):
        reason = error.reason if error.reason in REFUSING_REASONS else "SourceUnreachable"
        text = str(error) if what == source else f"{what}: {error}"
    else:
        reason = "SourceUnreachable"
        text = f"{what}: {type(error).__name__}: {error}"
    message = redact(text, secrets)
    log.warning("resolving %s: %s (%s)", what, message, reason)
    return ArtifactState(None, reason, message, digest, source)


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
