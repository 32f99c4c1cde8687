"""A mirror serving hostile GGUF headers: the operator refuses them once, and asks no more.

A stand-in https:// mirror (``e2e/mirror.py``, which counts every request) serves two
GGUF files no real model is: one whose tensor table names a GGML type that does not exist,
and one whose 24 MB header is a vocabulary of three million empty strings. Each
ModelDeployment gets ``ArtifactVerified=False`` with reason ``InvalidArtifact`` (the message
names the file and what is wrong), ``Ready=False``, phase ``Failed`` and no children. The
refusal is re-checked slowly (``REFUSAL_RECHECK_S``), not retried as an unreachable
source: while the spec is changed again and again past the unreachable source's first
retry (``RETRY_FIRST_S``), each change reconciled, the mirror sees no further request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.harness import ClusterHandle, OperatorProcess
from e2e.mirror import ModelMirror
from tests.e2e.test_artifact_resolution import Api, assert_refused, tiny
from tests.unit.fetch import hostile

from modeldeploy.resolver import RETRY_FIRST_S

# (ModelDeployment, file on the mirror, what the refusal must say)
CASES = [
    (
        "unknown-type",
        "unknown-type-Q4_K_M.gguf",
        "tensor 'token_embd.weight' has an unknown type 99",
    ),
    (
        "empty-strings",
        "empty-strings-Q4_K_M.gguf",
        "'tokenizer.ggml.tokens' is an array of 3000000 elements; at most 1048576 are read",
    ),
]
REQUESTS_PER_RESOLUTION = 4  # HEAD for the listing, a ranged GET or two for the header


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[ModelMirror]:
    files = {
        "unknown-type-Q4_K_M.gguf": hostile.unknown_tensor_type(99),
        "empty-strings-Q4_K_M.gguf": hostile.empty_strings(3_000_000),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    with ModelMirror(paths) as served:
        yield served


@pytest.fixture
def operator(
    crd_cluster: ClusterHandle, namespace: str, mirror: ModelMirror
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crd_cluster.kubeconfig, namespace, env=mirror.plain_http_env())
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_hostile_headers_are_refused_as_invalid_artifacts_without_a_retry_storm(
    crd_cluster: ClusterHandle, namespace: str, mirror: ModelMirror, operator: OperatorProcess
) -> None:
    api = Api(crd_cluster, namespace, operator)
    for name, file, _ in CASES:
        api.create(tiny(name, {"source": mirror.url(file)}))
    for name, file, problem in CASES:
        refusal = assert_refused(api, name, "InvalidArtifact")
        assert f"{mirror.url(file)}@" in refusal["message"], refusal
        assert f": {file}: {problem}" in refusal["message"], refusal
    asked = mirror.requests
    assert asked <= REQUESTS_PER_RESOLUTION * len(CASES), asked

    # Every spec change is a pass (its generation shows in the conditions), and the
    # operator resyncs each second besides; past the unreachable source's first retry, not
    # one pass asks the mirror again.
    until = time.monotonic() + RETRY_FIRST_S + 5
    replicas, changes = 1, 0
    while time.monotonic() < until:
        replicas = 3 - replicas
        for name, _, _ in CASES:
            api.patch_spec(name, {"replicas": replicas})
        for name, _, _ in CASES:
            assert_refused(api, name, "InvalidArtifact")
        changes += 1
        assert mirror.requests == asked, f"the mirror was asked again after {changes} changes"
    assert changes >= 2
