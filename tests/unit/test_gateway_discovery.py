"""What the gateway discovers (``gateway.discovery``: ModelDeployments and pods -> targets,
key Secrets -> grants, the watches' bookkeeping) and the wake signal's Lease
(``gateway.wake``), as table tests."""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from modeldeploy.gateway.discovery import (
    Discovery,
    affinity_of,
    backends_of,
    grants_from,
    scales_from_zero,
    served_names,
    targets_from,
)
from modeldeploy.gateway.keys import Grant, KeyRing
from modeldeploy.gateway.routing import Backend, ModelTarget, RoutingTable
from modeldeploy.gateway.wake import LeaseWaker, Limiter, demand_lease, micro_time

NS = "team-a"
PORT = 8000


def md(name: str = "gemma", namespace: str = NS, **spec: Any) -> dict[str, Any]:
    """A ModelDeployment as the API server holds it, with parts of its spec replaced."""
    body: dict[str, Any] = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"model": {"source": "hf://unsloth/gemma-3-270m-it-GGUF"}},
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def annotated(body: dict[str, Any], **annotations: str) -> dict[str, Any]:
    """``body`` with these metadata annotations."""
    body = copy.deepcopy(body)
    body["metadata"]["annotations"] = dict(annotations)
    return body


def pod(
    name: str = "gemma-abc",
    owner: str = "gemma",
    *,
    namespace: str = NS,
    ip: str | None = "10.244.0.5",
    ready: bool = True,
    component: str = "server",
    terminating: bool = False,
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A server pod of ``owner`` as the API server reports it."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/managed-by": "modeldeploy",
            "app.kubernetes.io/component": component,
            "modeldeploy.io/model-deployment": owner,
        },
    }
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:05:00Z"
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
    containers = [{"name": "llamacpp", "ports": ports if ports is not None else []}]
    return {"metadata": meta, "spec": {"containers": containers}, "status": status}


def backend(name: str = "gemma-abc", ip: str = "10.244.0.5", port: int = PORT) -> Backend:
    """The backend the pod of that name and IP becomes."""
    return Backend(f"{NS}/{name}", ip, port)


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ([pod()], (backend(),)),
        ([pod(ready=False)], ()),
        ([pod(ip=None)], ()),
        ([pod(terminating=True)], ()),
        ([pod(component="model-cache")], ()),
        ([pod(owner="other")], ()),
        ([pod(namespace="team-b")], ()),
        # Sorted by name, whatever the order of the events.
        (
            [pod("gemma-b", ip="10.244.0.7"), pod("gemma-a", ip="10.244.0.6")],
            (backend("gemma-a", "10.244.0.6"), backend("gemma-b", "10.244.0.7")),
        ),
        # The pod's named port wins over the default.
        (
            [pod(ports=[{"name": "http", "containerPort": 9000, "protocol": "TCP"}])],
            (backend(port=9000),),
        ),
        ([pod(ports=[{"name": "metrics", "containerPort": 9100}])], (backend(),)),
    ],
)
def test_backends_are_the_ready_server_pods_with_an_ip(
    pods: list[dict[str, Any]], expected: tuple[Backend, ...]
) -> None:
    assert backends_of("gemma", NS, pods, PORT) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (md(), ["gemma"]),
        (md(model={"source": "hf://x/y", "servedName": "gemma-3"}), ["gemma-3"]),
        (
            md(
                model={"source": "hf://x/y", "servedName": "gemma-3"},
                adapters=[{"name": "gemma-sql"}, {"name": "gemma-pirate"}],
            ),
            ["gemma-3", "gemma-sql", "gemma-pirate"],
        ),
    ],
)
def test_a_model_deployment_serves_its_base_and_each_adapter(
    body: dict[str, Any], expected: list[str]
) -> None:
    assert served_names(body) == expected


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, "least-inflight"),
        ({"modeldeploy.io/gateway-affinity": "prefix"}, "prefix"),
        ({"modeldeploy.io/gateway-affinity": " Prefix "}, "prefix"),
        ({"modeldeploy.io/gateway-affinity": "least-inflight"}, "least-inflight"),
        ({"modeldeploy.io/gateway-affinity": "round-robin"}, "least-inflight"),
    ],
)
def test_affinity_comes_from_the_annotation(annotations: dict[str, str], expected: str) -> None:
    assert affinity_of(annotated(md(), **annotations)) == expected


