"""Fetching from an https:// file host (the Range stand-in): transfer, verify, resume, cache."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from tests.unit.fetch.conftest import markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import RangeServer, wait_until

from modeldeploy.fetch.cache import CacheEntry
from modeldeploy.fetch.errors import DigestMismatchError, SourceChangedError, TransientError
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.journal import journaled_bytes, part_paths
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve

NAME = "tiny-Q4_K_M.gguf"


@pytest.fixture
def model(ggufs: GgufFactory, range_server: RangeServer) -> bytes:
    data = ggufs.model("Q4_K_M", padding=200_000)  # ~800 KB: 13 chunks of 64 KiB
    range_server.add(NAME, data)
    return data


def test_a_file_is_fetched_in_parallel_ranges_verified_and_published(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    request = FetchRequest(source=range_server.https(NAME), digests={})
    result = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert (result.path / NAME).read_bytes() == model
    assert result.files[0].sha256 == sha256(model)
    assert result.bytes_transferred == len(model) == range_server.total_served()
    ranged = [h for m, _, h in range_server.requests if m == "GET" and "range" in h]
    assert len(ranged) == (len(model) + 65535) // 65536
    assert published_files(tmp_path) == [f"{result.revision}/{NAME}"]
    record = json.loads(result.provenance_path.read_text())
    assert record["resolvedRevision"] == result.revision
    assert record["files"] == [
        {"name": NAME, "sizeBytes": len(model), "sha256": sha256(model), "verifiedAgainst": "none"}
    ]
    assert record["source"] == range_server.https(NAME)
    assert record["startedAt"] <= record["finishedAt"]


def test_a_pinned_digest_is_verified(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    request = FetchRequest(source=range_server.https(NAME), digests={NAME: sha256(model)})
    result = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert result.files[0].verified_against == "pinned"


def test_a_corrupted_byte_is_detected_and_nothing_is_published(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    corrupted = bytearray(model)
    corrupted[len(model) // 2] ^= 0x01
    range_server.files["/" + NAME].data = bytes(corrupted)
    request = FetchRequest(source=range_server.https(NAME), digests={NAME: sha256(model)})
    with pytest.raises(DigestMismatchError, match=r"sha256 mismatch.*nothing was published"):
        fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert published_files(tmp_path) == []
    assert markers(tmp_path) == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith("tiny")]


def test_a_transfer_killed_halfway_resumes_and_downloads_only_the_remainder(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    request = FetchRequest(source=range_server.https(NAME))
    revision = resolve(request, env=range_server.env, read_metadata=False).revision
    range_server.reset_counters()
    range_server.kill_after = len(model) // 2
    with pytest.raises(TransientError):
        fetch(request, tmp_path, env=range_server.env, options=fast_options)
    first = range_server.total_served()
    staging = CacheEntry(tmp_path, request.uri.canonical, revision).staging / NAME
    part, journal = part_paths(staging)
    assert part.exists() and journal.exists()
    kept = journaled_bytes(journal)  # whole chunks and prefixes of those the fault cut short
    assert 0 < kept <= first <= len(model) // 2

    range_server.restore()
    range_server.reset_counters()
    result = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert range_server.total_served() == len(model) - kept == result.bytes_transferred
    assert (result.path / NAME).read_bytes() == model
    assert not part.exists() and not journal.exists()


def test_transient_server_errors_are_retried(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    range_server.fail_next = 2
    result = fetch(
        FetchRequest(source=range_server.https(NAME)),
        tmp_path,
        env=range_server.env,
        options=fast_options,
    )
    assert (result.path / NAME).read_bytes() == model


def test_a_warm_cache_answers_without_the_network(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    request = FetchRequest(source=range_server.https(NAME))
    first = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    range_server.reset_counters()
    pinned = FetchRequest(source=request.source, revision=first.revision)
    again = fetch(pinned, tmp_path, env=range_server.env, options=fast_options)
    assert again.cached and again.bytes_transferred == 0
    assert range_server.requests == []
    unpinned = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert unpinned.cached and range_server.total_served() == 0


def test_a_changed_file_is_refused_for_a_pinned_revision(
    model: bytes,
    range_server: RangeServer,
    ggufs: GgufFactory,
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    request = FetchRequest(source=range_server.https(NAME))
    revision = resolve(request, env=range_server.env, read_metadata=False).revision
    range_server.add(NAME, ggufs.model("Q4_K_M", padding=200_000, seed=1))
    pinned = FetchRequest(source=request.source, revision=revision)
    with pytest.raises(SourceChangedError, match="no longer serves revision"):
        fetch(pinned, tmp_path, env=range_server.env, options=fast_options)


def test_a_server_without_range_support_is_read_in_one_stream(
    model: bytes, range_server: RangeServer, tmp_path: Path, fast_options: FetchOptions
) -> None:
    range_server.ranges_supported = False
    result = fetch(
        FetchRequest(source=range_server.https(NAME)),
        tmp_path,
        env=range_server.env,
        options=fast_options,
    )
    assert (result.path / NAME).read_bytes() == model
    assert range_server.total_served() == len(model)


def test_two_concurrent_fetchers_into_one_cache_download_once(
    model: bytes,
    range_server: RangeServer,
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
) -> None:
    request = FetchRequest(source=range_server.https(NAME))
    revision = resolve(request, env=range_server.env, read_metadata=False).revision
    range_server.reset_counters()
    range_server.gate = threading.Event()  # hold the first download until both are running
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = fetch(request, tmp_path, env=range_server.env, options=fast_options)
        except BaseException as error:  # surfaced by the assertions below
            results[name] = error

    first = threading.Thread(target=run, args=("a",))
    first.start()
    # The first fetcher holds the lock once its ranged GETs reach the server.
    wait_until(lambda: any("range" in h for _, _, h in list(range_server.requests)))
    second = threading.Thread(target=run, args=("b",))
    second.start()
    wait_until(lambda: any("waiting for the cache lock" in line for line in captured_logs))
    range_server.gate.set()
    first.join(30)
    second.join(30)
    a, b = results["a"], results["b"]
    assert not isinstance(a, BaseException) and not isinstance(b, BaseException)
    assert range_server.total_served() == len(model)  # once, not twice
    assert {a.cached, b.cached} == {False, True}  # type: ignore[union-attr]
    assert a.path == b.path  # type: ignore[union-attr]
    assert (a.path / NAME).read_bytes() == model  # type: ignore[union-attr]
    assert revision == a.revision  # type: ignore[union-attr]


def test_a_crashed_lock_holder_is_recovered(
    model: bytes,
    range_server: RangeServer,
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
) -> None:
    request = FetchRequest(source=range_server.https(NAME))
    revision = resolve(request, env=range_server.env, read_metadata=False).revision
    lock = CacheEntry(tmp_path, request.uri.canonical, revision).lock_path
    lock.parent.mkdir(parents=True)
    # What a holder killed mid-download leaves: a lock whose heartbeat never changes again.
    lock.write_text(json.dumps({"host": "node-7", "pid": 4242, "token": "dead", "beat": 3}))
    result = fetch(request, tmp_path, env=range_server.env, options=fast_options)
    assert (result.path / NAME).read_bytes() == model
    assert any("removed a stale cache lock (node-7 pid 4242)" in line for line in captured_logs)
    assert not lock.exists()


def test_a_bearer_token_is_sent_and_a_wrong_one_is_a_credential_error(
    *, ggufs: GgufFactory, tmp_path: Path, fast_options: FetchOptions, captured_logs: list[str]
) -> None:
    from modeldeploy.fetch.errors import CredentialError

    token = "mirror-token-abcdef123456"
    server = RangeServer(token=token)
    server.start()
    try:
        data = ggufs.model("Q8_0")
        server.add("private/m-Q8_0.gguf", data)
        source = server.https("private/m-Q8_0.gguf")
        env = {**server.env, "MODELDEPLOY_BEARER_TOKEN": token}
        result = fetch(FetchRequest(source=source), tmp_path / "ok", env=env, options=fast_options)
        assert (result.path / "m-Q8_0.gguf").read_bytes() == data
        wrong = {**server.env, "MODELDEPLOY_BEARER_TOKEN": "wrong-token-000000"}
        with pytest.raises(CredentialError, match="HTTP 401"):
            fetch(FetchRequest(source=source), tmp_path / "no", env=wrong, options=fast_options)
        assert all(token not in line and "wrong-token" not in line for line in captured_logs)
    finally:
        server.stop()
