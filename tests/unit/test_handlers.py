"""The Kopf wiring (``handlers``) with ``RecordingWriter``: no handler needs a finalizer, a
legacy finalizer is released once, the drift check walks the index and pauses with Kopf
peering, a missing permission becomes ``Degraded=Forbidden``, and passes queue: coalesced
per object, a new spec before follow-ups.

Plain dicts stand in for Kopf's indexes (the wiring reads them as mappings of lists); the
e2e tests run the same handlers under Kopf against the real API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from kubernetes import client
from prometheus_client import REGISTRY
from recording import RecordingWriter

from modeldeploy import handlers, passes
from modeldeploy.observed import LEGACY_FINALIZERS
from modeldeploy.passes import State, reconcile_key, resync_forever
from modeldeploy.reconcile import PassResult
from modeldeploy.settings import OperatorSettings
from modeldeploy.status import forbidden_status

NS = "models"
LEGACY = "modeldeploy.io/finalizer"


class NoResolver:
    """Stand-in for ``ArtifactResolver``: nothing resolved (the spec is refused anyway)."""

    def state_for(self, md: Any) -> None:
        return None

    def forget(self, uid: str) -> None:
        return None


def md(name: str, version: str = "1", **metadata: Any) -> dict[str, Any]:
    """A ModelDeployment the API server would hold, refused for its empty spec."""
    meta = {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1}
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": meta | {"resourceVersion": version} | metadata,
        "spec": {},
    }


def indexes(*mds: dict[str, Any]) -> dict[str, dict[Any, list[Any]]]:
    """The operator's indexes holding ``mds`` and nothing else."""
    return {
        "model_deployments": {(NS, m["metadata"]["name"]): [m] for m in mds},
        "nodes": {},
        "child_deployments": {},
        "child_services": {},
        "child_claims": {},
        "child_pods": {},
        "pod_usage": {},
        "model_policies": {},
        "namespace_labels": {},
        "demand_leases": {},
    }


def state(writer: RecordingWriter, resync_seconds: float = 0.01) -> State:
    """Handler state as start-up leaves it, with the recording writer."""
    settings = OperatorSettings(resync_seconds=resync_seconds, metrics_port=0, health_port=0)
    return State(settings, identity="me", writer=writer, resolver=NoResolver())  # type: ignore[arg-type]


def rounds(outcome: str) -> float:
    """Drift-check rounds so far with ``outcome``."""
    value = REGISTRY.get_sample_value("modeldeploy_resync_rounds_total", {"outcome": outcome})
    return value or 0.0


