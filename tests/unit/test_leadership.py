"""Leader election and health: the Lease decisions (pure functions of the Lease, this
process's clock and identity), the election loop against an in-memory Lease store (two
replicas, a crash, a release, an API outage), the gate that keeps a standby from writing,
the health verdict and what it reads from Kopf's log records, and the settings.

The e2e tests (``tests/e2e/test_leader_election.py``) run the same against the real API
server, with processes killed and the API server stopped.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from typing import Any

import pytest
from recording import RecordingWriter

from modeldeploy.election import Leadership, LeaseConflictError
from modeldeploy.health import FAILURE_WINDOW_S, PROBE_INTERVAL_S, Health, KopfMonitor
from modeldeploy.lease import (
    Observed,
    Step,
    claim,
    decide,
    expires_at,
    lost,
    observe,
    record_of,
    release,
)
from modeldeploy.passes import INDEXES, State, elected_round, reconcile_key
from modeldeploy.settings import (
    LeaderElectionSettings,
    OperatorSettings,
    SettingsError,
    load_settings,
)

WALL = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
DURATION = 15


def lease(holder: str | None, version: str = "1", **spec: Any) -> dict[str, Any]:
    """A Lease as the API server returns it."""
    body: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "modeldeploy", "namespace": "ops", "resourceVersion": version},
        "spec": {"leaseDurationSeconds": DURATION, "renewTime": "2025-01-02T03:04:00.000000Z"}
        | spec,
    }
    if holder is not None:
        body["spec"]["holderIdentity"] = holder
    return body


def seen(body: dict[str, Any] | None, since: float) -> Observed:
    return Observed(record_of(body), since)


# -- the decisions -------------------------------------------------------------------


def test_no_lease_is_created() -> None:
    assert decide(seen(None, 0), "a", now=0, default_duration=DURATION) is Step.CREATE


def test_an_own_lease_is_renewed_whatever_its_age() -> None:
    assert decide(seen(lease("a"), 0), "a", now=1000, default_duration=DURATION) is Step.RENEW


def test_another_holders_lease_is_waited_for_until_it_expires_on_our_clock() -> None:
    observed = seen(lease("b"), since=100)
    assert decide(observed, "a", now=100, default_duration=DURATION) is Step.WAIT
    assert decide(observed, "a", now=114.9, default_duration=DURATION) is Step.WAIT
    assert decide(observed, "a", now=115, default_duration=DURATION) is Step.TAKE_OVER
    assert expires_at(observed, DURATION) == 115


def test_the_holders_own_duration_bounds_its_lease() -> None:
    observed = seen(lease("b", leaseDurationSeconds=60), since=0)
    assert decide(observed, "a", now=59, default_duration=DURATION) is Step.WAIT
    assert decide(observed, "a", now=60, default_duration=DURATION) is Step.TAKE_OVER
    # A Lease that names no duration: this process's setting stands in.
    unnamed = seen(lease("b", leaseDurationSeconds=None), since=0)
    assert decide(unnamed, "a", now=14, default_duration=DURATION) is Step.WAIT
    assert decide(unnamed, "a", now=15, default_duration=DURATION) is Step.TAKE_OVER


def test_a_released_lease_is_taken_at_once() -> None:
    released = seen(release(lease("b"), wall=WALL), since=100)
    assert record_of(release(lease("b"), wall=WALL)).holder == ""  # type: ignore[union-attr]
    assert decide(released, "a", now=100, default_duration=DURATION) is Step.TAKE_OVER


def test_the_holders_renew_time_is_never_compared_with_our_clock() -> None:
    # renewTime says years ago (clock skew, or a stale record first seen now): the lease
    # still runs a full duration from when this process first saw that record.
    stale = lease("b", renewTime="2001-01-01T00:00:00.000000Z")
    assert decide(seen(stale, since=500), "a", now=501, default_duration=DURATION) is Step.WAIT


def test_an_observation_keeps_its_time_until_the_record_changes() -> None:
    first = observe(None, record_of(lease("b", "1")), now=10)
    again = observe(first, record_of(lease("b", "1")), now=12)
    assert again.since == 10
    renewed = observe(again, record_of(lease("b", "2")), now=13)  # a renewal: new version
    assert renewed.since == 13
    assert observe(renewed, None, now=14).since == 14  # deleted: a new observation


def test_the_leader_has_lost_once_the_renew_deadline_passes_without_a_renewal() -> None:
    assert not lost(renewed_at=100, now=109.9, renew_deadline=10)
    assert lost(renewed_at=100, now=110, renew_deadline=10)
    assert lost(renewed_at=None, now=0, renew_deadline=10)


def test_claims_write_the_holder_times_and_terms() -> None:
    created = claim(
        Step.CREATE, None, "a", name="modeldeploy", namespace="ops", duration_seconds=15, wall=WALL
    )
    assert created["metadata"] == {"name": "modeldeploy", "namespace": "ops"}
    assert created["spec"] == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2025-01-02T03:04:05.678901Z",
        "renewTime": "2025-01-02T03:04:05.678901Z",
        "leaseTransitions": 0,
    }
    theirs = lease("b", "7", acquireTime="2025-01-01T00:00:00.000000Z", leaseTransitions=4)
    theirs["metadata"]["labels"] = {"team": "ml"}
    taken = claim(
        Step.TAKE_OVER, theirs, "a", name="modeldeploy", namespace="ops",
        duration_seconds=15, wall=WALL,
    )  # fmt: skip
    assert taken["metadata"]["resourceVersion"] == "7"  # refused (409) if written since
    assert taken["metadata"]["labels"] == {"team": "ml"}
    assert taken["spec"]["holderIdentity"] == "a"
    assert taken["spec"]["leaseTransitions"] == 5
    assert taken["spec"]["acquireTime"] == "2025-01-02T03:04:05.678901Z"
    ours = lease("a", "8", acquireTime="2025-01-01T00:00:00.000000Z", leaseTransitions=5)
    renewed = claim(
        Step.RENEW, ours, "a", name="modeldeploy", namespace="ops", duration_seconds=15, wall=WALL
    )
    assert renewed["spec"]["acquireTime"] == "2025-01-01T00:00:00.000000Z"
    assert renewed["spec"]["leaseTransitions"] == 5
    assert renewed["spec"]["renewTime"] == "2025-01-02T03:04:05.678901Z"
    assert theirs["spec"]["holderIdentity"] == "b"  # the read object is not changed
    with pytest.raises(ValueError):
        claim(Step.WAIT, theirs, "a", name="x", namespace="ops", duration_seconds=15, wall=WALL)


def test_a_release_clears_the_holder_and_shortens_the_lease() -> None:
    released = release(lease("a", "9", leaseTransitions=2), wall=WALL)
    assert "holderIdentity" not in released["spec"]
    assert released["spec"]["leaseDurationSeconds"] == 1
    assert released["spec"]["leaseTransitions"] == 2
    assert released["metadata"]["resourceVersion"] == "9"


# -- the loop, against an in-memory Lease store ------------------------------------------


class Store:
    """One Lease with the API server's optimistic concurrency; ``down`` refuses calls."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.down = False
        self.writes: list[str] = []

    def api(self, who: str) -> Any:
        store = self

        class Leases:
            def read(self) -> dict[str, Any] | None:
                store._check()
                return copy.deepcopy(store.lease)

            def create(self, body: dict[str, Any]) -> dict[str, Any]:
                store._check()
                if store.lease is not None:
                    raise LeaseConflictError("exists")
                return store._write(who, body)

            def replace(self, body: dict[str, Any]) -> dict[str, Any]:
                store._check()
                assert store.lease is not None
                if body["metadata"].get("resourceVersion") != str(store.version):
                    raise LeaseConflictError("conflict")
                return store._write(who, body)

        return Leases()

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the API server is down")

    def _write(self, who: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(who)
        return copy.deepcopy(self.lease)

    @property
    def holder(self) -> str:
        record = record_of(self.lease)
        return record.holder if record else ""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ticking(Clock):
    """A clock that moves a little every time it is read (so waits end)."""

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


SETTINGS = LeaderElectionSettings(enabled=True, namespace="ops")


def replica(store: Store, clock: Clock, who: str, **kwargs: Any) -> Leadership:
    return Leadership(
        SETTINGS, who, "ops", store.api(who), clock=clock, wall=lambda: WALL, **kwargs
    )


def tick(
    clock: Clock, *replicas: Leadership, seconds: float = SETTINGS.retry_period_seconds
) -> None:
    """One retry period: every replica reads (and maybe writes) the Lease."""

    async def steps() -> None:
        for one in replicas:
            await one.step()

    asyncio.run(steps())
    clock.now += seconds


def test_one_replica_leads_the_other_stands_by_and_takes_over_after_a_crash() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    tick(clock, a, b)
    assert (a.leading, b.leading, store.holder) == (True, False, "a")
    for _ in range(20):  # a renews; b only reads
        tick(clock, a, b)
    assert (a.leading, b.leading) == (True, False)
    assert set(store.writes) == {"a"}
    crashed_at = clock.now  # a dies: it stops renewing
    while not b.leading:
        tick(clock, b)
        assert clock.now - crashed_at <= SETTINGS.failover_bound_seconds, "no take-over"
    assert store.holder == "b"
    assert record_of(store.lease).transitions == 1  # type: ignore[union-attr]


def test_a_released_lease_is_taken_within_a_retry_period() -> None:
    store, clock = Store(), Clock()
    a, b = replica(store, clock, "a"), replica(store, clock, "b")
    tick(clock, a, b)
    asyncio.run(a.release(grace=1))
    assert not a.leading and store.holder == ""
    tick(clock, b)
    assert b.leading and store.holder == "b"


def test_a_leader_that_cannot_renew_stands_by_then_leads_again_when_the_api_returns() -> None:
    store, clock = Store(), Clock()
    elected: list[str] = []

    async def on_elected() -> None:
        elected.append("round")

    a = replica(store, clock, "a")

    async def attach() -> None:
        a.attach(on_elected, busy=lambda: False)
        await a.step()
        await asyncio.sleep(0)  # the round runs as its own task

    asyncio.run(attach())
    clock.now += SETTINGS.retry_period_seconds
    assert a.leading and elected == ["round"]
    store.down = True
    started = clock.now
    while a.leading:
        tick(clock, a)
    assert clock.now - started <= SETTINGS.renew_deadline_seconds + SETTINGS.retry_period_seconds
    assert a.last_error and "down" in a.last_error
    store.down = False  # its own record still names it: it renews at once

    async def again() -> None:
        await a.step()
        await asyncio.sleep(0)

    asyncio.run(again())
    assert a.leading and store.holder == "a"
    assert elected == ["round", "round"]  # leading again: a pass for every object again


def test_a_leader_whose_passes_outlive_the_lease_exits() -> None:
    store, clock = Store(), Ticking()
    exits: list[int] = []
    a = replica(store, clock, "a", exit_process=exits.append)
    a.attach(lambda: asyncio.sleep(0), busy=lambda: True)  # a pass never ends
    tick(clock, a)
    store.down = True
    while a.leading:
        tick(clock, a)
    assert exits == [3]


def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    store, clock = Store(), Clock()
    a = replica(store, clock, "a")
    tick(clock, a)
    store.lease = lease("b", str(store.version + 1))  # someone took it (a stalled process)
    store.version += 1
    tick(clock, a)
    assert not a.leading


class NoResolver:
    """Stand-in for ``ArtifactResolver``: nothing resolved (the spec is refused anyway)."""

    def state_for(self, md: Any) -> None:
        return None

    def forget(self, uid: str) -> None:
        return None


def test_a_standby_runs_no_pass_and_writes_nothing() -> None:
    writer = RecordingWriter()
    settings = OperatorSettings(metrics_port=0, health_port=0)
    store, clock = Store(), Clock()
    store.lease, store.version = lease("someone-else", "1"), 1
    standby = replica(store, clock, "b")
    st = State(settings, identity="b", writer=writer, resolver=NoResolver(), leader=standby)  # type: ignore[arg-type]
    md = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {},
    }
    indexes: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    indexes["model_deployments"] = {("ns", "chat"): [md]}
    tick(clock, standby)
    asyncio.run(reconcile_key(("ns", "chat"), st, indexes))
    assert writer.calls == []
    # The holder leaves (a release): the same pass now runs, and writes (refused: no spec).
    store.lease = release(store.lease, wall=WALL)
    tick(clock, standby)
    assert standby.leading
    asyncio.run(reconcile_key(("ns", "chat"), st, indexes))
    assert [call[0] for call in writer.calls] == ["status", "event"]


