"""s3:// through boto3 against moto's S3 server (moto[server], a real S3 wire protocol)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from tests.unit.fetch.conftest import markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import FaultProxy, wait_until

from modeldeploy.fetch.errors import (
    CredentialError,
    DigestMismatchError,
    MissingFileError,
    SelectionError,
    SourceChangedError,
    TransientError,
)
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve

ADMIN = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's S3 server in a thread on 127.0.0.1 (auth off until a test turns it on)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A counting, fault-injecting proxy in front of moto: the endpoint the fetcher uses."""
    server = FaultProxy(moto_url)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", **ADMIN)


@pytest.fixture
def bucket(s3: Any, request: pytest.FixtureRequest, ggufs: GgufFactory) -> dict[str, bytes]:
    """A fresh versioned bucket ``b-<test>`` with several quantizations under ``models/tiny/``."""
    name = "b-" + request.node.name.replace("_", "-")[:50].lower().rstrip("-")
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    files = {
        "tiny-Q2_K.gguf": ggufs.model("Q2_K"),
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", padding=100_000),
        "tiny-F16-00001-of-00002.gguf": ggufs.model("F16", split=(1, 2)),
        "tiny-F16-00002-of-00002.gguf": ggufs.model("F16", split=(2, 2), seed=2),
    }
    for key, data in files.items():
        s3.put_object(Bucket=name, Key=f"models/tiny/{key}", Body=data, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=name, Key="models/other/x-Q8_0.gguf", Body=b"not ours")
    files["__bucket__"] = name.encode()
    return files


