"""Free capacity: what each node has left for one more pod, and what this operator holds.

The scheduler admits a pod to a node when the node's allocatable minus the requests of the
pods bound to it (not yet Succeeded or Failed) covers the pod's requests (the
``NodeResourcesFit`` plugin). ``free_by_node`` computes the same from the operator's pod
index (``observed.pod_usage``). Pods the operator has asked for but the scheduler has not
bound yet are invisible there, so a ``ReservationBook`` keeps, per ModelDeployment, the
nodes and per-replica requests of its last plan; replicas not bound yet are placed
first-fit on their nodes before another ModelDeployment is planned. The book's lock makes
"read the free capacity, plan, record" one step, so two passes planning at once cannot
both take the last GPU. Pure: no I/O (the book is memory only).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from modeldeploy.nodes import GPU_RESOURCE, NodeInfo
from modeldeploy.quantity import cpu_millis, parse_quantity, quantity_bytes

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment

# Pod phases whose pods no longer hold node resources (the scheduler skips them too).
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class Resources:
    """An amount of the three resources placement plans with."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpus - other.gpus,
        )

    def times(self, count: int) -> Resources:
        """``count`` of this amount."""
        return Resources(self.cpu_millis * count, self.memory_bytes * count, self.gpus * count)

    def copies_within(self, free: Resources) -> int:
        """How many pods requesting this amount ``free`` admits."""
        counts = [
            free.cpu_millis // self.cpu_millis if self.cpu_millis > 0 else None,
            free.memory_bytes // self.memory_bytes if self.memory_bytes > 0 else None,
            free.gpus // self.gpus if self.gpus > 0 else None,
        ]
        known = [max(0, c) for c in counts if c is not None]
        if not known:
            return 0 if min(free.cpu_millis, free.memory_bytes, free.gpus) < 0 else 1_000_000
        return min(known)

    def as_dict(self) -> dict[str, int]:
        """camelCase JSON (``modeldeploy plan --alternatives``)."""
        return {"cpuMillis": self.cpu_millis, "memoryBytes": self.memory_bytes, "gpus": self.gpus}


def requests_of(resources: Mapping[str, object]) -> Resources:
    """CPU, memory and GPUs of a ``requests`` mapping (Kubernetes quantities)."""
    return Resources(
        cpu_millis=cpu_millis(str(resources.get("cpu", 0))),
        memory_bytes=quantity_bytes(str(resources.get("memory", 0))),
        gpus=int(parse_quantity(str(resources.get(GPU_RESOURCE, 0)))),
    )


def _container_requests(container: Mapping[str, object]) -> Resources:
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return Resources()
    # A request left out where a limit is set defaults to the limit (API defaulting).
    limits = resources.get("limits")
    requests = resources.get("requests")
    merged = {
        **(limits if isinstance(limits, Mapping) else {}),
        **(requests if isinstance(requests, Mapping) else {}),
    }
    return requests_of(merged)


def pod_requests(spec: Mapping[str, object]) -> Resources:
    """A pod's effective request, as the scheduler counts it.

    The sum of its containers and of its restartable (sidecar) init containers, or the
    largest plain init container (plus the sidecars started before it) where that is more,
    plus ``spec.overhead`` (Kubernetes "Resource sharing within containers").
    """
    total = Resources()
    for container in _containers(spec, "containers"):
        total += _container_requests(container)
    sidecars = Resources()
    init_peak = Resources()
    for container in _containers(spec, "initContainers"):
        requested = _container_requests(container)
        if container.get("restartPolicy") == "Always":
            sidecars += requested
            continue
        with_sidecars = requested + sidecars
        init_peak = Resources(
            max(init_peak.cpu_millis, with_sidecars.cpu_millis),
            max(init_peak.memory_bytes, with_sidecars.memory_bytes),
            max(init_peak.gpus, with_sidecars.gpus),
        )
    running = total + sidecars
    effective = Resources(
        max(running.cpu_millis, init_peak.cpu_millis),
        max(running.memory_bytes, init_peak.memory_bytes),
        max(running.gpus, init_peak.gpus),
    )
    overhead = spec.get("overhead")
    return effective + (requests_of(overhead) if isinstance(overhead, Mapping) else Resources())


def _containers(spec: Mapping[str, object], key: str) -> Iterator[Mapping[str, object]]:
    items = spec.get(key)
    if isinstance(items, list):
        yield from (item for item in items if isinstance(item, Mapping))


@dataclass(frozen=True)
class PodUsage:
    """A bound pod's node, its ModelDeployment (None for any other pod) and its request."""

    node: str
    owner: Key | None
    requests: Resources


def allocatable(node: NodeInfo) -> Resources:
    """What the node offers to pods."""
    return Resources(node.cpu_millis, node.memory_bytes, node.gpus)


@dataclass(frozen=True)
class Reservation:
    """One ModelDeployment's last plan: the nodes its pods may take and what each asks."""

    nodes: tuple[str, ...]
    per_replica: Resources
    replicas: int


@dataclass
class ReservationBook:
    """The plans this operator made, per ModelDeployment (memory only, rebuilt by passes)."""

    _reservations: dict[Key, Reservation] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def planning(self) -> Iterator[ReservationBook]:
        """Hold the book while one pass reads the free capacity, plans and records."""
        with self._lock:
            yield self

    def record(self, key: Key, reservation: Reservation) -> None:
        """Remember a ModelDeployment's plan."""
        self._reservations[key] = reservation

    def forget(self, key: Key) -> None:
        """Drop a ModelDeployment that is gone or no longer serves."""
        self._reservations.pop(key, None)

    def others(self, key: Key) -> dict[Key, Reservation]:
        """Every reservation but ``key``'s."""
        return {k: r for k, r in self._reservations.items() if k != key}


def free_by_node(
    nodes: Iterable[NodeInfo],
    usage: Iterable[PodUsage],
    own: Key | None = None,
    reservations: Mapping[Key, Reservation] | None = None,
) -> dict[str, Resources]:
    """Each node's allocatable minus the bound pods' requests and others' unbound replicas.

    The pods of ``own`` (the ModelDeployment being planned) are left out: its own replicas
    move with its plan. ``reservations`` are the other ModelDeployments' last plans; the
    replicas of each that are not bound yet are placed first-fit on its nodes.
    """
    free = {node.name: allocatable(node) for node in nodes}
    bound: dict[Key, int] = {}
    for pod in usage:
        if pod.owner is not None:
            bound[pod.owner] = bound.get(pod.owner, 0) + 1
        if (own is not None and pod.owner == own) or pod.node not in free:
            continue
        free[pod.node] -= pod.requests
    for key, reservation in sorted((reservations or {}).items()):
        pending = max(0, reservation.replicas - bound.get(key, 0))
        for name in reservation.nodes:
            if pending == 0:
                break
            if name not in free:
                continue
            fits = min(pending, reservation.per_replica.copies_within(free[name]))
            free[name] -= reservation.per_replica.times(fits)
            pending -= fits
    return free


def hosted_replicas(
    per_replica: Resources, free: Mapping[str, Resources], nodes: Sequence[str]
) -> int:
    """How many replicas of ``per_replica`` the ``nodes`` take, given their free capacity."""
    return sum(per_replica.copies_within(free[name]) for name in nodes if name in free)


def total_free(free: Mapping[str, Resources], nodes: Sequence[str]) -> Resources:
    """The free capacity of ``nodes`` together."""
    total = Resources()
    for name in nodes:
        if name in free:
            total += free[name]
    return total
