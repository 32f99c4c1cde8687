"""What a resolved (or refused) artifact does to planning, rendering and status. Pure.

The resolution itself is tested against the Hub stand-in (tests/unit/fetch/
test_operator_resolver.py) and end to end in tests/e2e/test_artifact_resolution.py; here
the ``ArtifactState`` is built by hand to cover every outcome and pod report exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from nodepool import load_e2e_pool
from recording import RecordingWriter

from modeldeploy.api import parse_model_deployment
from modeldeploy.artifacts import (
    ArtifactState,
    artifact_condition,
    artifact_status,
    model_hash,
    state_from_status,
)
from modeldeploy.config import OperatorConfig
from modeldeploy.decision import PlacementRefusal
from modeldeploy.plan import plan_object
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.resolution import ArtifactFile, Resolution
from modeldeploy.settings import SettingsError, load_settings
from modeldeploy.sizing import GIB, ModelArchitecture
from modeldeploy.status import Observed, compute_status

REPO = Path(__file__).resolve().parents[2]
NOW = "2026-01-01T00:00:00Z"
REVISION = "0123456789abcdef0123456789abcdef01234567"
SHA = "ab" * 32
NODES = load_e2e_pool()  # read-only here: planning and reconcile never change their input


def example(**cache: Any) -> dict[str, Any]:
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    md["spec"]["cache"] = {"size": "auto", "accessMode": "ReadWriteMany", **cache}
    return md


def resolved(md: dict[str, Any], size: int = 10 * GIB) -> ArtifactState:
    model = parse_model_deployment(md).spec.model
    resolution = Resolution(
        source="hf://unsloth/gemma-3-270m-it-GGUF",
        revision=REVISION,
        format="gguf",
        quantization="Q4_K_M",
        files=(ArtifactFile("gemma-3-270m-it-Q4_K_M.gguf", size, SHA),),
        license="gemma",
        architecture=ModelArchitecture(
            architecture="gemma3", parameters=268_000_000, layers=18, context_length=32768
        ),
    )
    return ArtifactState(resolution, "Resolved", "resolved", model_hash(model), resolution.source)


def refused(md: dict[str, Any], reason: str = "DigestMismatch") -> ArtifactState:
    model = parse_model_deployment(md).spec.model
    message = "x.gguf: pinned sha256 000000000000… but the source now serves abababababab…"
    return ArtifactState(None, reason, message, model_hash(model), model.source)


def pod(*init: dict[str, Any], name: str = "p-1") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"initContainerStatuses": list(init)}}


def fetch_ended(exit_code: int, result: dict[str, Any], last: bool = False) -> dict[str, Any]:
    ended = {"terminated": {"exitCode": exit_code, "message": json.dumps(result)}}
    if last:
        return {"name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": ended}  # fmt: skip
    return {"name": "fetch", "state": ended}


FETCH_RUNNING = {"name": "fetch", "state": {"running": {"startedAt": NOW}}}


def objects(md: dict[str, Any], state: ArtifactState | None) -> dict[str, dict[str, Any]]:
    planned = plan_object(md, NODES, OperatorConfig(), resolution=state and state.resolution)
    return {o["kind"]: o for o in planned.objects}


def test_the_resolved_revision_is_fetched_and_served_and_sizes_the_cache() -> None:
    md = example()
    by_kind = objects(md, resolved(md, size=10 * GIB))
    pod_spec = by_kind["Deployment"]["spec"]["template"]["spec"]
    args = pod_spec["initContainers"][0]["args"]
    assert args[args.index("--revision") + 1] == REVISION
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env["MODELDEPLOY_MODEL_REVISION"] == REVISION
    # 10 GiB of files plus 25 % headroom, in whole GiB.
    assert by_kind["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "13Gi"
    # Without a resolution: the spec's revision (none here) and the estimate from the hint.
    unresolved = objects(md, None)
    init = unresolved["Deployment"]["spec"]["template"]["spec"]["initContainers"][0]
    assert "--revision" not in init["args"]
    claim = unresolved["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"]
    assert claim == "1Gi"


def test_the_sizing_reads_the_resolved_architecture() -> None:
    md = example()
    md["spec"]["model"].pop("parameters")
    md["spec"]["model"]["source"] = "hf://acme/chat-GGUF"  # no size in the name either
    resolution = resolved(md).resolution
    with pytest.raises(PlacementRefusal, match="give a size hint"):
        plan_object(md, NODES, OperatorConfig())
    planned = plan_object(md, NODES, OperatorConfig(), resolution=resolution)
    assert planned.placement.decision()["accelerator"] == "cpu"
    # The trained context the header states bounds what may be asked for.
    md["spec"]["serving"]["contextLength"] = 65536
    with pytest.raises(PlacementRefusal, match="trained context of 32768"):
        plan_object(md, NODES, OperatorConfig(), resolution=resolution)


def test_source_settings_reach_the_init_container_as_values_and_credentials_do_not() -> None:
    md = example()
    md["spec"]["model"]["credentialsSecret"] = "hub-token"
    config = OperatorConfig(source_settings=(("HF_ENDPOINT", "http://hub.internal"),))
    planned = plan_object(md, NODES, config)
    deployment = next(o for o in planned.objects if o["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert {"name": "HF_ENDPOINT", "value": "http://hub.internal"} in env
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "hub-token"


@pytest.mark.parametrize(
    ("access_mode", "replicas", "autoscale", "shared"),
    [
        ("ReadWriteMany", 3, False, True),
        ("ReadWriteOnce", 1, False, True),
        ("ReadWriteOnce", 2, False, False),
        ("ReadWriteOnce", 1, True, False),  # autoscaling may add replicas
    ],
)
def test_replicas_share_the_cache_only_where_the_access_mode_allows(
    access_mode: str, replicas: int, autoscale: bool, shared: bool
) -> None:
    md = example(accessMode=access_mode)
    md["spec"]["replicas"] = replicas
    md["spec"]["autoscaling"] = {"enabled": autoscale, "minReplicas": 1, "maxReplicas": 3}
    by_kind = objects(md, resolved(md, size=3 * GIB))
    volumes = by_kind["Deployment"]["spec"]["template"]["spec"]["volumes"]
    cache = next(v for v in volumes if v["name"] == "model-cache")
    assert ("PersistentVolumeClaim" in by_kind) is shared
    if shared:
        assert cache["persistentVolumeClaim"]["claimName"] == "gemma-270m-cpu-model-cache"
    else:
        claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
        assert claim["accessModes"] == [access_mode]
        assert claim["resources"]["requests"]["storage"] == "4Gi"


def test_status_artifact_round_trips_for_the_same_spec_model_only() -> None:
    md = example()
    state = resolved(md)
    recorded = artifact_status(state)
    assert recorded is not None
    assert recorded["files"] == [
        {"name": "gemma-3-270m-it-Q4_K_M.gguf", "sizeBytes": 10 * GIB, "sha256": SHA}
    ]
    assert recorded["architecture"]["architecture"] == "gemma3"
    model = parse_model_deployment(md).spec.model
    back = state_from_status({"artifact": recorded}, model)
    assert back is not None and back.resolution is not None
    assert artifact_status(back) == recorded
    md["spec"]["model"]["quantization"] = "Q8_0"
    other = parse_model_deployment(md).spec.model
    assert state_from_status({"artifact": recorded}, other) is None


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([], ("Unknown", "Resolved")),
        ([pod(FETCH_RUNNING)], ("Unknown", "Resolved")),
        ([pod(fetch_ended(0, {"revision": REVISION, "files": [{"name": "a"}]}))],
         ("True", "Verified")),
        # Exit 0 without the fetcher's report (a simulated node) proves nothing either.
        ([pod(fetch_ended(0, {}))], ("Unknown", "Resolved")),
        # A fetcher of another revision (an older pod) proves nothing about this one.
        ([pod(fetch_ended(0, {"revision": "feedbeef"}))], ("Unknown", "Resolved")),
        ([pod(fetch_ended(3, {"error": "x.gguf: sha256 mismatch", "reason": "DigestMismatch"},
                          last=True))],
         ("False", "DigestMismatch")),
        # A transfer that failed is not a verdict on the bytes.
        ([pod(fetch_ended(7, {"error": "timeout", "reason": "TransferFailed"}, last=True))],
         ("Unknown", "Resolved")),
    ],
)  # fmt: skip
def test_artifact_verified_follows_what_the_fetchers_reported(
    pods: list[dict[str, Any]], expected: tuple[str, str]
) -> None:
    status, reason, message = artifact_condition(resolved(example()), pods)
    assert (status, reason) == expected
    if status == "False":
        assert message == "pod p-1: x.gguf: sha256 mismatch"


def test_a_pod_still_fetching_makes_the_phase_fetching() -> None:
    deployment = {
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 0},
    }
    md = example()
    status = compute_status(
        generation=1,
        outcome={"engine": "llamacpp"},
        observed=Observed(deployment, [pod(FETCH_RUNNING)]),
        desired_replicas=1,
        selector="s",
        endpoint=None,
        previous={},
        now=NOW,
        artifact=resolved(md),
    )
    assert status["phase"] == "Fetching"
    by_type = {c["type"]: c for c in status["conditions"]}
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "Fetching")
    assert by_type["Progressing"]["reason"] == "Fetching"
    assert by_type["ArtifactVerified"]["status"] == "Unknown"
    assert status["artifact"]["resolvedRevision"] == REVISION


def test_a_refused_source_applies_nothing_prunes_nothing_and_says_why() -> None:
    md = example()
    first = RecordingWriter()
    reconcile(md, ClusterView(NODES), first, OperatorConfig(), now=NOW, artifact=resolved(md))  # type: ignore[arg-type]
    applied = [what for kind, what in first.calls if kind == "apply"]
    assert len(applied) == 4  # cache claim, Deployment, Service, ML-BOM ConfigMap
    children = [
        {"kind": what.split("/")[0], "metadata": {"name": what.split("/")[1], "ownerReferences":
         [{"uid": "uid-1", "controller": True}]}}
        for what in applied
    ]  # fmt: skip

    writer = RecordingWriter()
    result = reconcile(
        md, ClusterView(NODES, children), writer, OperatorConfig(), now=NOW,  # type: ignore[arg-type]
        artifact=refused(md),
    )  # fmt: skip
    assert result.result == "refused" and result.phase == "Failed"
    assert [kind for kind, _ in writer.calls if kind in ("apply", "delete")] == []
    status = next(what for kind, what in writer.calls if kind == "status")
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["Ready"]["reason"] == "DigestMismatch"
    assert by_type["ArtifactVerified"]["status"] == "False"
    assert "pinned sha256" in by_type["ArtifactVerified"]["message"]
    assert "artifact" not in status
    assert ("event", ("Warning", "DigestMismatch")) in writer.calls


def test_an_unreachable_source_without_a_size_hint_says_so() -> None:
    md = example()
    md["spec"]["model"].pop("parameters")
    md["spec"]["model"]["source"] = "hf://acme/chat-GGUF"  # no size in the name either
    model = parse_model_deployment(md).spec.model
    state = ArtifactState(
        None, "SourceUnreachable", "hf://x: ConnectError", model_hash(model), model.source
    )
    writer = RecordingWriter()
    result = reconcile(md, ClusterView(NODES), writer, OperatorConfig(), now=NOW, artifact=state)  # type: ignore[arg-type]
    assert result.phase == "Pending"
    status = next(what for kind, what in writer.calls if kind == "status")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "SourceUnreachable"
    assert "spec.model.parameters" in ready["message"] and "ConnectError" in ready["message"]


def test_source_settings_accept_only_non_secret_variables(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("planning:\n  sourceSettings:\n    HF_ENDPOINT: http://hub.internal\n")
    settings = load_settings(path, {})
    assert settings.planning.source_settings == (("HF_ENDPOINT", "http://hub.internal"),)
    path.write_text("planning:\n  sourceSettings:\n    AWS_SECRET_ACCESS_KEY: x\n")
    with pytest.raises(SettingsError, match="credentials belong in a Secret"):
        load_settings(path, {})
