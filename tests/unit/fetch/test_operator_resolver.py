"""The operator's resolution of ``spec.model`` against the Hub stand-in (real HTTP API).

``ArtifactResolver`` asks the source once per ``spec.model``, takes what ``status.artifact``
recorded after a restart, retries an unreachable source after a delay, refuses what waiting
does not cure, and reads the credentials Secret without letting its value out.
"""

from __future__ import annotations

import concurrent.futures
import copy
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest
from tests.unit.fetch.conftest import HUB_TOKEN, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin

from modeldeploy.artifacts import artifact_status
from modeldeploy.resolver import (
    REFUSAL_RECHECK_S,
    RETRY_FIRST_S,
    ArtifactResolver,
)

REPO = "acme/Private-Tiny-GGUF"
SECRET = "hub-token"


@pytest.fixture
def repo(hub: HubStandin, ggufs: GgufFactory) -> dict[str, bytes]:
    files = {
        "tiny-Q4_K_M.gguf": ggufs.model("Q4_K_M", layers=3, padding=50_000),
        "tiny-Q8_0.gguf": ggufs.model("Q8_0"),
    }
    hub.repo(REPO).commit(files)
    return files


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Secrets:
    """The Secrets of namespace ``ns`` as the API server would return them, decoded."""

    def __init__(self, data: Mapping[str, Mapping[str, str]]) -> None:
        self.data = dict(data)
        self.reads: list[tuple[str, str]] = []

    def __call__(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.reads.append((namespace, name))
        return self.data.get(name) if namespace == "ns" else None


def model_deployment(**model: Any) -> dict[str, Any]:
    spec_model = {
        "source": f"hf://{REPO}",
        "format": "gguf",
        "quantization": "Q4_K_M",
        "credentialsSecret": SECRET,
    }
    spec_model.update(model)
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": {"model": spec_model, "hardware": {"accelerator": "cpu"}},
    }


def hub_calls(hub: HubStandin) -> int:
    return sum(1 for _, path, _ in hub.requests if path.startswith("/api/models/"))


def test_resolves_once_per_spec_model_with_the_token_from_the_secret(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    secrets = Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}})
    resolver = ArtifactResolver(secrets, {"HF_ENDPOINT": hub.url})
    md = model_deployment()
    state = resolver.state_for(md)
    assert state is not None and state.reason == "Resolved" and state.resolution is not None
    assert state.resolution.revision == hub.repo(REPO).branches["main"]
    assert [(f.name, f.sha256) for f in state.resolution.files] == [
        ("tiny-Q4_K_M.gguf", sha256(repo["tiny-Q4_K_M.gguf"]))
    ]
    assert state.resolution.architecture is not None
    assert state.resolution.architecture.layers == 3  # read from the GGUF header
    assert hub_calls(hub) == 1 and secrets.reads == [("ns", SECRET)]
    authorizations = {headers.get("authorization") for _, _, headers in hub.requests}
    assert f"Bearer {HUB_TOKEN}" in authorizations

    # Another generation that leaves spec.model alone (scaling) asks nothing again ...
    scaled = copy.deepcopy(md)
    scaled["metadata"]["generation"] = 2
    scaled["spec"]["replicas"] = 3
    assert resolver.state_for(scaled) == state
    assert hub_calls(hub) == 1
    # ... a new quantization does.
    changed = model_deployment(quantization="Q8_0")
    again = resolver.state_for(changed)
    assert again is not None and again.resolution is not None
    assert [f.name for f in again.resolution.files] == ["tiny-Q8_0.gguf"]
    assert hub_calls(hub) == 2


def copy_of(md: dict[str, Any], uid: str, namespace: str = "ns") -> dict[str, Any]:
    """Another ModelDeployment with the same spec."""
    other = copy.deepcopy(md)
    other["metadata"].update(uid=uid, name=uid, namespace=namespace)
    return other


def test_model_deployments_asking_for_one_model_at_once_share_one_resolution(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    clock = Clock()
    resolver = ArtifactResolver(
        Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}}), {"HF_ENDPOINT": hub.url}, clock=clock
    )
    md = model_deployment()
    hub.gate = threading.Event()  # the first resolution's header read waits
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        states = [pool.submit(resolver.state_for, copy_of(md, f"uid-{i}")) for i in range(4)]
        deadline = time.monotonic() + 10
        while hub.waiting < 1:
            assert time.monotonic() < deadline, "no header read reached the Hub"
            time.sleep(0.01)
        hub.gate.set()
        outcomes = [future.result(timeout=30) for future in states]
    assert all(o is not None and o.reason == "Resolved" for o in outcomes)
    # One resolution, unless a pass came after it had ended (then it asked again).
    assert len(set(outcomes)) == 1 and 1 <= hub_calls(hub) < 4

    # Nothing is kept after it: a later ModelDeployment with that spec asks again.
    assert resolver.state_for(copy_of(md, "uid-late")) is not None
    assert hub_calls(hub) == 2


