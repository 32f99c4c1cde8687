"""Where the gateway sends a request: its targets, the routing table, and the balancer.

A ``ModelTarget`` is one served model name and the Ready pods (``Backend``) that serve it;
the ``RoutingTable`` holds them by name, replaced whole by discovery. The ``Balancer`` keeps
per-backend in-flight counts and failure ejections and picks a backend: least in-flight, or
consistent hashing with bounded loads over the prompt's first characters, so that repeated
prefixes land where their KV cache is. Pure: no I/O; the clock is injected.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

Affinity = Literal["least-inflight", "prefix"]
AFFINITIES: frozenset[str] = frozenset(get_args(Affinity))

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
INFERENCE_PATHS = (CHAT_PATH, COMPLETIONS_PATH, EMBEDDINGS_PATH)

PREFIX_CHARS = 100
VIRTUAL_NODES = 256
LOAD_BOUND = 1.25
COOL_DOWN_SECONDS = 10.0
MAX_COOL_DOWN_SECONDS = 60.0


@dataclass(frozen=True)
class Backend:
    """One Ready pod: ``name`` is ``namespace/pod``."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class ModelTarget:
    """One served model name, the ModelDeployment serving it and its Ready pods."""

    model: str
    namespace: str
    deployment: str
    backends: tuple[Backend, ...]
    affinity: Affinity = "least-inflight"
    scale_from_zero: bool = False  # autoscaling minReplicas 0: hold requests while no pod


class RoutingTable:
    """The targets by model name; thread-safe, replaced whole by discovery."""

    def __init__(self, targets: Iterable[ModelTarget] = ()) -> None:
        self._lock = threading.Lock()
        self._targets: dict[str, ModelTarget] = {}
        self._subscribers: list[Callable[[], None]] = []
        self.replace(targets)

    def replace(self, targets: Iterable[ModelTarget]) -> None:
        """Swap in ``targets`` (a name given twice keeps its first), then tell subscribers."""
        by_model: dict[str, ModelTarget] = {}
        for target in targets:
            by_model.setdefault(target.model, target)
        with self._lock:
            self._targets = by_model
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback()

    def get(self, model: str) -> ModelTarget | None:
        """The target serving ``model``, if any."""
        with self._lock:
            return self._targets.get(model)

    def targets(self) -> list[ModelTarget]:
        """Every target, by model name."""
        with self._lock:
            return sorted(self._targets.values(), key=lambda target: target.model)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every replace, on the replacing thread."""
        with self._lock:
            self._subscribers.append(callback)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]  # a batch: its first prompt
    return None


def _message_texts(messages: Any) -> Iterator[str]:
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            yield content
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]


def prompt_prefix(path: str, body: Mapping[str, Any]) -> str | None:
    """The prompt's first ``PREFIX_CHARS`` characters (messages in order for chat), if any."""
    if path == CHAT_PATH:
        text = ""
        for piece in _message_texts(body.get("messages")):
            text = f"{text}\n{piece}" if text else piece
            if len(text) >= PREFIX_CHARS:
                break
    elif path == COMPLETIONS_PATH:
        text = _text(body.get("prompt")) or ""
    elif path == EMBEDDINGS_PATH:
        text = _text(body.get("input")) or ""
    else:
        return None
    return text[:PREFIX_CHARS] or None


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=256)
def _ring(names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    points = sorted((_hash(f"{name}#{i}"), name) for name in names for i in range(VIRTUAL_NODES))
    return tuple(point for point, _ in points), tuple(name for _, name in points)


@dataclass(frozen=True)
class _Ejection:
    failures: int
    until: float


class Balancer:
    """In-flight counts and failure ejections per backend; used from one thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._inflight: dict[str, int] = {}
        self._ejections: dict[str, _Ejection] = {}
        self._turns = itertools.count()

    def pick(
        self,
        target: ModelTarget,
        prefix: str | None,
        exclude: frozenset[str] = frozenset(),
        affinity: Affinity | None = None,
    ) -> Backend | None:
        """A backend for one request, none of ``exclude``; ``affinity`` overrides the target's.

        Ejected backends are passed over while another is left; when every candidate is
        ejected, they are all candidates again, so ejection never empties a model.
        """
        candidates = [b for b in target.backends if b.name not in exclude]
        now = self._clock()
        healthy = [b for b in candidates if self._ejected_until(b.name) <= now]
        eligible = healthy or candidates
        if not eligible:
            return None
        if (affinity or target.affinity) == "prefix" and prefix is not None:
            names = tuple(sorted(b.name for b in target.backends))
            chosen = self._bounded_hash(names, {b.name: b for b in eligible}, prefix)
            if chosen is not None:
                return chosen
        return self._least_inflight(eligible)

    def _least_inflight(self, backends: list[Backend]) -> Backend:
        fewest = min(self.inflight_of(b.name) for b in backends)
        tied = [b for b in backends if self.inflight_of(b.name) == fewest]
        return tied[next(self._turns) % len(tied)]  # ties take turns

    def _bounded_hash(
        self, names: tuple[str, ...], eligible: dict[str, Backend], prefix: str
    ) -> Backend | None:
        total = sum(self.inflight_of(name) for name in eligible)
        capacity = math.ceil(LOAD_BOUND * (total + 1) / len(eligible))
        points, owners = _ring(names)
        start = bisect.bisect(points, _hash(prefix))
        for step in range(len(owners)):
            name = owners[(start + step) % len(owners)]
            if name in eligible and self.inflight_of(name) + 1 <= capacity:
                return eligible[name]
        return None

    def _ejected_until(self, name: str) -> float:
        ejection = self._ejections.get(name)
        return ejection.until if ejection else -math.inf

    def begin(self, backend: Backend) -> None:
        """Count a request sent to ``backend``."""
        self._inflight[backend.name] = self._inflight.get(backend.name, 0) + 1

    def end(self, backend: Backend) -> None:
        """Count a request to ``backend`` as finished."""
        left = self._inflight.get(backend.name, 0) - 1
        if left > 0:
            self._inflight[backend.name] = left
        else:
            self._inflight.pop(backend.name, None)

    def failed(self, backend: Backend) -> None:
        """Eject ``backend`` for a cool-down that doubles with each failure in a row."""
        previous = self._ejections.get(backend.name)
        failures = previous.failures + 1 if previous else 1
        doublings = min(failures - 1, 8)  # 10 s x 2**8 is far past the cap already
        cool_down = min(COOL_DOWN_SECONDS * 2**doublings, MAX_COOL_DOWN_SECONDS)
        self._ejections[backend.name] = _Ejection(failures, self._clock() + cool_down)

    def succeeded(self, backend: Backend) -> None:
        """Clear ``backend``'s failures."""
        self._ejections.pop(backend.name, None)

    def inflight_of(self, name: str) -> int:
        """Requests in flight to the backend named ``name``."""
        return self._inflight.get(name, 0)

    def inflight(self) -> dict[str, int]:
        """Requests in flight per backend name (only those with any)."""
        return dict(self._inflight)

    def retain(self, names: Iterable[str]) -> None:
        """Forget the failures of backends not in ``names`` (pods that left the table)."""
        keep = set(names)
        self._ejections = {n: e for n, e in self._ejections.items() if n in keep}