def test_taking_the_lease_forgets_what_an_earlier_term_remembered() -> None:
    # Another leader may have written since this process last led: its cached statuses
    # and released finalizers are no longer the cluster's.
    settings = OperatorSettings(metrics_port=0, health_port=0)
    st = State(settings, identity="a", writer=RecordingWriter())  # type: ignore[arg-type]
    st.statuses["uid"] = {"phase": "Ready"}
    st.released["uid"] = "7"
    empty: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEXES}
    asyncio.run(elected_round(st, empty))  # type: ignore[arg-type]
    assert st.statuses == {} and st.released == {}


# -- health --------------------------------------------------------------------------


def test_health_needs_an_answering_api_server_and_no_recent_watch_failure() -> None:
    health = Health(identity="a")
    assert health.problems(0) == ["the API server has not answered yet"]
    health.api_answered(0)
    assert health.problems(1) == []
    health.api_failed("ConnectionRefusedError: [Errno 111]")
    assert health.problems(2) == [
        "cannot reach the API server: ConnectionRefusedError: [Errno 111]"
    ]
    health.api_answered(3)
    assert health.problems(3) == []
    assert health.problems(3 + 2 * PROBE_INTERVAL_S + 10)  # the probe stopped answering
    health.api_answered(100)
    health.request_failed("/api/v1/nodes", "APIForbiddenError('nodes is forbidden')", now=100)
    assert health.problems(101) == [
        "Kopf's request for /api/v1/nodes failed 1s ago: APIForbiddenError('nodes is forbidden')"
    ]
    health.api_answered(100 + FAILURE_WINDOW_S + 1)
    assert health.problems(100 + FAILURE_WINDOW_S + 1) == []  # no failure since: recovered
    assert health.live()