@pytest.mark.parametrize(
    ("autoscaling", "expected"),
    [
        (None, False),
        ({"enabled": True, "minReplicas": 0, "maxReplicas": 2}, True),
        ({"enabled": True, "maxReplicas": 2}, False),  # minReplicas defaults to 1
        ({"enabled": True, "minReplicas": 1}, False),
        ({"enabled": False, "minReplicas": 0}, False),
    ],
)
def test_scale_from_zero_needs_autoscaling_down_to_zero(
    autoscaling: dict[str, Any] | None, expected: bool
) -> None:
    body = md() if autoscaling is None else md(autoscaling=autoscaling)
    assert scales_from_zero(body) is expected


def test_every_model_name_is_a_target_with_the_deployments_backends() -> None:
    a = annotated(
        md("a", model={"source": "hf://x/y", "servedName": "gemma-a"}, adapters=[{"name": "sql"}]),
        **{"modeldeploy.io/gateway-affinity": "prefix"},
    )
    b = md("b", autoscaling={"enabled": True, "minReplicas": 0})
    pods = [pod("a-1", owner="a", ip="10.244.0.8"), pod("b-1", owner="b", ready=False)]
    a_backends = (backend("a-1", "10.244.0.8"),)
    assert targets_from([b, a], pods, PORT) == [
        ModelTarget("b", NS, "b", (), "least-inflight", scale_from_zero=True),
        ModelTarget("gemma-a", NS, "a", a_backends, "prefix"),
        ModelTarget("sql", NS, "a", a_backends, "prefix"),
    ]


def test_a_name_claimed_twice_goes_to_the_older_deployment() -> None:
    older = md("old", model={"source": "hf://x/y", "servedName": "gemma"})
    newer = md("new", namespace="team-b", model={"source": "hf://x/y", "servedName": "gemma"})
    newer["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    # An adapter named like another deployment's base: the older one keeps the name too.
    adapter = md("sql", adapters=[{"name": "gemma"}])
    adapter["metadata"]["creationTimestamp"] = "2026-03-01T00:00:00Z"
    for order in ([older, newer, adapter], [adapter, newer, older]):
        targets = {t.model: (t.namespace, t.deployment) for t in targets_from(order, [], PORT)}
        assert targets == {"gemma": (NS, "old"), "sql": (NS, "sql")}


def test_no_model_deployments_no_targets() -> None:
    assert targets_from([], [pod()], PORT) == []


def key_secret(
    name: str = "alice",
    key: bytes = b"sk-alice",
    namespace: str = "gateway",
    labelled: bool = True,
    **annotations: str,
) -> dict[str, Any]:
    """An API-key Secret as the API server reports it (data base64-encoded)."""
    labels = {"modeldeploy.io/gateway-api-key": "true"} if labelled else {}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(annotations),
        },
        "data": {"api-key": base64.b64encode(key).decode()},
    }


def sha(key: bytes) -> str:
    """The hex sha256 the key ring looks keys up by."""
    return hashlib.sha256(key).hexdigest()


ANY = frozenset[str]()


@pytest.mark.parametrize(
    ("secrets", "expected"),
    [
        ([key_secret()], {sha(b"sk-alice"): Grant("gateway/alice", ANY, ANY)}),
        # A file's trailing newline is not part of the key.
        ([key_secret(key=b"sk-alice\n")], {sha(b"sk-alice"): Grant("gateway/alice", ANY, ANY)}),
        (
            [
                key_secret(
                    **{
                        "modeldeploy.io/namespaces": "team-a, team-b,",
                        "modeldeploy.io/models": "gemma-a",
                    }
                )
            ],
            {
                sha(b"sk-alice"): Grant(
                    "gateway/alice", frozenset({"team-a", "team-b"}), frozenset({"gemma-a"})
                )
            },
        ),
        ([key_secret(labelled=False)], {}),
        ([key_secret(key=b"")], {}),
        ([{**key_secret(), "data": {"api-key": "not base64!"}}], {}),
        ([{**key_secret(), "data": {"token": "c2stYWxpY2U="}}], {}),
        # Two Secrets with one key: the first by namespace/name grants it.
        (
            [
                key_secret("zed", **{"modeldeploy.io/models": "gemma-b"}),
                key_secret("bob", **{"modeldeploy.io/models": "gemma-a"}),
            ],
            {sha(b"sk-alice"): Grant("gateway/bob", ANY, frozenset({"gemma-a"}))},
        ),
    ],
)
def test_key_secrets_become_grants_by_the_keys_sha256(
    secrets: list[dict[str, Any]], expected: dict[str, Grant]
) -> None:
    assert grants_from(secrets) == expected


