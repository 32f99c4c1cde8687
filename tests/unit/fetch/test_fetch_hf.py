"""hf:// through huggingface_hub against the Hub stand-in (real HTTP API, token, CDN redirect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.fetch.conftest import HUB_TOKEN, markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin, RangeServer

from modeldeploy.api import ModelSource
from modeldeploy.fetch.errors import (
    CredentialError,
    DigestMismatchError,
    MissingFileError,
    SelectionError,
    TransientError,
)
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve, resolve_model

REPO = "acme/Tiny-1M-GGUF"


@pytest.fixture
def repo(hub: HubStandin, ggufs: GgufFactory) -> dict[str, bytes]:
    files = {
        "README.md": b"# tiny\n",
        "tiny-Q2_K.gguf": ggufs.model("Q2_K"),
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", padding=100_000),
        "tiny-Q8_0.gguf": ggufs.model("Q8_0"),
        "tiny-F16-00001-of-00003.gguf": ggufs.model("F16", split=(1, 3)),
        "tiny-F16-00002-of-00003.gguf": ggufs.model("F16", split=(2, 3), seed=2),
        "tiny-F16-00003-of-00003.gguf": ggufs.model("F16", split=(3, 3), seed=3),
    }
    hub.repo(REPO).license = "apache-2.0"
    hub.repo(REPO).commit(files)
    return files


def test_resolution_picks_the_quantization_and_records_the_commit_sizes_and_lfs_digests(
    hub: HubStandin, hub_env: dict[str, str], repo: dict[str, bytes]
) -> None:
    resolution = resolve(FetchRequest(source=f"hf://{REPO}", quantization="q4_k_m"), env=hub_env)
    assert resolution.revision == hub.repo(REPO).branches["main"]
    assert [(f.name, f.size, f.sha256) for f in resolution.files] == [
        ("tiny-Q4_K_M.gguf", len(repo["tiny-Q4_K_M.gguf"]), sha256(repo["tiny-Q4_K_M.gguf"]))
    ]
    assert resolution.license == "apache-2.0"
    assert resolution.available_quantizations == ("F16", "Q2_K", "Q4_K_M", "Q8_0")
    assert resolution.architecture is not None
    assert resolution.architecture.quantization == "Q4_K_M"
    status = resolution.as_status()
    assert status["resolvedRevision"] == resolution.revision
    assert status["files"][0]["sha256"] == sha256(repo["tiny-Q4_K_M.gguf"])


def test_resolve_model_takes_the_spec_and_the_secret_data(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    model = ModelSource(source=f"hf://{REPO}", quantization="Q8_0", credentials_secret="hf")
    resolution = resolve_model(
        model, credentials={"HF_TOKEN": HUB_TOKEN}, settings={"HF_ENDPOINT": hub.url}
    )
    assert [f.name for f in resolution.files] == ["tiny-Q8_0.gguf"]
    with pytest.raises(MissingFileError, match="private and HF_TOKEN"):
        resolve_model(model, credentials={}, settings={"HF_ENDPOINT": hub.url})


def test_a_split_gguf_is_fetched_whole(
    hub_env: dict[str, str], repo: dict[str, bytes], tmp_path: Path, fast_options: FetchOptions
) -> None:
    result = fetch(
        FetchRequest(source=f"hf://{REPO}", quantization="F16"),
        tmp_path,
        env=hub_env,
        options=fast_options,
    )
    names = [f.name for f in result.files]
    assert names == [f"tiny-F16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for name in names:
        assert (result.path / name).read_bytes() == repo[name]
    assert all(f.verified_against == "source" for f in result.files)


def test_missing_and_ambiguous_quantizations_list_what_exists(
    hub: HubStandin, hub_env: dict[str, str], repo: dict[str, bytes], ggufs: GgufFactory
) -> None:
    with pytest.raises(SelectionError, match=r"available: F16, Q2_K, Q4_K_M, Q8_0"):
        resolve(FetchRequest(source=f"hf://{REPO}", quantization="Q5_K_M"), env=hub_env)
    hub.repo(REPO).commit({**repo, "tiny-instruct-Q8_0.gguf": ggufs.model("Q8_0", seed=9)})
    with pytest.raises(SelectionError, match=r"2 GGUF models for quantization Q8_0"):
        resolve(FetchRequest(source=f"hf://{REPO}", quantization="Q8_0"), env=hub_env)


def test_a_pinned_revision_and_digest_are_verified(
    hub: HubStandin,
    hub_env: dict[str, str],
    repo: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    pinned_commit = hub.repo(REPO).branches["main"]
    hub.repo(REPO).commit({"tiny-Q4_K_M.gguf": b"later bytes" * 200})  # main moves on
    request = FetchRequest(
        source=f"hf://{REPO}@{pinned_commit}",
        quantization="Q4_K_M",
        digests={"tiny-Q4_K_M.gguf": sha256(repo["tiny-Q4_K_M.gguf"])},
    )
    result = fetch(request, tmp_path, env=hub_env, options=fast_options)
    assert result.revision == pinned_commit
    assert result.files[0].verified_against == "pinned"
    assert (result.path / "tiny-Q4_K_M.gguf").read_bytes() == repo["tiny-Q4_K_M.gguf"]


def test_a_pin_the_hub_now_contradicts_is_refused_before_any_transfer(
    *,
    hub: HubStandin,
    cdn: RangeServer,
    hub_env: dict[str, str],
    repo: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    request = FetchRequest(
        source=f"hf://{REPO}",
        quantization="Q4_K_M",
        revision="main",
        digests={"tiny-Q4_K_M.gguf": "0" * 64},
    )
    with pytest.raises(DigestMismatchError, match="the source now serves"):
        fetch(request, tmp_path, env=hub_env, options=fast_options)
    assert cdn.total_served() == 0 and hub.total_served() == 0
    assert published_files(tmp_path) == []


def test_a_corrupted_byte_from_the_cdn_is_caught_against_the_lfs_digest(
    *,
    hub: HubStandin,
    cdn: RangeServer,
    hub_env: dict[str, str],
    repo: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    data = repo["tiny-Q4_K_M.gguf"]
    corrupted = bytearray(data)
    corrupted[-10] ^= 0x40
    cdn.add(f"/lfs/{sha256(data)}", bytes(corrupted), etag=sha256(data))
    request = FetchRequest(source=f"hf://{REPO}", quantization="Q4_K_M")
    with pytest.raises(DigestMismatchError, match=f"expected {sha256(data)} \\(source\\)"):
        fetch(request, tmp_path, env=hub_env, options=fast_options)
    assert published_files(tmp_path) == [] and markers(tmp_path) == []


def test_the_token_goes_to_the_hub_only_and_never_into_logs(
    *,
    hub: HubStandin,
    cdn: RangeServer,
    hub_env: dict[str, str],
    repo: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
) -> None:
    result = fetch(
        FetchRequest(source=f"hf://{REPO}", quantization="Q4_K_M"),
        tmp_path,
        env=hub_env,
        options=fast_options,
    )
    assert cdn.total_served() == len(repo["tiny-Q4_K_M.gguf"])  # LFS bytes came via the CDN
    hub_auth = {h.get("authorization") for _, _, h in hub.requests}
    assert hub_auth == {f"Bearer {HUB_TOKEN}"}
    assert all("authorization" not in h for _, _, h in cdn.requests)
    text = "\n".join(captured_logs) + result.provenance_path.read_text()
    text += json.dumps(result.summary())
    assert HUB_TOKEN not in text


def test_a_wrong_token_is_a_credential_error(
    hub: HubStandin, repo: dict[str, bytes], tmp_path: Path, fast_options: FetchOptions
) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_wrong_token_000000"}
    with pytest.raises(CredentialError, match="rejected HF_TOKEN"):
        fetch(FetchRequest(source=f"hf://{REPO}"), tmp_path, env=env, options=fast_options)


def test_a_missing_revision_or_repository_is_reported(
    hub_env: dict[str, str], repo: dict[str, bytes]
) -> None:
    with pytest.raises(MissingFileError, match="revision 'v9' not found"):
        resolve(FetchRequest(source=f"hf://{REPO}@v9"), env=hub_env)
    with pytest.raises(MissingFileError, match="repository not found"):
        resolve(FetchRequest(source="hf://acme/nothing"), env=hub_env)


def test_a_cdn_transfer_killed_halfway_resumes_with_only_the_remainder(
    *,
    hub: HubStandin,
    cdn: RangeServer,
    hub_env: dict[str, str],
    repo: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    data = repo["tiny-Q4_K_M.gguf"]
    request = FetchRequest(source=f"hf://{REPO}", quantization="Q4_K_M")
    cdn.kill_after = len(data) // 2
    with pytest.raises(TransientError):
        fetch(request, tmp_path, env=hub_env, options=fast_options)
    first = cdn.total_served()
    cdn.restore()
    cdn.reset_counters()
    result = fetch(request, tmp_path, env=hub_env, options=fast_options)
    assert (result.path / "tiny-Q4_K_M.gguf").read_bytes() == data
    assert cdn.total_served() == result.bytes_transferred < len(data) - first + 4 * 65536
    assert cdn.total_served() <= len(data) - len(data) // 4
