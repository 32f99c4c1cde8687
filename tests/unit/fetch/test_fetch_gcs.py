"""gs:// through google-cloud-storage against fake-gcs-server (built from its pinned Go module)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from tests.unit.fetch.conftest import markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import FaultProxy, free_port, go_server_binaries, wait_until

from modeldeploy.fetch.errors import (
    DigestMismatchError,
    SelectionError,
    SourceChangedError,
    TransientError,
)
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve


@pytest.fixture(scope="module")
def gcs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1 (in-memory backend), stopped after the module."""
    binary = go_server_binaries() / "fake-gcs-server"
    port = free_port()
    log = (tmp_path_factory.mktemp("gcs") / "server.log").open("w")
    process = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
         "-backend", "memory", "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/storage/v1/b", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_until(up, timeout=30, interval=0.05)
        assert process.poll() is None, "fake-gcs-server exited"
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def proxy(gcs_url: str) -> Iterator[FaultProxy]:
    server = FaultProxy(gcs_url)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(gcs_url: str, request: pytest.FixtureRequest, ggufs: GgufFactory) -> dict[str, Any]:
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs_url}
    )
    name = "g-" + request.node.name.replace("_", "-")[:50].lower().rstrip("-")
    created = client.create_bucket(name)
    files = {
        "tiny-Q2_K.gguf": ggufs.model("Q2_K"),
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", padding=100_000),
        "tiny-F16-00001-of-00002.gguf": ggufs.model("F16", split=(1, 2)),
        "tiny-F16-00002-of-00002.gguf": ggufs.model("F16", split=(2, 2), seed=2),
    }
    for key, data in files.items():
        created.blob(f"models/tiny/{key}").upload_from_string(data)
    return {"name": name, "files": files, "bucket": created}


def env(proxy: FaultProxy) -> dict[str, str]:
    return {"STORAGE_EMULATOR_HOST": proxy.url}


def test_resolution_split_missing_and_ambiguous(
    proxy: FaultProxy, bucket: dict[str, Any], ggufs: GgufFactory
) -> None:
    source = f"gs://{bucket['name']}/models/tiny"
    one = resolve(FetchRequest(source=source, quantization="q4_k_m"), env=env(proxy))
    assert [(f.name, f.size) for f in one.files] == [
        ("tiny-Q4_K_M.gguf", len(bucket["files"]["tiny-Q4_K_M.gguf"]))
    ]
    assert one.revision.startswith("generations-")
    assert one.architecture is not None and one.architecture.quantization == "Q4_K_M"
    split = resolve(
        FetchRequest(source=source, quantization="F16"), env=env(proxy), read_metadata=False
    )
    assert len(split.files) == 2
    with pytest.raises(SelectionError, match=r"available: F16, Q2_K, Q4_K_M"):
        resolve(FetchRequest(source=source, quantization="Q8_0"), env=env(proxy))
    bucket["bucket"].blob("models/tiny/chat-Q2_K.gguf").upload_from_string(
        ggufs.model("Q2_K", seed=4)
    )
    with pytest.raises(SelectionError, match=r"2 GGUF models for quantization Q2_K"):
        resolve(FetchRequest(source=source, quantization="Q2_K"), env=env(proxy))


def test_pinned_digest_corruption_and_overwrite(
    *, proxy: FaultProxy, bucket: dict[str, Any], tmp_path: Path, fast_options: FetchOptions
) -> None:
    source = f"gs://{bucket['name']}/models/tiny"
    data = bucket["files"]["tiny-Q2_K.gguf"]
    request = FetchRequest(
        source=source, quantization="Q2_K", digests={"tiny-Q2_K.gguf": sha256(data)}
    )
    result = fetch(request, tmp_path / "ok", env=env(proxy), options=fast_options)
    assert (result.path / "tiny-Q2_K.gguf").read_bytes() == data
    assert result.files[0].verified_against == "pinned"

    corrupted = bytearray(data)
    corrupted[7] ^= 0x10
    bucket["bucket"].blob("models/tiny/tiny-Q2_K.gguf").upload_from_string(bytes(corrupted))
    with pytest.raises(DigestMismatchError):
        fetch(request, tmp_path / "bad", env=env(proxy), options=fast_options)
    assert published_files(tmp_path / "bad") == [] and markers(tmp_path / "bad") == []
    pinned = FetchRequest(source=source, quantization="Q2_K", revision=result.revision)
    with pytest.raises(SourceChangedError):
        fetch(pinned, tmp_path / "changed", env=env(proxy), options=fast_options)


def test_a_killed_transfer_resumes_and_two_fetchers_download_once(
    *,
    proxy: FaultProxy,
    bucket: dict[str, Any],
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
) -> None:
    source = f"gs://{bucket['name']}/models/tiny"
    data = bucket["files"]["tiny-Q4_K_M.gguf"]
    request = FetchRequest(source=source, quantization="Q4_K_M")
    resolve(request, env=env(proxy), read_metadata=False)
    proxy.reset_counters()
    proxy.kill_after = len(data) // 2
    with pytest.raises(TransientError):
        fetch(request, tmp_path / "a", env=env(proxy), options=fast_options)
    first = proxy.total_served()
    proxy.restore()
    proxy.reset_counters()
    result = fetch(request, tmp_path / "a", env=env(proxy), options=fast_options)
    assert (result.path / "tiny-Q4_K_M.gguf").read_bytes() == data
    assert result.bytes_transferred <= len(data) - first + 4 * 65536
    assert result.bytes_transferred < len(data)

    proxy.reset_counters()
    proxy.gate = threading.Event()
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                fetch(request, tmp_path / "b", env=env(proxy), options=fast_options)
            )
        )
        for _ in range(2)
    ]
    threads[0].start()
    wait_until(lambda: proxy.waiting > 0)
    threads[1].start()
    wait_until(lambda: any("waiting for the cache lock" in line for line in captured_logs))
    proxy.gate.set()
    for thread in threads:
        thread.join(30)
    assert sorted(r.cached for r in results) == [False, True]
    assert sum(r.bytes_transferred for r in results) == len(data)