def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, message, None, None)


def test_kopf_log_records_feed_the_health_verdict() -> None:
    health = Health(identity="a")
    health.api_answered(50)
    monitor = KopfMonitor(health, clock=lambda: 50)
    # What Kopf logs before each retry of a refused list or watch (kopf/_cogs/clients/api.py).
    monitor.emit(
        record(
            "Request attempt #2/15 failed; will retry: GET https://127.0.0.1:6443/api/v1/pods"
            "?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmodeldeploy&watch=true -> "
            "APIForbiddenError('pods is forbidden', {'code': 403})"
        )
    )
    monitor.emit(record("Request attempt #1/15 failed; will retry: PATCH https://x/api/v1/y"))
    assert list(health.failures) == ["/api/v1/pods"]
    assert "APIForbiddenError('pods is forbidden'" in health.failures["/api/v1/pods"][1]
    # An observer that gives up for want of a permission stops its watch for good.
    monitor.emit(
        record(
            "Not enough permissions to watch for resources: changes (creation/deletion/"
            "updates) will not be noticed; the resources are only refreshed on operator "
            "restarts.",
            logging.WARNING,
        )
    )
    assert "resources" in health.stopped
    assert health.live()
    # A root task failed: Kopf stops (and with it the process).
    monitor.emit(record("Watcher for nodes@none has failed: ('nodes is forbidden', 403)"))
    assert not health.live()
    problems = health.problems(50)
    assert problems[0].startswith("Kopf stopped: Watcher for nodes@none has failed")
    assert health.report(50)["healthy"] is False