def test_an_unreachable_source_is_not_shared_between_model_deployments(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    resolver = ArtifactResolver(
        Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}}), {"HF_ENDPOINT": hub.url}, clock=Clock()
    )
    hub.down = True
    first = resolver.state_for(copy_of(model_deployment(), "uid-a"))
    assert first is not None and first.reason == "SourceUnreachable"
    hub.restore()
    # The next ModelDeployment asks the source itself, and finds it back.
    second = resolver.state_for(copy_of(model_deployment(), "uid-b"))
    assert second is not None and second.reason == "Resolved"


def test_a_restarted_operator_plans_from_status_artifact_without_asking_the_source(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    secrets = Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}})
    first = ArtifactResolver(secrets, {"HF_ENDPOINT": hub.url}).state_for(model_deployment())
    assert first is not None and first.resolution is not None
    md = model_deployment()
    md["status"] = {"artifact": artifact_status(first)}
    hub.reset_counters()
    restarted = ArtifactResolver(secrets, {"HF_ENDPOINT": hub.url})
    state = restarted.state_for(md)
    assert hub_calls(hub) == 0
    # What planning and rendering read is the same: revision, files, sizes, architecture.
    assert state is not None and state.resolution is not None
    assert artifact_status(state) == artifact_status(first)
    assert state.resolution.architecture == first.resolution.architecture
    # A status recorded for another spec.model is not taken.
    other = model_deployment(quantization="Q8_0")
    other["status"] = md["status"]
    assert restarted.state_for(other) != state
    assert hub_calls(hub) == 1


def test_an_unreachable_source_is_retried_after_a_delay_and_never_refuses(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    clock = Clock()
    resolver = ArtifactResolver(
        Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}}), {"HF_ENDPOINT": hub.url}, clock=clock
    )
    hub.down = True
    state = resolver.state_for(model_deployment())
    assert state is not None and state.reason == "SourceUnreachable" and not state.refused
    assert state.resolution is None
    hub.restore()
    hub.reset_counters()
    clock.now += RETRY_FIRST_S / 2
    assert resolver.state_for(model_deployment()) == state  # not yet
    assert hub_calls(hub) == 0
    clock.now += RETRY_FIRST_S
    retried = resolver.state_for(model_deployment())
    assert retried is not None and retried.reason == "Resolved"


def test_refusals_name_the_problem_and_are_checked_again_later(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    clock = Clock()
    resolver = ArtifactResolver(
        Secrets({SECRET: {"HF_TOKEN": HUB_TOKEN}}), {"HF_ENDPOINT": hub.url}, clock=clock
    )
    missing = resolver.state_for(model_deployment(quantization="Q2_K"))
    assert missing is not None and missing.refused
    assert missing.reason == "FileSelectionFailed"
    assert "Q4_K_M, Q8_0" in missing.message

    commit = hub.repo(REPO).branches["main"]
    pinned = model_deployment(revision=commit, digests={"tiny-Q4_K_M.gguf": "0" * 64})
    pinned["metadata"]["uid"] = "uid-2"
    mismatch = resolver.state_for(pinned)
    assert mismatch is not None and mismatch.reason == "DigestMismatch"
    assert "tiny-Q4_K_M.gguf: pinned sha256 000000000000" in mismatch.message
    calls = hub_calls(hub)
    assert resolver.state_for(pinned) == mismatch
    assert hub_calls(hub) == calls
    clock.now += REFUSAL_RECHECK_S + 1
    resolver.state_for(pinned)
    assert hub_calls(hub) == calls + 1


def test_credentials_are_read_from_the_named_secret_and_never_shown(
    hub: HubStandin, repo: dict[str, bytes]
) -> None:
    wrong = "hf_wrong_token_value_123456"
    secrets = Secrets({SECRET: {"HF_TOKEN": wrong}})
    resolver = ArtifactResolver(secrets, {"HF_ENDPOINT": hub.url})
    denied = resolver.state_for(model_deployment())
    assert denied is not None and denied.reason == "CredentialDenied" and denied.refused
    assert wrong not in denied.message and "HF_TOKEN" in denied.message

    absent = ArtifactResolver(Secrets({}), {"HF_ENDPOINT": hub.url})
    state = absent.state_for(model_deployment())
    assert state is not None and state.reason == "SecretNotFound" and not state.refused
    assert f"Secret {SECRET}" in state.message and "namespace ns" in state.message


def test_pvc_sources_are_left_to_the_fetcher_and_invalid_specs_to_the_planner() -> None:
    resolver = ArtifactResolver(Secrets({}), {})
    pvc = model_deployment(source="pvc://models/tiny", credentialsSecret=None)
    state = resolver.state_for(pvc)
    assert state is not None and state.reason == "ResolvedByFetcher"
    assert not state.refused and state.resolution is None
    invalid = model_deployment(quantization="Q9_NOPE")
    assert resolver.state_for(invalid) is None