def test_a_grant_never_holds_the_key() -> None:
    grants = grants_from([key_secret(key=b"sk-very-secret")])
    assert "sk-very-secret" not in repr(grants)
    assert base64.b64encode(b"sk-very-secret").decode() not in repr(grants)


class Recorded:
    """Stands in for the RoutingTable and KeyRing: records every replace."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def replace(self, value: Any) -> None:
        self.calls.append(value)


def listing(*items: dict[str, Any], version: str = "7") -> SimpleNamespace:
    """A list response as the client returns it without preloading."""
    return SimpleNamespace(
        data=json.dumps({"metadata": {"resourceVersion": version}, "items": list(items)})
    )


def discovery(with_keys: bool = True) -> tuple[Discovery, Recorded, Recorded]:
    """A Discovery of one namespace over fakes (no thread, no API server)."""
    table, keys = Recorded(), Recorded()
    found = Discovery(
        client.ApiClient(),
        table,  # type: ignore[arg-type]
        keys if with_keys else None,  # type: ignore[arg-type]
        namespace=NS,
        port=PORT,
    )
    return found, table, keys


def test_discovery_publishes_once_models_and_pods_are_listed_and_only_changes() -> None:
    found, table, keys = discovery()
    mds, pods, secrets = found.sources
    assert (mds.args, pods.selector, secrets.selector) == (
        ("modeldeploy.io", "v1alpha1", NS, "modeldeployments"),
        "app.kubernetes.io/managed-by=modeldeploy",
        "modeldeploy.io/gateway-api-key=true",
    )
    mds.call = lambda *args, **kwargs: listing(md())
    pods.call = lambda *args, **kwargs: listing()
    secrets.call = lambda *args, **kwargs: listing(key_secret())
    assert found._list(mds) == "7"
    assert table.calls == []  # no target before the pods are known
    found._list(pods)
    assert table.calls == [[ModelTarget("gemma", NS, "gemma", ())]]
    assert not found.wait_ready(0)
    found._list(secrets)
    assert found.wait_ready(0)
    assert keys.calls == [{sha(b"sk-alice"): Grant("gateway/alice", ANY, ANY)}]
    # Nothing is kept of the key but its digest.
    assert "c2stYWxpY2U=" not in repr(secrets.items)

    found._apply(pods, {"type": "ADDED", "object": pod(ready=False)})
    assert len(table.calls) == 1  # an unready pod changes no target
    found._apply(pods, {"type": "MODIFIED", "object": pod()})
    assert table.calls[-1] == [ModelTarget("gemma", NS, "gemma", (backend(),))]
    found._apply(pods, {"type": "DELETED", "object": pod()})
    assert table.calls[-1] == [ModelTarget("gemma", NS, "gemma", ())]
    found._apply(mds, {"type": "DELETED", "object": md()})
    assert table.calls[-1] == []
    found._apply(secrets, {"type": "DELETED", "object": key_secret()})
    assert keys.calls[-1] == {}


def test_a_relist_replaces_what_the_watch_missed() -> None:
    found, table, _ = discovery(with_keys=False)
    mds, pods = found.sources
    mds.call = lambda *args, **kwargs: listing(md("a"), md("b"))
    pods.call = lambda *args, **kwargs: listing()
    found._list(mds)
    found._list(pods)
    assert found.wait_ready(0)
    assert [t.model for t in table.calls[-1]] == ["a", "b"]
    mds.call = lambda *args, **kwargs: listing(md("b"), version="9")  # "a" went meanwhile
    assert found._list(mds) == "9"
    assert [t.model for t in table.calls[-1]] == ["b"]


def test_the_table_and_key_ring_of_the_gateway_take_what_discovery_hands_on() -> None:
    table, keys = RoutingTable(), KeyRing(required=True)
    found = Discovery(client.ApiClient(), table, keys, namespace=NS, port=PORT)
    mds, pods, secrets = found.sources
    mds.call = lambda *args, **kwargs: listing(md())
    pods.call = lambda *args, **kwargs: listing(pod())
    secrets.call = lambda *args, **kwargs: listing(key_secret())
    for source in found.sources:
        found._list(source)
    target = table.get("gemma")
    assert target is not None and target.backends == (backend(),)
    grant = keys.lookup("sk-alice")
    assert grant is not None and grant.name == "gateway/alice"
    assert keys.lookup("sk-bob") is None


def test_discovery_of_every_namespace_lists_cluster_wide() -> None:
    found = Discovery(client.ApiClient(), RoutingTable(), None)
    mds, pods = found.sources
    assert mds.args == ("modeldeploy.io", "v1alpha1", "modeldeployments")
    assert pods.args == ()
    assert mds.call.__name__ == "list_cluster_custom_object"
    assert pods.call.__name__ == "list_pod_for_all_namespaces"


def test_key_secrets_are_read_only_in_the_keys_namespace() -> None:
    # The chart's gateway may list Secrets in its release namespace only.
    found = Discovery(client.ApiClient(), RoutingTable(), KeyRing(), keys_namespace="gateway")
    mds, pods, secrets = found.sources
    assert mds.call.__name__ == "list_cluster_custom_object"
    assert pods.call.__name__ == "list_pod_for_all_namespaces"
    assert (secrets.call.__name__, secrets.args) == ("list_namespaced_secret", ("gateway",))
    found = Discovery(client.ApiClient(), RoutingTable(), KeyRing(), namespace=NS)
    assert found.sources[2].args == (NS,)  # default: the routed namespace's
    found = Discovery(client.ApiClient(), RoutingTable(), KeyRing())
    assert found.sources[2].call.__name__ == "list_secret_for_all_namespaces"


NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC)


def test_the_demand_lease_names_the_deployment_when_and_how_many() -> None:
    assert micro_time(NOW) == "2026-01-01T12:00:00.250000Z"
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    assert micro_time(NOW.astimezone(plus_one)) == "2026-01-01T12:00:00.250000Z"
    assert demand_lease(NS, "gemma", "gateway-7d9f-x2", NOW, 3) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "gemma-demand",
            "namespace": NS,
            "labels": {"modeldeploy.io/model-deployment": "gemma", "modeldeploy.io/demand": "true"},
            "annotations": {"modeldeploy.io/held": "3"},
        },
        "spec": {
            "holderIdentity": "gateway-7d9f-x2",
            "renewTime": "2026-01-01T12:00:00.250000Z",
            "leaseDurationSeconds": 30,
        },
    }


def test_demand_is_signalled_at_most_once_per_interval_per_deployment() -> None:
    limiter = Limiter(3.0)
    a, b = (NS, "a"), (NS, "b")
    assert [limiter.due(a, t) for t in (0.0, 1.0, 2.9, 3.0, 4.0)] == [
        True, False, False, True, False,
    ]  # fmt: skip
    assert limiter.due(b, 1.0)  # another deployment is signalled on its own clock
    limiter.forget(a)  # the write failed: the next request signals again
    assert limiter.due(a, 4.5)


class FakeLeases:
    """CoordinationV1Api's Lease calls over one dict; ``race``: another replica creates the
    Lease between our patch and our create."""

    def __init__(self, race: bool = False) -> None:
        self.race = race
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.held: list[str] = []  # the count each write that took wrote

    def patch_namespaced_lease(
        self, name: str, namespace: str, body: dict[str, Any], **_: Any
    ) -> None:
        self.calls.append("patch")
        if (namespace, name) not in self.stored:
            raise client.ApiException(status=404)
        stored = self.stored[namespace, name]
        for field in ("labels", "annotations"):
            stored["metadata"].setdefault(field, {}).update(body["metadata"][field])
        stored["spec"].update(body["spec"])
        self.held.append(body["metadata"]["annotations"]["modeldeploy.io/held"])

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        self.calls.append("create")
        self.held.append(body["metadata"]["annotations"]["modeldeploy.io/held"])
        key = (namespace, body["metadata"]["name"])
        if self.race:
            self.stored[key] = copy.deepcopy(body)
            raise client.ApiException(status=409)
        self.stored[key] = copy.deepcopy(body)


def waker(leases: FakeLeases, clock: list[float]) -> LeaseWaker:
    """A LeaseWaker over fakes, on a clock the test moves."""
    found = LeaseWaker(
        client.ApiClient(), "gateway-0", interval=3.0, clock=lambda: clock[0],
        wall=lambda: NOW,
    )  # fmt: skip
    found.leases = leases  # type: ignore[assignment]
    return found


def flush(wake: LeaseWaker) -> None:
    """Wait for the writes the waker has queued."""
    wake._executor.submit(lambda: None).result(timeout=10)


@pytest.mark.parametrize(
    ("race", "calls"),
    [(False, ["patch", "create", "patch"]), (True, ["patch", "create", "patch", "patch"])],
)
def test_wake_creates_the_lease_then_patches_it_at_most_once_per_interval(
    race: bool, calls: list[str]
) -> None:
    leases, clock = FakeLeases(race), [100.0]
    wake = waker(leases, clock)
    target = ModelTarget("gemma-a", NS, "gemma", (), scale_from_zero=True)
    try:
        wake(target, 1)
        flush(wake)
        wake(ModelTarget("gemma-sql", NS, "gemma", (), scale_from_zero=True), 2)  # same one
        clock[0] += 3.0
        wake(target, 2)
        flush(wake)
    finally:
        wake.close()
    assert leases.calls == calls
    lease = leases.stored[NS, "gemma-demand"]
    assert lease["metadata"]["labels"]["modeldeploy.io/demand"] == "true"
    assert lease["metadata"]["annotations"] == {"modeldeploy.io/held": "2"}
    assert lease["spec"]["holderIdentity"] == "gateway-0"
    assert leases.held[0] == "1" and leases.held[-1] == "2"  # created with 1, patched with 2


def test_the_count_follows_on_the_next_due_write() -> None:
    leases, clock = FakeLeases(), [100.0]
    wake = waker(leases, clock)
    target = ModelTarget("gemma", NS, "gemma", (), scale_from_zero=True)
    try:
        wake(target, 1)
        flush(wake)
        for held in (2, 5, 4):  # inside the interval: kept, not written
            clock[0] += 0.5
            wake(target, held)
        flush(wake)
        assert leases.held == ["1"]  # the create
        clock[0] += 2.0
        wake(target, 6)
        flush(wake)
        clock[0] += 3.0
        wake(target, 0)  # none held any more: the operator stops counting them
        flush(wake)
    finally:
        wake.close()
    assert leases.held == ["1", "6", "0"]
    assert leases.stored[NS, "gemma-demand"]["metadata"]["annotations"] == {
        "modeldeploy.io/held": "0"
    }


def test_a_write_waiting_its_turn_carries_the_latest_count() -> None:
    class Slow(FakeLeases):
        """The first write blocks until the test lets it go."""

        def __init__(self) -> None:
            super().__init__()
            self.entered, self.go = threading.Event(), threading.Event()

        def patch_namespaced_lease(self, name: str, *args: Any, **kwargs: Any) -> None:
            if name == "other-demand" and not self.go.is_set():
                self.entered.set()
                assert self.go.wait(10)
            super().patch_namespaced_lease(name, *args, **kwargs)

    leases, clock = Slow(), [100.0]
    wake = waker(leases, clock)
    gemma = ModelTarget("gemma", NS, "gemma", (), scale_from_zero=True)
    try:
        wake(ModelTarget("other", NS, "other", (), scale_from_zero=True), 1)
        assert leases.entered.wait(10)  # the waker's thread is busy with another Lease
        wake(gemma, 1)  # due: queued behind it
        wake(gemma, 3)  # not due, but the queued write has not gone yet
        leases.go.set()
        flush(wake)
    finally:
        wake.close()
    assert leases.stored[NS, "gemma-demand"]["metadata"]["annotations"] == {
        "modeldeploy.io/held": "3"
    }


def test_a_failed_signal_is_retried_by_the_next_request() -> None:
    class Down(FakeLeases):
        def patch_namespaced_lease(self, *args: Any, **kwargs: Any) -> None:
            self.calls.append("patch")
            raise client.ApiException(status=503, reason="Service Unavailable")

    leases, clock = Down(), [100.0]
    wake = waker(leases, clock)
    target = ModelTarget("gemma", NS, "gemma", (), scale_from_zero=True)
    try:
        wake(target, 1)
        flush(wake)
        wake(target, 1)  # at once: not held back by the failed write
        flush(wake)
        wake(target, 2)  # a third failure is not held back either
        flush(wake)
    finally:
        wake.close()
    assert leases.calls == ["patch", "patch", "patch"]


class FakeWatchResponse:
    """A watch response as urllib3 streams it: one JSON event a line; with no events left it
    waits for ``released`` (an idle watch), then ends."""

    def __init__(self, events: list[dict[str, Any]], released: threading.Event) -> None:
        self.events, self.released = events, released

    def stream(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        for event in self.events:
            yield (json.dumps(event) + "\n").encode()
        if not self.events:
            self.released.wait(10)

    def close(self) -> None:
        """Nothing to close."""

    def release_conn(self) -> None:
        """Nothing to release."""


class FakeList:
    """A list call of the client: scripted lists and watches, recording the watches' options."""

    def __init__(
        self,
        lists: list[SimpleNamespace],
        watches: list[list[dict[str, Any]]],
        after: threading.Event | None = None,
    ) -> None:
        self.lists, self.watches, self.after = lists, watches, after
        self.watched: list[dict[str, Any]] = []
        self.listed = threading.Event()
        self.released = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch"):
            self.watched.append(kwargs)
            events = self.watches.pop(0) if self.watches else []
            return FakeWatchResponse(events, self.released)
        if self.after is not None:
            self.after.wait(10)  # list only once that other kind has been listed
        self.listed.set()
        return self.lists.pop(0) if len(self.lists) > 1 else self.lists[0]