# -- settings ------------------------------------------------------------------------


def test_lease_settings_default_to_15_10_2_and_must_be_ordered() -> None:
    election = OperatorSettings().leader_election
    assert not election.enabled
    assert (
        election.lease_duration_seconds,
        election.renew_deadline_seconds,
        election.retry_period_seconds,
    ) == (15, 10.0, 2.0)
    assert election.failover_bound_seconds == 19
    with pytest.raises(ValueError, match="greater than renewDeadlineSeconds"):
        LeaderElectionSettings(lease_duration_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError, match="greater than retryPeriodSeconds"):
        LeaderElectionSettings(renew_deadline_seconds=2, retry_period_seconds=2)


def test_leader_election_and_peering_exclude_each_other(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("peering: modeldeploy\nleaderElection: {enabled: true}\n")
    with pytest.raises(SettingsError, match="exclude each other"):
        load_settings(path, {})


def test_flag_overrides_merge_into_the_lease_section(tmp_path: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("leaderElection: {enabled: true, leaseName: mine, namespace: ops}\n")
    overrides = {"leaderElection": {"leaseDurationSeconds": 30, "namespace": None}}
    election = load_settings(path, overrides).leader_election
    assert (election.enabled, election.lease_name, election.namespace) == (True, "mine", "ops")
    assert election.lease_duration_seconds == 30
    with pytest.raises(SettingsError, match="leaderElection"):
        load_settings(path, {"leaderElection": {"renewDeadlineSeconds": 40}})
