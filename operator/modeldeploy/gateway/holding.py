"""Scale from zero: requests held for a model at zero until a Ready pod joins the table.

``HoldQueue`` owns the bounded per-model queue, the wake calls, the hold timeout, and the
wake latency (first held request to first backend). A wake call names the target and the
requests held for its ModelDeployment (all its served names together): at once for the
first, then at most every ``wake_interval`` seconds per ModelDeployment while any waits,
each with the count of that moment, and once more, ``wake_interval`` after the last one,
with the count then (``0`` once none waits: the requests went to a pod, timed out or
left), so the count the operator reads follows and does not linger once they are
answered. Waiters sleep on an event the gateway sets on every table change: nothing polls.
It runs on the gateway's event loop only, and so does ``wake``, which must return at once
(``wake.LeaseWaker`` writes its signal on a thread of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from modeldeploy.gateway.metrics import GatewayMetrics
from modeldeploy.gateway.routing import ModelTarget, RoutingTable

log = logging.getLogger(__name__)

WAKE_INTERVAL_SECONDS = 5.0

Key = tuple[str, str]  # (namespace, ModelDeployment)
Wake = Callable[[ModelTarget, int], None]


class HoldError(Exception):
    """A held request that got no backend; ``code`` says why (the OpenAI error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Held:
    count: int
    since: float | None  # the first held request, until a backend comes
    deployment: Key


@dataclass
class _Signal:
    """The last wake call for one ModelDeployment, and the one scheduled after it."""

    at: float
    target: ModelTarget
    follow_up: asyncio.TimerHandle | None = None


class HoldQueue:
    """The requests held per model, up to ``limit`` each, for ``seconds`` at most."""

    def __init__(
        self,
        table: RoutingTable,
        metrics: GatewayMetrics,
        seconds: float,
        limit: int,
        wake: Wake | None,
        *,
        wake_interval: float = WAKE_INTERVAL_SECONDS,
    ) -> None:
        self._table, self._metrics = table, metrics
        self._seconds, self._limit, self._wake = seconds, limit, wake
        self._wake_interval = wake_interval
        self._held: dict[str, _Held] = {}
        self._signals: dict[Key, _Signal] = {}
        self._changed = asyncio.Event()  # replaced, and the old one set, on every change
        self._closing = False

    def table_changed(self) -> None:
        """Record the wake latency of models that gained a backend, and rouse the waiters."""
        now = asyncio.get_running_loop().time()
        for model, held in self._held.items():
            target = self._table.get(model)
            if held.since is not None and target is not None and target.backends:
                self._metrics.wake_seconds.labels(model).observe(now - held.since)
                held.since = None
        self._notify()

    def close(self) -> None:
        """Answer every held request now: the gateway is shutting down."""
        self._closing = True
        for signal in self._signals.values():
            if signal.follow_up is not None:
                signal.follow_up.cancel()
        self._signals.clear()
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def next_change(self, timeout: float) -> None:
        """Wait for the routing table's next change, at most ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout))

    def held_for(self, deployment: Key) -> int:
        """The requests held for one ModelDeployment, over all its served names."""
        return sum(held.count for held in self._held.values() if held.deployment == deployment)

    async def hold(self, target: ModelTarget) -> ModelTarget:
        """``target`` once it has a backend; ``HoldError`` if none comes in time."""
        model, loop = target.model, asyncio.get_running_loop()
        if (self._held[model].count if model in self._held else 0) >= self._limit:
            raise HoldError("hold_queue_full", f"Too many requests wait for `{model}`.")
        began = loop.time()
        held = self._held.setdefault(model, _Held(0, began, (target.namespace, target.deployment)))
        held.count += 1
        self._metrics.held.labels(model).inc()
        try:
            while not self._closing:
                current = self._table.get(model)
                if current is None:
                    raise HoldError("model_not_found", f"The model `{model}` does not exist.")
                if current.backends:
                    return current
                if not current.scale_from_zero:
                    raise HoldError("model_unavailable", f"The model `{model}` has no Ready pod.")
                self._wake_if_due(current, held.deployment, loop.time())
                changed, left = self._changed, began + self._seconds - loop.time()
                if left <= 0:
                    raise HoldError("model_starting", f"The model `{model}` is still starting.")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, self._wake_interval))
            raise HoldError("shutting_down", "The gateway is shutting down.")
        finally:
            held.count -= 1
            self._metrics.held.labels(model).dec()
            self._metrics.hold_seconds.labels(model).observe(loop.time() - began)
            if held.count == 0:
                del self._held[model]
            self._follow_up(held.deployment)

    def _wake_if_due(self, target: ModelTarget, deployment: Key, now: float) -> None:
        if self._wake is None:
            return
        signal = self._signals.get(deployment)
        if signal is not None and now - signal.at < self._wake_interval:
            return
        if signal is not None and signal.follow_up is not None:
            signal.follow_up.cancel()
        self._signals[deployment] = _Signal(now, target)
        self._call(target, self.held_for(deployment))

    def _follow_up(self, deployment: Key) -> None:
        """After the last held request of a woken ModelDeployment left: tell the count once
        the next wake is due (while any waits, the waiting requests wake it themselves)."""
        signal = self._signals.get(deployment)
        if signal is None or signal.follow_up is not None or self._closing:
            return
        if self.held_for(deployment) > 0:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, signal.at + self._wake_interval - loop.time())
        signal.follow_up = loop.call_later(delay, self._send_follow_up, deployment, signal)

    def _send_follow_up(self, deployment: Key, signal: _Signal) -> None:
        if self._signals.get(deployment) is not signal or self._closing:
            return
        held = self.held_for(deployment)
        if held == 0:
            del self._signals[deployment]
        else:
            self._signals[deployment] = _Signal(asyncio.get_running_loop().time(), signal.target)
        self._call(signal.target, held)

    def _call(self, target: ModelTarget, held: int) -> None:
        if self._wake is None:
            return
        try:
            self._wake(target, held)
        except Exception as error:  # the request still waits, and wakes it again later
            log.warning("waking %s/%s failed: %s", target.namespace, target.deployment, error)