def test_discovery_watches_from_the_list_and_lists_again_when_the_version_is_gone() -> None:
    table = RoutingTable()
    seen: list[list[str]] = []
    table.subscribe(lambda: seen.append([t.model for t in table.targets()]))
    found = Discovery(client.ApiClient(), table, None, namespace=NS, port=PORT)
    mds, pods = found.sources
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}  # fmt: skip
    pods.call = pod_calls = FakeList([listing(version="3")], [])
    mds.call = md_calls = FakeList(
        [listing(md("a"), version="1"), listing(md("c"), version="5")],
        [[{"type": "ADDED", "object": md("b")}, {"type": "BOOKMARK", "object": {}}, gone]],
        after=pod_calls.listed,
    )
    found.start()
    try:
        assert found.wait_ready(10)
        wait = time.monotonic() + 10
        while seen[-1:] != [["c"]] and time.monotonic() < wait:
            time.sleep(0.01)
    finally:
        found.stop(timeout=0)  # stopped: the released watches end and are not resumed
        md_calls.released.set()
        pod_calls.released.set()
        found.stop()
    assert seen[:1] == [["a"]] and ["a", "b"] in seen and seen[-1] == ["c"], seen
    assert md_calls.watched[0]["resource_version"] == "1"
    assert md_calls.watched[0]["allow_watch_bookmarks"] is True
    assert md_calls.watched[1]["resource_version"] == "5"  # from the second list
    assert pod_calls.watched[0]["label_selector"] == "app.kubernetes.io/managed-by=modeldeploy"
    assert not any(thread.is_alive() for thread in found._threads)
