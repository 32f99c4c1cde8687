"""The gateway's pure parts: the routing table, the balancer, prompt prefixes and API keys."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from typing import Any

import pytest

from modeldeploy.gateway.keys import Grant, KeyRing, key_digest
from modeldeploy.gateway.routing import (
    COOL_DOWN_SECONDS,
    MAX_COOL_DOWN_SECONDS,
    Backend,
    Balancer,
    ModelTarget,
    RoutingTable,
    prompt_prefix,
)

pytestmark = pytest.mark.timeout(60)

A, B, C = (Backend(f"team/pod-{n}", f"10.0.0.{i}", 8080) for i, n in enumerate("abc", 1))


def target(*backends: Backend, affinity: Any = "least-inflight", model: str = "m") -> ModelTarget:
    return ModelTarget(model, "team", "dep", backends, affinity)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the routing table -----------------------------------------------------------------


def test_the_table_is_replaced_whole_and_tells_subscribers() -> None:
    table = RoutingTable([target(A, model="old")])
    calls: list[str] = []
    table.subscribe(lambda: calls.append(threading.current_thread().name))
    first, second = target(A, model="zeta"), target(B, model="alpha")
    replacer = threading.Thread(target=table.replace, args=([first, second],), name="discovery")
    replacer.start()
    replacer.join(10)
    assert calls == ["discovery"]
    assert table.get("old") is None
    assert table.get("zeta") == first
    assert [t.model for t in table.targets()] == ["alpha", "zeta"]


def test_a_name_given_twice_keeps_its_first_target() -> None:
    first, again = target(A, model="m"), ModelTarget("m", "other", "dep", (B,))
    assert RoutingTable([first, again]).get("m") == first


# ---- least in-flight -------------------------------------------------------------------


def test_least_inflight_picks_the_least_loaded_and_ties_take_turns() -> None:
    balancer = Balancer()
    served = target(A, B, C)
    for backend in (A, A, B):
        balancer.begin(backend)
    assert balancer.pick(served, None) == C
    balancer.begin(C)
    assert balancer.pick(served, None) in (B, C)
    assert {balancer.pick(served, None) for _ in range(4)} == {B, C}  # tied: both served
    balancer.end(A)
    balancer.end(A)
    assert balancer.pick(served, None) == A
    assert balancer.inflight() == {B.name: 1, C.name: 1}


def test_pick_honours_exclude_and_an_empty_target() -> None:
    balancer = Balancer()
    assert balancer.pick(target(A, B), None, frozenset({A.name})) == B
    assert balancer.pick(target(A, B), None, frozenset({A.name, B.name})) is None
    assert balancer.pick(target(), None) is None


# ---- prefix affinity -------------------------------------------------------------------


def test_a_prefix_stays_on_one_backend() -> None:
    balancer, served = Balancer(), target(A, B, C, affinity="prefix")
    picks = set()
    for _ in range(20):
        backend = balancer.pick(served, "You are a helpful assistant.")
        assert backend is not None
        balancer.begin(backend)
        balancer.end(backend)
        picks.add(backend)
    assert len(picks) == 1


def test_prefixes_spread_over_the_backends() -> None:
    balancer, served = Balancer(), target(A, B, C, affinity="prefix")
    owners = Counter(balancer.pick(served, f"conversation {i}") for i in range(300))
    assert set(owners) == {A, B, C}
    assert min(owners.values()) > 50  # 256 virtual nodes each: roughly a third apiece


def test_removing_a_backend_moves_only_the_prefixes_it_held() -> None:
    balancer = Balancer()
    prefixes = [f"prompt {i}" for i in range(200)]
    before = {p: balancer.pick(target(A, B, C, affinity="prefix"), p) for p in prefixes}
    after = {p: balancer.pick(target(A, B, affinity="prefix"), p) for p in prefixes}
    assert all(after[p] == before[p] for p in prefixes if before[p] != C)


@pytest.mark.parametrize(
    ("owner_load", "other_load", "stays"),
    [
        # capacity = ceil(1.25 x (total in flight + 1) / 2 backends)
        (0, 0, True),  # capacity 1: 0 + 1 fits
        (1, 0, True),  # capacity 2: 1 + 1 fits
        (2, 0, False),  # capacity 2: 2 + 1 does not: spills
        (2, 2, True),  # capacity 4: 2 + 1 fits
        (4, 1, False),  # capacity 4: 4 + 1 does not
    ],
)
def test_bounded_loads_spill_an_overloaded_owner(
    owner_load: int, other_load: int, stays: bool
) -> None:
    balancer, served = Balancer(), target(A, B, affinity="prefix")
    owner = balancer.pick(served, "shared prefix")
    assert owner is not None
    other = B if owner == A else A
    for backend, load in ((owner, owner_load), (other, other_load)):
        for _ in range(load):
            balancer.begin(backend)
    assert balancer.pick(served, "shared prefix") == (owner if stays else other)


def test_the_request_affinity_overrides_the_target_and_no_prefix_is_least_inflight() -> None:
    balancer = Balancer()
    prefixed, plain = target(A, B, affinity="prefix"), target(A, B)
    owner = balancer.pick(prefixed, "abc")
    assert owner is not None
    balancer.begin(owner)  # 1 in flight, within the bound: the hash keeps it
    idle = B if owner == A else A
    assert {balancer.pick(plain, "abc", affinity="prefix") for _ in range(4)} == {owner}
    assert {balancer.pick(plain, "abc") for _ in range(4)} == {idle}
    assert balancer.pick(prefixed, "abc", affinity="least-inflight") == idle
    assert balancer.pick(prefixed, None) == idle


# ---- ejection --------------------------------------------------------------------------


def test_a_failed_backend_is_ejected_for_a_doubling_cool_down() -> None:
    clock = Clock()
    balancer, served = Balancer(clock), target(A, B)
    for cool_down in (10.0, 20.0, 40.0, 60.0, 60.0):
        balancer.failed(A)
        ejected_at = clock.now
        assert {balancer.pick(served, None) for _ in range(4)} == {B}
        clock.now = ejected_at + cool_down - 0.001
        assert {balancer.pick(served, None) for _ in range(4)} == {B}
        clock.now = ejected_at + cool_down
        assert {balancer.pick(served, None) for _ in range(4)} == {A, B}  # retried
    assert (COOL_DOWN_SECONDS, MAX_COOL_DOWN_SECONDS) == (10.0, 60.0)
    balancer.succeeded(A)
    balancer.failed(A)
    clock.now += COOL_DOWN_SECONDS
    assert A in {balancer.pick(served, None) for _ in range(4)}  # back to the first cool-down


def test_ejection_never_empties_a_model_and_is_forgotten_with_the_pod() -> None:
    clock = Clock()
    balancer = Balancer(clock)
    balancer.failed(A)
    balancer.failed(B)
    assert {balancer.pick(target(A, B), None) for _ in range(4)} == {A, B}
    balancer.retain([B.name])  # A left the table
    assert {balancer.pick(target(A, C), None) for _ in range(4)} == {A, C}
    assert {balancer.pick(target(B, C), None) for _ in range(4)} == {C}


# ---- prompt prefixes -------------------------------------------------------------------

LONG = "x" * 150


@pytest.mark.parametrize(
    ("path", "body", "prefix"),
    [
        ("/v1/completions", {"prompt": "Once upon"}, "Once upon"),
        ("/v1/completions", {"prompt": ["first", "second"]}, "first"),
        ("/v1/completions", {"prompt": [1, 2, 3]}, None),  # token ids
        ("/v1/completions", {"prompt": LONG}, "x" * 100),
        ("/v1/completions", {}, None),
        ("/v1/completions", {"prompt": ""}, None),
        ("/v1/embeddings", {"input": "embed me"}, "embed me"),
        ("/v1/embeddings", {"input": ["a", "b"]}, "a"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "Hi"}]},
            "Be brief.\nHi",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:"}},
                {"type": "text", "text": "What is this?"}]}]},
            "What is this?",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, "x" * 100),
        ("/v1/chat/completions", {"messages": "not a list"}, None),
        ("/v1/chat/completions", {"messages": [7, {"content": None}]}, None),
        ("/v1/models", {"prompt": "x"}, None),
    ],
)  # fmt: skip
def test_prompt_prefix(path: str, body: dict[str, Any], prefix: str | None) -> None:
    assert prompt_prefix(path, body) == prefix


# ---- API keys --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grant", "allowed"),
    [
        (Grant("any"), {"alpha", "beta", "gamma"}),
        (Grant("ns", namespaces=frozenset({"team-a"})), {"alpha", "beta"}),
        (Grant("models", models=frozenset({"beta", "gamma"})), {"beta", "gamma"}),
        (Grant("both", frozenset({"team-a"}), frozenset({"beta", "gamma"})), {"beta"}),
    ],
)
def test_a_grant_allows_its_namespaces_and_models(grant: Grant, allowed: set[str]) -> None:
    targets = [
        ModelTarget("alpha", "team-a", "a", ()),
        ModelTarget("beta", "team-a", "b", ()),
        ModelTarget("gamma", "team-b", "g", ()),
    ]
    assert {t.model for t in targets if grant.allows(t)} == allowed


def test_the_key_ring_finds_grants_by_digest_only() -> None:
    ring = KeyRing()
    assert not ring.enforced and not ring.required
    assert ring.lookup("sk-one") is None
    one, two = Grant("key-one"), Grant("key-two", models=frozenset({"m"}))
    ring.replace({key_digest("sk-one"): one, key_digest("sk-two").upper(): two})
    assert ring.enforced
    assert (ring.lookup("sk-one"), ring.lookup("sk-two")) == (one, two)
    assert ring.lookup("sk-three") is None
    assert ring.lookup("") is None
    assert key_digest("sk-one") == hashlib.sha256(b"sk-one").hexdigest()
    ring.replace({})
    assert not ring.enforced and ring.lookup("sk-one") is None
    assert KeyRing(required=True).enforced
