"""Fixtures for the fetch tests: stand-in servers on 127.0.0.1 and tiny real GGUF payloads."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin, RangeServer

from modeldeploy.fetch.download import DownloadOptions
from modeldeploy.fetch.fetcher import FetchOptions


@pytest.fixture
def range_server() -> Iterator[RangeServer]:
    """A stand-in static file host (see standins.RangeServer)."""
    server = RangeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cdn() -> Iterator[RangeServer]:
    """A second origin standing in for the Hub's CDN (LFS redirects land here)."""
    server = RangeServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(cdn: RangeServer) -> Iterator[HubStandin]:
    """A stand-in for the Hugging Face Hub that requires the token ``hf_test_token_...``."""
    server = HubStandin(token=HUB_TOKEN, cdn=cdn)
    server.start()
    yield server
    server.stop()


HUB_TOKEN = "hf_standin_secret_token_9f8e7d6c5b4a"


@pytest.fixture
def hub_env(hub: HubStandin) -> dict[str, str]:
    """The environment a pod would get: the Hub endpoint and the token from a Secret."""
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": HUB_TOKEN}


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> GgufFactory:
    """Writes tiny real GGUF files (``gguf.GGUFWriter``) on demand, cached per session."""
    return GgufFactory(tmp_path_factory.mktemp("gguf"))


@pytest.fixture
def fast_options() -> FetchOptions:
    """Small chunks (many ranges on tiny files), quick retries, a quick lock."""
    return FetchOptions(
        download=DownloadOptions(
            connections=4, chunk_size=64 * 1024, attempts=3, backoff_base=0.01, backoff_max=0.05
        ),
        progress_interval=0,
        lock_heartbeat=0.05,
        lock_stale_after=1.5,
        lock_poll=0.02,
        wait_timeout=60,
    )


@pytest.fixture
def captured_logs() -> Iterator[list[str]]:
    """Every log line (all loggers, DEBUG and up) emitted during the test, formatted."""
    lines: list[str] = []

    class Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collector(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lines
    root.removeHandler(handler)
    root.setLevel(previous)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def published_files(cache: Path) -> list[str]:
    """Every file in published revision directories (not staging, locks or metadata)."""
    found = []
    for path in cache.rglob("*"):
        parts = path.relative_to(cache).parts
        hidden = any(p in (".partial", ".locks", ".modeldeploy") for p in parts)
        if path.is_file() and not hidden and parts[-1] != "source.json":
            found.append("/".join(parts[1:]))
    return sorted(found)


def markers(cache: Path) -> list[Any]:
    return sorted(cache.rglob("complete-*"))
