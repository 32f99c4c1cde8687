"""oci:// through oras-py against the CNCF distribution registry (built from its Go module)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import oras.provider
import pytest
from tests.unit.fetch.conftest import markers, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import FaultProxy, free_port, go_server_binaries, wait_until

from modeldeploy.fetch.errors import (
    DigestMismatchError,
    MissingFileError,
    SelectionError,
    SourceChangedError,
    TransientError,
)
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The distribution registry on 127.0.0.1 with filesystem storage, for the module."""
    binary = go_server_binaries() / "registry"
    work = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-only"},
    }
    (work / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [str(binary), "serve", str(work / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_until(up, timeout=30, interval=0.05)
        assert process.poll() is None, "the registry exited"
        yield f"127.0.0.1:{port}", work / "data"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture
def registry_host(registry: tuple[str, Path]) -> str:
    return registry[0]


@pytest.fixture
def proxy(registry_host: str) -> Iterator[FaultProxy]:
    server = FaultProxy(f"http://{registry_host}")
    server.start()
    yield server
    server.stop()


def push(
    registry_host: str,
    repository: str,
    tag: str,
    *,
    files: dict[str, bytes],
    workdir: Path,
    license_: str | None = None,
) -> str:
    """Push files as an ORAS artifact (one layer per file, titled by name); return the digest."""
    workdir.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(workdir)  # oras-py pushes paths relative to the working directory
    try:
        for name, data in files.items():
            Path(name).write_bytes(data)
        registry = oras.provider.Registry(hostname=registry_host, insecure=True)
        annotations = {"org.opencontainers.image.licenses": license_} if license_ else None
        response = registry.push(
            target=f"{registry_host}/{repository}:{tag}", files=list(files),
            manifest_annotations=annotations, quiet=True,
        )  # fmt: skip
        return str(response.headers["Docker-Content-Digest"])
    finally:
        os.chdir(previous)


@pytest.fixture
def artifact(
    registry_host: str, ggufs: GgufFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    repository = "models/" + request.node.name.replace("_", "-")[:40].lower().rstrip("-")
    files = {
        "tiny-Q2_K.gguf": ggufs.model("Q2_K"),
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", padding=100_000),
        "tiny-F16-00001-of-00002.gguf": ggufs.model("F16", split=(1, 2)),
        "tiny-F16-00002-of-00002.gguf": ggufs.model("F16", split=(2, 2), seed=2),
    }
    digest = push(
        registry_host,
        repository,
        "v1",
        files=files,
        workdir=tmp_path / "push",
        license_="apache-2.0",
    )
    return {"repository": repository, "files": files, "digest": digest}


def env(proxy: FaultProxy) -> dict[str, str]:
    return {"MODELDEPLOY_PLAIN_HTTP_HOSTS": proxy.host}


def test_a_tag_resolves_to_the_manifest_digest_with_layer_digests_and_license(
    proxy: FaultProxy, artifact: dict[str, Any]
) -> None:
    source = f"oci://{proxy.host}/{artifact['repository']}:v1"
    resolution = resolve(FetchRequest(source=source, quantization="Q4_K_M"), env=env(proxy))
    assert resolution.revision == artifact["digest"]
    assert resolution.license == "apache-2.0"
    (file,) = resolution.files
    assert file.sha256 == sha256(artifact["files"]["tiny-Q4_K_M.gguf"])
    assert resolution.architecture is not None and resolution.architecture.layers == 2
    split = resolve(
        FetchRequest(source=source, quantization="F16"), env=env(proxy), read_metadata=False
    )
    assert [f.name for f in split.files] == [
        "tiny-F16-00001-of-00002.gguf",
        "tiny-F16-00002-of-00002.gguf",
    ]
    with pytest.raises(SelectionError, match=r"available: F16, Q2_K, Q4_K_M"):
        resolve(FetchRequest(source=source, quantization="Q8_0"), env=env(proxy))
    with pytest.raises(MissingFileError, match="manifest not found"):
        resolve(
            FetchRequest(source=f"oci://{proxy.host}/{artifact['repository']}:nope"), env=env(proxy)
        )


def test_ambiguous_quantizations_are_refused(
    proxy: FaultProxy, registry_host: str, ggufs: GgufFactory, tmp_path: Path
) -> None:
    files = {"a-Q2_K.gguf": ggufs.model("Q2_K"), "b-Q2_K.gguf": ggufs.model("Q2_K", seed=3)}
    push(registry_host, "models/ambiguous", "v1", files=files, workdir=tmp_path)
    with pytest.raises(SelectionError, match="2 GGUF models for quantization Q2_K"):
        resolve(
            FetchRequest(source=f"oci://{proxy.host}/models/ambiguous:v1", quantization="Q2_K"),
            env=env(proxy),
        )


def test_a_digest_reference_is_verified_and_fetched_by_layer_digest(
    *, proxy: FaultProxy, artifact: dict[str, Any], tmp_path: Path, fast_options: FetchOptions
) -> None:
    source = f"oci://{proxy.host}/{artifact['repository']}@{artifact['digest']}"
    data = artifact["files"]["tiny-Q2_K.gguf"]
    request = FetchRequest(
        source=source, quantization="Q2_K", digests={"tiny-Q2_K.gguf": sha256(data)}
    )
    result = fetch(request, tmp_path, env=env(proxy), options=fast_options)
    assert result.revision == artifact["digest"]
    assert (result.path / "tiny-Q2_K.gguf").read_bytes() == data
    wrong = FetchRequest(source=source, quantization="Q2_K", digests={"tiny-Q2_K.gguf": "1" * 64})
    with pytest.raises(DigestMismatchError, match="the source now serves"):
        fetch(wrong, tmp_path / "wrong", env=env(proxy), options=fast_options)
    moved = FetchRequest(source=f"oci://{proxy.host}/{artifact['repository']}@sha256:" + "0" * 64)
    with pytest.raises((MissingFileError, SourceChangedError)):
        resolve(moved, env=env(proxy))


def test_a_corrupted_blob_is_caught_against_the_layer_digest(
    *,
    proxy: FaultProxy,
    registry: tuple[str, Path],
    artifact: dict[str, Any],
    tmp_path: Path,
    fast_options: FetchOptions,
) -> None:
    """The registry's storage is damaged on disk: the layer digest still catches it."""
    data = artifact["files"]["tiny-Q4_K_M.gguf"]
    hexdigest = sha256(data)
    blob = registry[1] / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    damaged = bytearray(blob.read_bytes())
    damaged[1000] ^= 0x01
    blob.write_bytes(bytes(damaged))
    request = FetchRequest(
        source=f"oci://{proxy.host}/{artifact['repository']}:v1", quantization="Q4_K_M"
    )
    cache = tmp_path / "cache"
    with pytest.raises(DigestMismatchError, match=r"\(source\)"):
        fetch(request, cache, env=env(proxy), options=fast_options)
    assert published_files(cache) == [] and markers(cache) == []
    blob.write_bytes(data)


def test_a_killed_blob_transfer_resumes_with_only_the_remainder(
    *, proxy: FaultProxy, artifact: dict[str, Any], tmp_path: Path, fast_options: FetchOptions
) -> None:
    data = artifact["files"]["tiny-Q4_K_M.gguf"]
    request = FetchRequest(
        source=f"oci://{proxy.host}/{artifact['repository']}:v1", quantization="Q4_K_M"
    )
    resolve(request, env=env(proxy), read_metadata=False)
    proxy.reset_counters()
    proxy.kill_after = len(data) // 2
    with pytest.raises(TransientError):
        fetch(request, tmp_path, env=env(proxy), options=fast_options)
    first = proxy.total_served()
    proxy.restore()
    proxy.reset_counters()
    result = fetch(request, tmp_path, env=env(proxy), options=fast_options)
    assert (result.path / "tiny-Q4_K_M.gguf").read_bytes() == data
    assert result.bytes_transferred <= len(data) - first + 4 * 65536
    assert result.bytes_transferred < len(data)


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second registry that requires HTTP Basic credentials (htpasswd, bcrypt)."""
    crypt = pytest.importorskip("crypt")
    binary = go_server_binaries() / "registry"
    work = tmp_path_factory.mktemp("private-registry")
    hashed = crypt.crypt(OCI_PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    if not hashed or not hashed.startswith("$2"):
        pytest.skip("this libc's crypt() has no bcrypt, which htpasswd needs")
    (work / "htpasswd").write_text(f"reader:{hashed}\n")
    port = free_port()
    config = {
        "version": 0.1,
        "log": {"level": "error"},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "test-only"},
        "auth": {"htpasswd": {"realm": "models", "path": str(work / "htpasswd")}},
    }
    (work / "config.yml").write_text(json.dumps(config))
    log = (work / "server.log").open("w")
    process = subprocess.Popen(
        [str(binary), "serve", str(work / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 401
        except httpx.HTTPError:
            return process.poll() is not None

    try:
        wait_until(up, timeout=30, interval=0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


OCI_PASSWORD = "registry-secret-password-31337"


def test_registry_credentials_are_used_refused_clearly_and_never_logged(
    *,
    private_registry: str,
    ggufs: GgufFactory,
    tmp_path: Path,
    fast_options: FetchOptions,
    captured_logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORAS_USER", "reader")  # for the test's own push only
    monkeypatch.setenv("ORAS_PASS", OCI_PASSWORD)
    data = ggufs.model("Q8_0")
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        Path("tiny-Q8_0.gguf").write_bytes(data)
        pusher = oras.provider.Registry(
            hostname=private_registry, insecure=True, auth_backend="basic"
        )
        pusher.push(
            target=f"{private_registry}/models/private:v1", files=["tiny-Q8_0.gguf"], quiet=True
        )
    finally:
        os.chdir(previous)
    monkeypatch.delenv("ORAS_USER")
    monkeypatch.delenv("ORAS_PASS")
    captured_logs.clear()
    base = {"MODELDEPLOY_PLAIN_HTTP_HOSTS": private_registry}
    source = f"oci://{private_registry}/models/private:v1"
    good = {**base, "OCI_USERNAME": "reader", "OCI_PASSWORD": OCI_PASSWORD}
    result = fetch(FetchRequest(source=source), tmp_path / "cache", env=good, options=fast_options)
    assert (result.path / "tiny-Q8_0.gguf").read_bytes() == data
    from modeldeploy.fetch.errors import CredentialError

    wrong = {**base, "OCI_USERNAME": "reader", "OCI_PASSWORD": "not-the-password-4242"}
    with pytest.raises(CredentialError) as denied:
        resolve(FetchRequest(source=source), env=wrong)
    with pytest.raises(CredentialError):
        resolve(FetchRequest(source=source), env=base)
    text = "\n".join(captured_logs) + str(denied.value) + result.provenance_path.read_text()
    assert OCI_PASSWORD not in text and "not-the-password-4242" not in text