def env_for(proxy: FaultProxy, **keys: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": proxy.url, **(keys or ADMIN_ENV)}


ADMIN_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def source(bucket: dict[str, bytes]) -> str:
    return f"s3://{bucket['__bucket__'].decode()}/models/tiny"


def test_resolution_picks_the_quantization_with_versions_and_checksums(
    proxy: FaultProxy, bucket: dict[str, bytes]
) -> None:
    resolution = resolve(
        FetchRequest(source=source(bucket), quantization="Q4_K_M"), env=env_for(proxy)
    )
    (file,) = resolution.files
    assert (file.name, file.size) == ("tiny-Q4_K_M.gguf", len(bucket["tiny-Q4_K_M.gguf"]))
    assert file.sha256 == sha256(bucket["tiny-Q4_K_M.gguf"])  # from ChecksumSHA256
    assert file.ref is not None and file.ref.startswith("version:")
    assert resolution.revision.startswith("etags-")
    assert resolution.architecture is not None and resolution.architecture.layers == 2


def test_split_missing_and_ambiguous(
    proxy: FaultProxy, bucket: dict[str, bytes], s3: Any, ggufs: GgufFactory
) -> None:
    env = env_for(proxy)
    split = resolve(
        FetchRequest(source=source(bucket), quantization="F16"), env=env, read_metadata=False
    )
    assert [f.name for f in split.files] == [
        "tiny-F16-00001-of-00002.gguf",
        "tiny-F16-00002-of-00002.gguf",
    ]
    with pytest.raises(SelectionError, match=r"available: F16, Q2_K, Q4_K_M"):
        resolve(FetchRequest(source=source(bucket), quantization="Q8_0"), env=env)
    s3.put_object(
        Bucket=bucket["__bucket__"].decode(),
        Key="models/tiny/chat-Q2_K.gguf",
        Body=ggufs.model("Q2_K", seed=5),
    )
    with pytest.raises(SelectionError, match=r"2 GGUF models for quantization Q2_K"):
        resolve(FetchRequest(source=source(bucket), quantization="Q2_K"), env=env)


def test_fetch_verifies_a_pinned_digest_and_a_corrupted_object_publishes_nothing(
    proxy: FaultProxy,
    bucket: dict[str, bytes],
    s3: Any,
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    data = bucket["tiny-Q2_K.gguf"]
    request = FetchRequest(
        source=source(bucket), quantization="Q2_K", digests={"tiny-Q2_K.gguf": sha256(data)}
    )
    result = fetch(request, tmp_path / "ok", env=env_for(proxy), options=fast_options)
    assert (result.path / "tiny-Q2_K.gguf").read_bytes() == data
    assert result.files[0].verified_against == "pinned"

    corrupted = bytearray(data)
    corrupted[100] ^= 0xFF
    s3.put_object(
        Bucket=bucket["__bucket__"].decode(),
        Key="models/tiny/tiny-Q2_K.gguf",
        Body=bytes(corrupted),
    )  # no checksum published: only the pin can tell
    with pytest.raises(DigestMismatchError, match="sha256 mismatch"):
        fetch(request, tmp_path / "bad", env=env_for(proxy), options=fast_options)
    assert published_files(tmp_path / "bad") == [] and markers(tmp_path / "bad") == []


def test_an_overwritten_object_is_refused_for_the_pinned_revision(
    proxy: FaultProxy,
    bucket: dict[str, bytes],
    s3: Any,
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    request = FetchRequest(source=source(bucket), quantization="Q2_K")
    revision = resolve(request, env=env_for(proxy), read_metadata=False).revision
    s3.put_object(
        Bucket=bucket["__bucket__"].decode(), Key="models/tiny/tiny-Q2_K.gguf", Body=b"new upload"
    )
    pinned = FetchRequest(source=request.source, quantization="Q2_K", revision=revision)
    with pytest.raises(SourceChangedError, match=f"no longer serves revision {revision}"):
        fetch(pinned, tmp_path, env=env_for(proxy), options=fast_options)


def test_a_killed_transfer_resumes_with_only_the_remainder(
    proxy: FaultProxy, bucket: dict[str, bytes], tmp_path: Path, fast_options: FetchOptions
) -> None:
    data = bucket["tiny-Q4_K_M.gguf"]
    key = f"/{bucket['__bucket__'].decode()}/models/tiny/tiny-Q4_K_M.gguf"
    request = FetchRequest(source=source(bucket), quantization="Q4_K_M")
    resolve(request, env=env_for(proxy), read_metadata=False)
    proxy.reset_counters()
    proxy.kill_after = len(data) // 2
    with pytest.raises(TransientError):
        fetch(request, tmp_path, env=env_for(proxy), options=fast_options)
    first = proxy.bytes_served[key]
    proxy.restore()
    proxy.reset_counters()
    result = fetch(request, tmp_path, env=env_for(proxy), options=fast_options)
    assert (result.path / "tiny-Q4_K_M.gguf").read_bytes() == data
    second = proxy.bytes_served[key]
    assert second == result.bytes_transferred
    assert second <= len(data) - first + fast_options.download.connections * 65536
    assert second < len(data)


def test_two_fetchers_download_once(
    proxy: FaultProxy,
    bucket: dict[str, bytes],
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
) -> None:
    data = bucket["tiny-Q4_K_M.gguf"]
    key = f"/{bucket['__bucket__'].decode()}/models/tiny/tiny-Q4_K_M.gguf"
    request = FetchRequest(source=source(bucket), quantization="Q4_K_M")
    proxy.gate = threading.Event()
    results: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                fetch(request, tmp_path, env=env_for(proxy), options=fast_options)
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
    assert len(results) == 2 and sorted(r.cached for r in results) == [False, True]
    assert proxy.bytes_served[key] == len(data)


def test_credentials_are_used_denied_ones_fail_clearly_and_none_are_logged(
    moto_url: str,
    proxy: FaultProxy,
    bucket: dict[str, bytes],
    captured_logs: list[str],
) -> None:
    """With moto's IAM enforcement on: good keys resolve, a wrong secret is a CredentialError.

    (moto does not accept presigned URLs while enforcing IAM, so downloads are covered by
    the tests above, with enforcement off.)
    """
    httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"3").raise_for_status()
    try:
        iam = boto3.client("iam", endpoint_url=moto_url, region_name="us-east-1", **ADMIN)
        iam.create_user(UserName="reader")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}
            ],
        }
        iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        good = {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }
        captured_logs.clear()  # from here on, only the fetcher's own logs (botocore at DEBUG)
        resolution = resolve(
            FetchRequest(source=source(bucket), quantization="Q2_K"),
            env=env_for(proxy, **good),
            read_metadata=False,
        )
        assert [f.name for f in resolution.files] == ["tiny-Q2_K.gguf"]
        assert any(
            h.get("authorization", "").find(key["AccessKeyId"]) > 0 for _, _, h in proxy.requests
        )
        wrong = {**good, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value-1234567890"}
        with pytest.raises(CredentialError) as denied:
            resolve(FetchRequest(source=source(bucket)), env=env_for(proxy, **wrong))
        assert "access denied" in str(denied.value)
        for secret in (key["SecretAccessKey"], wrong["AWS_SECRET_ACCESS_KEY"]):
            assert secret not in str(denied.value)
            assert all(secret not in line for line in captured_logs)
    finally:
        httpx.post(f"{moto_url}/moto-api/reset-auth", content=b"inf")


def test_a_missing_bucket_is_reported(proxy: FaultProxy) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        resolve(FetchRequest(source="s3://no-such-bucket/x"), env=env_for(proxy))
