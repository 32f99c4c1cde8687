"""The retry policy for HTTP work: which failures are transient, and retrying them.

Transient failures (connection reset, timeouts, 5xx, 408, 429, a short body) are retried
with exponential backoff and jitter, up to ``attempts`` tries; other HTTP statuses map to
the ``FetchError`` that names their cause. Nothing here logs a URL or a header: both may
carry credentials (signed URLs, bearer tokens).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from modeldeploy.fetch.errors import (
    CredentialError,
    FetchError,
    MissingFileError,
    SourceChangedError,
    TransientError,
)
from modeldeploy.fetch.transport import TransportError

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class RetryPolicy(Protocol):
    """How many tries and how long between them (``DownloadOptions`` is one)."""

    @property
    def attempts(self) -> int: ...

    @property
    def backoff_base(self) -> float: ...

    @property
    def backoff_max(self) -> float: ...


class RetryableError(Exception):
    """A failure worth retrying: a transient HTTP status or a short body."""


def is_transient_status(status: int) -> bool:
    """True for HTTP statuses worth retrying."""
    return status >= 500 or status in (408, 429)


def status_error(status: int, name: str) -> FetchError:
    """The FetchError for a non-transient HTTP status while fetching ``name``."""
    if status in (401, 403):
        return CredentialError(f"{name}: access denied (HTTP {status}); check the credentials")
    if status == 404:
        return MissingFileError(f"{name}: not found at the source (HTTP 404)")
    if status in (409, 412, 416):
        return SourceChangedError(
            f"{name}: the source no longer serves the resolved revision (HTTP {status})"
        )
    return FetchError(f"{name}: unexpected HTTP {status}")


def retry_call(
    action: Callable[[], _T],
    *,
    what: str,
    options: RetryPolicy,
    abort: threading.Event | None = None,
) -> _T:
    """Run ``action`` and retry it on transient failures with exponential backoff."""
    import httpx

    last = ""
    for attempt in range(options.attempts):
        if abort is not None and abort.is_set():
            raise FetchError(f"{what}: aborted")
        try:
            return action()
        except RetryableError as error:
            last = str(error)
        except (httpx.TransportError, TransportError) as error:
            last = type(error).__name__ + (f": {error}" if str(error) else "")
        if attempt + 1 < options.attempts:
            delay = min(options.backoff_max, options.backoff_base * 2**attempt)
            delay *= 0.5 + random.random() / 2
            log.warning("%s: %s; retry %d of %d", what, last, attempt + 1, options.attempts - 1)
            if abort is not None:
                abort.wait(delay)
            else:
                time.sleep(delay)
    raise TransientError(f"{what}: failed after {options.attempts} attempts: {last}")