async def until(probe: Callable[[], bool], timeout: float = 10.0) -> None:
    """Yield to the loop until ``probe`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_no_handler_needs_a_finalizer() -> None:
    # Timers, daemons and on.create/update/delete make Kopf put a finalizer on every
    # object (and keep it while no operator runs); watches and indexes do not.
    registry = kopf.get_default_registry()
    assert registry._changing.get_all_handlers() == []
    assert registry._spawning.get_all_handlers() == []
    watching = registry._watching.get_all_handlers() + registry._indexing.get_all_handlers()
    assert {h.id for h in watching} >= {"model_deployment_event", "model_deployments"}
    assert not any(getattr(h, "requires_finalizer", None) for h in watching)
    assert handlers.KOPF_FINALIZER not in LEGACY_FINALIZERS


def test_no_diff_base_is_built_or_kept_as_no_handler_reads_one() -> None:
    # Only change handlers (on.create, update, resume, delete, field) read Kopf's diff base.
    assert kopf.get_default_registry()._changing.get_all_handlers() == []
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"replicas": 1}})
    assert storage.build(body=body) == {}
    assert storage.fetch(body=body) is None


def test_a_legacy_finalizer_is_released_once_per_version_then_the_pass_runs() -> None:
    writer = RecordingWriter()
    st = state(writer)
    old = md("chat", "5", finalizers=["example.com/backup", LEGACY])
    asyncio.run(reconcile_key((NS, "chat"), st, indexes(old)))
    assert writer.calls[0] == ("finalizers", ("chat", ["example.com/backup"], "5"))
    assert [c[0] for c in writer.calls[1:]] == ["status", "event"]  # refused: InvalidSpec

    # The watch has not delivered our write yet: the same version is not patched again.
    writer.calls.clear()
    asyncio.run(reconcile_key((NS, "chat"), st, indexes(old)))
    assert writer.calls == []

    # A newer version that carries it again (an older operator still running) is.
    again = md("chat", "9", finalizers=["kopf.zalando.org/KopfFinalizerMarker"])
    asyncio.run(reconcile_key((NS, "chat"), st, indexes(again)))
    assert writer.calls == [("finalizers", ("chat", [], "9"))]


def test_a_deleting_model_deployment_is_released_and_not_reconciled() -> None:
    writer = RecordingWriter()
    deleting = md("gone", "3", finalizers=[LEGACY], deletionTimestamp="2026-01-01T00:00:00Z")
    asyncio.run(reconcile_key((NS, "gone"), state(writer), indexes(deleting)))
    assert writer.calls == [("finalizers", ("gone", [], "3"))]


def test_without_a_legacy_finalizer_nothing_is_patched() -> None:
    writer = RecordingWriter()
    asyncio.run(reconcile_key((NS, "new"), state(writer), indexes(md("new"))))
    assert "finalizers" not in [c[0] for c in writer.calls]
    assert writer.calls[0][0] == "status"


def test_the_drift_check_reconciles_every_indexed_model_deployment() -> None:
    writer = RecordingWriter()
    st = state(writer)

    async def scenario() -> None:
        ran = rounds("ran")
        task = asyncio.create_task(resync_forever(st, indexes(md("a"), md("b"))))
        try:
            await until(lambda: rounds("ran") >= ran + 3)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    statuses = [c for c in writer.calls if c[0] == "status"]
    # One status write each: later rounds compute the same status and write nothing.
    assert len(statuses) == 2
    assert set(st.phases) == {(NS, "a"), (NS, "b")}


def test_the_drift_check_pauses_while_kopf_peering_pauses_the_operator() -> None:
    writer = RecordingWriter()
    st = state(writer)
    now = datetime.datetime.now(datetime.UTC).isoformat()
    other = {"priority": 100, "lifetime": 600, "lastseen": now}
    peers: dict[str, Any] = {"me": {"priority": 0, "lifetime": 60, "lastseen": now}}
    st.read_peerings = lambda: [{"metadata": {"name": "modeldeploy"}, "status": dict(peers)}]

    async def scenario() -> None:
        task = asyncio.create_task(resync_forever(st, indexes(md("a"))))
        try:
            await until(lambda: rounds("ran") > 0 and bool(writer.calls))
            peers["other"] = other
            paused = rounds("paused")
            await until(lambda: rounds("paused") >= paused + 3)
            writer.calls.clear()
            st.statuses.clear()  # a pass would write again, were one to run
            paused = rounds("paused")
            await until(lambda: rounds("paused") >= paused + 3)
            assert writer.calls == []
            del peers["other"]  # the peer went away: rounds run again
            await until(lambda: bool(writer.calls))
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_a_drift_check_that_cannot_read_the_peering_skips_the_round() -> None:
    writer = RecordingWriter()
    st = state(writer)

    def refused() -> list[Any]:
        raise client.ApiException(status=403, reason="Forbidden")

    st.read_peerings = refused

    async def scenario() -> None:
        paused = rounds("paused")
        task = asyncio.create_task(resync_forever(st, indexes(md("a"))))
        try:
            await until(lambda: rounds("paused") >= paused + 2)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert writer.calls == []


def test_forbidden_status_keeps_the_rest_and_the_transition_time() -> None:
    previous = {
        "phase": "Ready",
        "observedGeneration": 2,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Available"},
            {"type": "Degraded", "status": "False", "lastTransitionTime": "T0"},
        ],
    }
    status = forbidden_status(previous, "cannot patch", generation=3, now="T1")
    assert status["phase"] == "Ready" and status["observedGeneration"] == 2
    degraded = status["conditions"][-1]
    assert degraded == {
        "type": "Degraded",
        "status": "True",
        "observedGeneration": 3,
        "lastTransitionTime": "T1",
        "reason": "Forbidden",
        "message": "cannot patch",
    }
    assert status["conditions"][0] == previous["conditions"][0]
    again = forbidden_status(status, "cannot patch", generation=3, now="T2")
    assert again["conditions"][-1]["lastTransitionTime"] == "T1"  # still True: kept
    assert [c["type"] for c in again["conditions"]] == ["Ready", "Degraded"]
    assert previous["conditions"][1]["status"] == "False"  # the input is not changed


def test_a_refused_permission_is_reported_as_degraded_forbidden() -> None:
    writer = RecordingWriter()
    error = client.ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"message": 'cannot patch resource "deployments"'})
    with pytest.raises(kopf.TemporaryError, match="lacks a permission"):
        asyncio.run(passes._api_error(error, md("chat"), state(writer)))
    (kind, status), event = writer.calls
    assert kind == "status" and event == ("event", ("Warning", "Forbidden"))
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Forbidden")
    assert 'cannot patch resource "deployments"' in degraded["message"]


# -- how passes queue ------------------------------------------------------------------


def test_passes_for_a_new_spec_go_before_follow_ups_that_waited_longer() -> None:
    slots = passes.PassSlots(1)
    order: list[str] = []

    async def one(name: str, rank: int) -> None:
        async with slots.slot(rank):
            order.append(name)

    async def scenario() -> None:
        async with slots.slot(passes.FOLLOW_UP):  # the one slot is taken
            waiting = [
                asyncio.create_task(one("status of a", passes.FOLLOW_UP)),
                asyncio.create_task(one("rest of b", passes.NEW_REST)),
                asyncio.create_task(one("status of b", passes.FOLLOW_UP)),
                asyncio.create_task(one("workload of c", passes.NEW_WORKLOAD)),
            ]
            await until(lambda: len(slots._waiting) == 4)
        await asyncio.gather(*waiting)

    asyncio.run(scenario())
    assert order == ["workload of c", "rest of b", "status of a", "status of b"]
    assert slots.free == 1


def test_a_pass_cancelled_while_it_waits_leaves_no_slot_taken() -> None:
    slots = passes.PassSlots(2)
    ran: list[str] = []

    async def one(name: str) -> None:
        async with slots.slot(passes.NEW_WORKLOAD):
            ran.append(name)

    async def scenario() -> None:
        async with slots.slot(passes.NEW_WORKLOAD), slots.slot(passes.NEW_WORKLOAD):
            cancelled = asyncio.create_task(one("cancelled"))
            later = asyncio.create_task(one("later"))
            await until(lambda: len(slots._waiting) == 2)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
        await later

    asyncio.run(scenario())
    assert ran == ["later"]
    assert slots.free == 2 and slots._waiting == []


def test_triggers_coalesce_into_the_waiting_pass_and_one_during_a_pass_adds_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    runs: list[str] = []

    def blocking_pass(md: dict[str, Any], view: Any, st: State, workload_first: bool) -> Any:
        runs.append(md["metadata"]["name"])
        if len(runs) == 1:
            release.wait(timeout=10)  # the first pass is under way until released
        raise client.ApiException(status=422, reason="stand-in: no result needed")

    monkeypatch.setattr(passes, "_pass", blocking_pass)
    st = state(RecordingWriter())
    live = indexes(md("chat"))

    async def trigger() -> None:
        with contextlib.suppress(client.ApiException):
            await reconcile_key((NS, "chat"), st, live)

    async def scenario() -> None:
        under_way = asyncio.create_task(trigger())
        await until(lambda: len(runs) == 1)
        # Three triggers during the pass: one pass waits, the others add nothing.
        later = [asyncio.create_task(trigger()) for _ in range(3)]
        await until(lambda: all(t.done() for t in later[1:]))
        assert not later[0].done()
        release.set()
        await asyncio.gather(under_way, *later)

    asyncio.run(scenario())
    assert runs == ["chat", "chat"]
    assert st.pending == set()


def test_a_new_spec_overtakes_follow_up_passes_that_wait_for_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[str] = []

    def recording_pass(md: dict[str, Any], view: Any, st: State, workload_first: bool) -> Any:
        runs.append(md["metadata"]["name"])
        raise client.ApiException(status=422, reason="stand-in: no result needed")

    monkeypatch.setattr(passes, "_pass", recording_pass)
    st = state(RecordingWriter())
    st.slots = passes.PassSlots(1)
    acted_on = md("settled") | {"status": {"observedGeneration": 1}}
    live = indexes(acted_on, md("created"))

    async def trigger(name: str) -> None:
        with contextlib.suppress(client.ApiException):
            await reconcile_key((NS, name), st, live)

    async def scenario() -> None:
        async with st.slots.slot(passes.FOLLOW_UP):  # every pass thread is busy
            settled = asyncio.create_task(trigger("settled"))
            await until(lambda: len(st.slots._waiting) == 1)
            created = asyncio.create_task(trigger("created"))
            await until(lambda: len(st.slots._waiting) == 2)
        await asyncio.gather(settled, created)

    asyncio.run(scenario())
    assert runs == ["created", "settled"]


def test_a_new_spec_is_two_passes_its_workload_then_the_rest_seeing_what_was_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[bool, list[str]]] = []
    deployment = {"kind": "Deployment", "metadata": {"name": "chat"}}

    def two_part_pass(md: dict[str, Any], view: Any, st: State, workload_first: bool) -> Any:
        children = [f"{c['kind']}/{c['metadata']['name']}" for c in view.children]
        calls.append((workload_first, children))
        if workload_first:
            return PassResult("progressing", "Deploying", deferred=True, written=[deployment])
        return PassResult("progressing", "Deploying", status={"observedGeneration": 1})

    monkeypatch.setattr(passes, "_pass", two_part_pass)
    st = state(RecordingWriter())
    asyncio.run(reconcile_key((NS, "chat"), st, indexes(md("chat"))))
    # The rest ran after the workload, with the Deployment the watch had not delivered.
    assert calls == [(True, []), (False, ["Deployment/chat"])]
    assert st.statuses["uid-chat"] == {"observedGeneration": 1}
    assert st.slots.free == passes.PASS_THREADS
