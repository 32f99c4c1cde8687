"""The operator's pure parts: drift detection, status, settings, and one reconcile pass.

A reconcile pass is exercised here with ``RecordingWriter``, a stand-in for the API
server writer, only for what the real API server cannot produce: a spec the CRD would
have refused (the e2e tests cover every other path against the real server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from nodepool import load_e2e_pool
from recording import RecordingWriter

from modeldeploy.config import OperatorConfig
from modeldeploy.drift import needs_apply
from modeldeploy.reconcile import ClusterView, reconcile
from modeldeploy.settings import SettingsError, load_settings
from modeldeploy.status import Observed, Refusal, compute_status, transitions

REPO = Path(__file__).resolve().parents[2]
NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, False),  # fields others own are ignored
        ({"a": 1}, {"a": 2}, True),
        ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}, False),
        ({"a": [1, 2]}, {"a": [2, 1]}, True),  # atomic lists keep their order
        ({"m": "1024Mi"}, {"m": "1Gi"}, False),  # the server canonicalises quantities
        ({"c": "0.5"}, {"c": "500m"}, False),
        ({"m": "1Gi"}, {"m": "2Gi"}, True),
        ({"x": "text"}, {"x": "other"}, True),
        (  # an injected sidecar does not count as drift
            {"containers": [{"name": "main", "image": "a"}]},
            {"containers": [{"name": "main", "image": "a"}, {"name": "proxy", "image": "p"}]},
            False,
        ),
        (
            {"containers": [{"name": "main", "image": "a"}]},
            {"containers": [{"name": "main", "image": "b"}, {"name": "proxy", "image": "p"}]},
            True,
        ),
        ({"a": 1}, None, True),
    ],
)
def test_needs_apply_compares_only_what_the_operator_renders(
    desired: dict[str, Any], live: dict[str, Any] | None, expected: bool
) -> None:
    assert needs_apply(desired, live) is expected


def deployment(
    desired: int, ready: int, updated: int | None = None, stale: bool = False
) -> dict[str, Any]:
    """A Deployment as the API server reports it."""
    return {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 1 if stale else 2,
            "replicas": desired,
            "readyReplicas": ready,
            "updatedReplicas": desired if updated is None else updated,
        },
    }


def status_for(
    outcome: Refusal | dict[str, Any],
    observed: Observed,
    desired: int = 1,
    previous: dict[str, Any] | None = None,
    now: str = NOW,
) -> dict[str, Any]:
    """compute_status with the fixed fields filled in."""
    return compute_status(
        generation=3,
        outcome=outcome,
        observed=observed,
        desired_replicas=desired,
        selector="modeldeploy.io/model-deployment=x",
        endpoint="http://x.ns.svc:8000/v1",
        previous=previous or {},
        now=now,
    )


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """type -> (status, reason)."""
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


DECISION = {"engine": "llamacpp", "accelerator": "cpu", "reason": "fits", "memory": {"x": 1}}


def test_a_rolled_out_deployment_is_ready_and_extra_decision_fields_are_dropped() -> None:
    status = status_for(DECISION, Observed(deployment(1, 1)))
    assert status["phase"] == "Ready"
    assert conditions(status) == {
        "Ready": ("True", "Available"),
        "Progressing": ("False", "RolloutComplete"),
        "Degraded": ("False", "AsExpected"),
        "Scheduled": ("True", "Planned"),
    }
    assert status["decision"] == {"engine": "llamacpp", "accelerator": "cpu", "reason": "fits"}
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert status["readyReplicas"] == 1 and status["observedGeneration"] == 3


@pytest.mark.parametrize(
    ("observed", "phase", "ready_reason"),
    [
        (Observed(None), "Deploying", "Deploying"),
        (Observed(deployment(2, 1)), "Deploying", "RollingOut"),
        (Observed(deployment(1, 1, stale=True)), "Deploying", "RollingOut"),
        (Observed(deployment(1, 1, updated=0)), "Deploying", "RollingOut"),
    ],
)
def test_a_rollout_in_flight_is_progressing(
    observed: Observed, phase: str, ready_reason: str
) -> None:
    status = status_for(DECISION, observed, desired=2 if observed.deployment else 1)
    assert status["phase"] == phase
    assert conditions(status)["Ready"] == ("False", ready_reason)
    assert conditions(status)["Progressing"][0] == "True"


@pytest.mark.parametrize(
    ("pod_status", "reason"),
    [
        (
            {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/7 nodes are available",
                    }
                ]
            },
            "PodUnschedulable",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "llamacpp",
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": "pull access denied",
                            }
                        },
                    }
                ]
            },
            "ImagePullBackOff",
        ),
        (
            {
                "initContainerStatuses": [
                    {"name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                ]
            },
            "CrashLoopBackOff",
        ),
    ],
)
def test_stuck_pods_surface_as_degraded_with_the_underlying_reason(
    pod_status: dict[str, Any], reason: str
) -> None:
    pod = {"metadata": {"name": "p"}, "status": pod_status}
    status = status_for(DECISION, Observed(deployment(1, 0), [pod]))
    assert status["phase"] == "Degraded"
    assert conditions(status)["Degraded"] == ("True", reason)
    assert conditions(status)["Ready"] == ("False", reason)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert "pod p" in degraded["message"]


def test_refusals_say_why_and_set_the_phase() -> None:
    invalid = status_for(Refusal("InvalidSpec", "spec.x: bad"), Observed(None))
    assert invalid["phase"] == "Failed"
    assert conditions(invalid)["Scheduled"] == ("False", "InvalidSpec")
    no_fit = status_for(Refusal("NoFittingHardware", "needs 90 GiB"), Observed(None))
    assert no_fit["phase"] == "Pending"
    assert conditions(no_fit)["Ready"] == ("False", "NoFittingHardware")
    assert "decision" not in no_fit and "endpoint" not in no_fit


def test_unchanged_conditions_keep_their_transition_time_so_the_status_is_identical() -> None:
    first = status_for(DECISION, Observed(deployment(1, 1)), now=NOW)
    again = status_for(DECISION, Observed(deployment(1, 1)), previous=first, now=LATER)
    assert again == first
    degraded = status_for(
        DECISION,
        Observed(
            deployment(1, 0),
            [
                {
                    "metadata": {"name": "p"},
                    "status": {
                        "containerStatuses": [
                            {"name": "c", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
                        ]
                    },
                }
            ],
        ),
        previous=first,
        now=LATER,
    )
    times = {c["type"]: c["lastTransitionTime"] for c in degraded["conditions"]}
    assert times["Scheduled"] == NOW and times["Degraded"] == LATER
    changed = {c["type"] for c in transitions(first["conditions"], degraded["conditions"])}
    assert changed == {"Ready", "Progressing", "Degraded"}


def test_settings_are_camel_case_validated_and_overridden(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("resyncSeconds: 30\nplanning:\n  llamacppImage: example.com/l:1\n")
    settings = load_settings(path, {"metricsPort": 0, "namespaces": None})
    assert settings.resync_seconds == 30 and settings.metrics_port == 0
    assert settings.planning.llamacpp_image == "example.com/l:1"
    path.write_text("planning:\n  bogus: 1\n")
    with pytest.raises(SettingsError, match=r"planning .*unknown keys \['bogus'\]"):
        load_settings(path, {})
    with pytest.raises(SettingsError, match="resyncSeconds"):
        load_settings(None, {"resyncSeconds": 0})


def test_the_model_pods_security_contexts_are_planning_settings(tmp_path: Path) -> None:
    assert OperatorConfig().pod_security_context["runAsUser"] == 65532
    assert OperatorConfig().container_security_context["readOnlyRootFilesystem"] is True
    path = tmp_path / "settings.yaml"
    path.write_text(
        "planning:\n"
        "  podSecurityContext: {runAsNonRoot: true, runAsUser: 1000}\n"
        "  containerSecurityContext: {allowPrivilegeEscalation: false}\n"
    )
    planning = load_settings(path, {}).planning
    assert planning.pod_security_context == {"runAsNonRoot": True, "runAsUser": 1000}
    assert planning.container_security_context == {"allowPrivilegeEscalation": False}
    path.write_text("planning:\n  podSecurityContext: [runAsNonRoot]\n")
    with pytest.raises(SettingsError, match=r"planning\.pod_security_context"):
        load_settings(path, {})


def example_md() -> dict[str, Any]:
    """The CPU example as the API server would hand it over."""
    md: dict[str, Any] = yaml.safe_load((REPO / "examples" / "gemma-270m-cpu.yaml").read_text())
    md["metadata"].update(namespace="ns", uid="uid-1", generation=1)
    return md


def test_an_invalid_spec_writes_conditions_and_one_event_and_no_children() -> None:
    md = example_md()
    md["spec"]["model"]["quantization"] = "Q9_NOPE"  # the CRD's enum would refuse this
    writer = RecordingWriter()
    result = reconcile(md, ClusterView(load_e2e_pool()), writer, OperatorConfig(), now=NOW)  # type: ignore[arg-type]
    assert result.result == "invalid" and result.phase == "Failed"
    kinds = [kind for kind, _ in writer.calls]
    assert kinds == ["status", "event"]
    assert writer.calls[1][1] == ("Warning", "InvalidSpec")
    # The next pass sees its own status: nothing to write, nothing to post.
    md["status"] = writer.calls[0][1]
    again = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool()), again, OperatorConfig(), now=LATER)  # type: ignore[arg-type]
    assert again.calls == []


def test_a_first_pass_applies_children_in_order_then_a_settled_pass_writes_nothing() -> None:
    md = example_md()
    writer = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool()), writer, OperatorConfig(), now=NOW)  # type: ignore[arg-type]
    applied = [what for kind, what in writer.calls if kind == "apply"]
    assert applied == [
        "PersistentVolumeClaim/gemma-270m-cpu-model-cache",
        "Deployment/gemma-270m-cpu",
        "Service/gemma-270m-cpu",
        "ConfigMap/gemma-270m-cpu-ml-bom",
    ]
    md["status"] = next(what for kind, what in writer.calls if kind == "status")
    assert md["status"]["phase"] == "Deploying"

    # The watches now hold what was applied, and the Deployment has rolled out.
    children = [dict(obj) for obj in writer.applied]
    for child in children:
        if child["kind"] == "Deployment":
            child["metadata"] = {**child["metadata"], "generation": 1}
            child["status"] = {
                "observedGeneration": 1,
                "replicas": 1,
                "readyReplicas": 1,
                "updatedReplicas": 1,
            }
    ready = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool(), children), ready, OperatorConfig(), now=LATER)  # type: ignore[arg-type]
    assert [kind for kind, _ in ready.calls] == ["status", "event"]  # Ready, and its Event
    md["status"] = ready.calls[0][1]
    assert md["status"]["phase"] == "Ready"
    idle = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool(), children), idle, OperatorConfig(), now=LATER)  # type: ignore[arg-type]
    assert idle.calls == []


def test_a_workload_first_pass_writes_only_the_workload_and_the_next_pass_the_rest() -> None:
    peers = ({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},)
    config = OperatorConfig(model_ingress_from=peers)
    md = example_md()
    workload = RecordingWriter()
    first = reconcile(
        md, ClusterView(load_e2e_pool()), workload, config, now=NOW, workload_first=True
    )  # type: ignore[arg-type]
    assert first.deferred and first.writes == 3
    assert workload.calls == [
        ("apply", "PersistentVolumeClaim/gemma-270m-cpu-model-cache"),
        ("apply", "Deployment/gemma-270m-cpu"),
        ("apply", "NetworkPolicy/gemma-270m-cpu"),
    ]  # no status, no Event: the next pass writes them
    assert [obj["kind"] for obj in first.written] == [
        "PersistentVolumeClaim", "Deployment", "NetworkPolicy",
    ]  # fmt: skip

    # The rest, seeing what was written (the watch may not have delivered it yet).
    rest = RecordingWriter()
    view = ClusterView(load_e2e_pool(), first.written)
    second = reconcile(md, view, rest, config, now=NOW, workload_first=True)  # type: ignore[arg-type]
    assert not second.deferred
    assert [c for c in rest.calls if c[0] == "apply"] == [
        ("apply", "Service/gemma-270m-cpu"),
        ("apply", "ConfigMap/gemma-270m-cpu-ml-bom"),
    ]
    status = next(what for kind, what in rest.calls if kind == "status")
    assert status["phase"] == "Deploying" and status["networkPolicyHash"]

    # A refused spec has no workload to write first: its status is written at once.
    md["spec"]["model"]["quantization"] = "Q9_NOPE"
    refused = RecordingWriter()
    result = reconcile(
        md, ClusterView(load_e2e_pool()), refused, config, now=NOW, workload_first=True
    )  # type: ignore[arg-type]
    assert not result.deferred and [kind for kind, _ in refused.calls] == ["status", "event"]


def test_a_crash_loop_names_the_last_exit_and_its_termination_message() -> None:
    container = {
        "name": "fetch",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 3, "message": "x.gguf: sha256 mismatch"}},
    }
    pod = {"metadata": {"name": "p"}, "status": {"initContainerStatuses": [container]}}
    status = status_for(DECISION, Observed(deployment(1, 0), [pod]))
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "CrashLoopBackOff"
    assert "exited 3: x.gguf: sha256 mismatch" in degraded["message"]


def test_the_gateway_network_policy_is_applied_when_it_changes_and_deleted_when_unwanted() -> None:
    peers = ({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}},)
    config = OperatorConfig(model_ingress_from=peers)
    md = example_md()
    first = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool()), first, config, now=NOW)  # type: ignore[arg-type]
    assert ("apply", "NetworkPolicy/gemma-270m-cpu") in first.calls
    md["status"] = next(what for kind, what in first.calls if kind == "status")
    assert md["status"]["networkPolicyHash"]
    # Not watched: the next pass does not apply it again while it is unchanged.
    children = [dict(obj) for obj in first.applied if obj["kind"] != "NetworkPolicy"]
    again = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool(), children), again, config, now=NOW)  # type: ignore[arg-type]
    assert ("apply", "NetworkPolicy/gemma-270m-cpu") not in again.calls
    # The gateway turned off: the policy goes, and status forgets it.
    off = RecordingWriter()
    reconcile(md, ClusterView(load_e2e_pool(), children), off, OperatorConfig(), now=NOW)  # type: ignore[arg-type]
    assert ("delete", "NetworkPolicy/gemma-270m-cpu") in off.calls
    status = next(what for kind, what in off.calls if kind == "status")
    assert "networkPolicyHash" not in status
