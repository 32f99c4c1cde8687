"""The Argo CD health check of ModelDeployments (examples/argocd/health.lua), in Lua 5.1.

Argo CD runs health checks in gopher-lua (Lua 5.1). These tests run the same script in
lupa's Lua 5.1 on objects recorded from real reconciles (tests/fixtures/argocd/, see its
README) and on variations of them that the documented rules decide.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.argocd import HEALTH_LUA, health

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "argocd"
EXPECTED: dict[str, dict[str, str]] = json.loads((FIXTURES / "expected.json").read_text())


def load(name: str) -> dict[str, Any]:
    """A fixture object."""
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return loaded


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The object's conditions by type (the dicts themselves, to edit)."""
    return {c["type"]: c for c in obj["status"]["conditions"]}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(EXPECTED) == sorted(
        p.name for p in FIXTURES.glob("*.json") if p.name != "expected.json"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_health(name: str) -> None:
    result = health(load(name))
    assert result["status"] == EXPECTED[name]["status"], result
    assert EXPECTED[name]["message"] in result["message"], result


def test_a_ready_condition_of_an_older_generation_is_not_healthy() -> None:
    # The operator has observed generation 2 but its Ready condition still speaks of 1.
    obj = load("ready-new-generation.json")
    conditions(obj)["Ready"]["observedGeneration"] = 1
    assert health(obj)["status"] == "Progressing"


def test_a_degraded_condition_of_an_older_generation_does_not_count() -> None:
    obj = load("unschedulable-no-hardware.json")
    obj["metadata"]["generation"] = 2
    obj["status"]["observedGeneration"] = 2
    for cond in obj["status"]["conditions"]:
        cond["observedGeneration"] = 1
    assert health(obj)["status"] == "Progressing"


def test_degraded_wins_over_ready() -> None:
    # e.g. one replica of two crash-loops, or a refused permission after a Ready pass.
    result = health(load("forbidden.derived.json"))
    assert result["status"] == "Degraded"
    assert 'cannot create resource "events"' in result["message"]


@pytest.mark.parametrize("phase", ["Failed", "Blocked"])
def test_failed_and_blocked_phases_are_degraded(phase: str) -> None:
    obj = load("rolling-out.json")
    obj["status"]["phase"] = phase
    assert health(obj)["status"] == "Degraded"


def test_scaled_to_zero_is_healthy() -> None:
    obj = load("ready.json")
    ready = conditions(obj)["Ready"]
    ready.update(reason="ScaledToZero", message="0 replicas requested")
    assert health(obj) == {"status": "Healthy", "message": "0 replicas requested"}


def test_missing_pieces_do_not_break_the_script() -> None:
    # Argo CD shows a script error as the health of every such object: never raise.
    bare = {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {}}
    assert health(bare)["status"] == "Progressing"
    no_conditions = copy.deepcopy(load("ready.json"))
    del no_conditions["status"]["conditions"]
    assert health(no_conditions)["status"] == "Progressing"
    odd = copy.deepcopy(load("ready.json"))
    odd["status"]["conditions"].append({"status": "True"})  # a condition without a type
    assert health(odd)["status"] == "Healthy"


def test_the_interpreter_is_lua_51_without_os_or_io(tmp_path: Path) -> None:
    # Argo CD's gopher-lua speaks Lua 5.1 and has no os or io: a script using them fails.
    version = tmp_path / "version.lua"
    version.write_text('return {status = "Healthy", message = _VERSION}')
    assert health({}, script=version)["message"] == "Lua 5.1"
    unsafe = tmp_path / "unsafe.lua"
    unsafe.write_text('os.exit(1)\nreturn {status = "Healthy"}')
    with pytest.raises(Exception, match="os"):
        health({}, script=unsafe)


def test_argocd_cm_snippet_carries_the_same_script() -> None:
    configmap = yaml.safe_load((HEALTH_LUA.parent / "argocd-cm.yaml").read_text())
    key = "resource.customizations.health.modeldeploy.io_ModelDeployment"
    assert configmap["data"][key] == HEALTH_LUA.read_text()


def test_a_model_blocked_by_a_policy_is_degraded_with_the_violation() -> None:
    # What the operator writes when a violated enforce ModelPolicy blocks a running model.
    obj = load("ready.json")
    message = (
        "blocked: 1 violation: strict: allowedSources: spec.model.source: ...; allowed: hf://Qwen/*"
    )
    obj["status"]["phase"] = "Blocked"
    ready = conditions(obj)["Ready"]
    ready.update(status="False", reason="PolicyViolation", message=message)
    generation = obj["metadata"]["generation"]
    obj["status"]["conditions"].append(
        {"type": "Compliant", "status": "False", "reason": "PolicyViolation",
         "message": message, "observedGeneration": generation}
    )  # fmt: skip
    result = health(obj)
    assert result["status"] == "Degraded"
    assert result["message"].startswith("PolicyViolation: blocked: 1 violation: strict")
