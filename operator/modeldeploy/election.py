"""Leader election: exactly one acting operator among replicas, by a ``coordination.k8s.io``
Lease (the decisions are ``lease``'s; this is the loop and the API calls).

Every replica runs Kopf in full (watches, indexes, the admission webhook, health): a
standby is warm, and the webhook needs no leader. Only the holder of the Lease runs
reconcile passes, the drift check and the autoscaler (``passes`` asks ``leading``), so
only the leader writes. The loop reads the Lease every retry period: a candidate takes
it when it is free or has expired on its own clock, the leader renews it. A leader that
cannot renew within the renew deadline (the API server is gone, or partitioned from this
process) stops acting: no new pass starts, and the passes under way get until the Lease
could be taken over to end, or the process exits (the kubelet restarts it). It stays a
candidate, so when the API server comes back one replica takes the Lease again (this one
renews its own record at once), and the new leader runs a pass for every ModelDeployment.
On shutdown the leader releases the Lease, once its passes have ended, so a standby
takes over within a retry period.

The Lease calls run on their own thread, so passes that fill the default executor never
delay a renewal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from kubernetes import client

from modeldeploy.lease import (
    Observed,
    Step,
    claim,
    decide,
    lost,
    observe,
    record_of,
    release,
)
from modeldeploy.metrics import LEADER
from modeldeploy.settings import LeaderElectionSettings

log = logging.getLogger("modeldeploy.election")
EXIT_LEASE_LOST = 3  # the process exits with this when passes outlive a lost Lease


class LeaseConflictError(Exception):
    """Someone else wrote the Lease between our read and our write (HTTP 409)."""


class LeaseApi(Protocol):
    """Read and write one Lease (``None``: it does not exist)."""

    def read(self) -> dict[str, Any] | None: ...

    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def replace(self, body: dict[str, Any]) -> dict[str, Any]: ...


class KubernetesLeases:
    """One Lease through CoordinationV1Api: ``get``, ``create``, ``update`` (optimistic, by
    resourceVersion); every call bounded by ``timeout`` seconds."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, timeout: float) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name, self.timeout = namespace, name, timeout

    def read(self) -> dict[str, Any] | None:
        try:
            response = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout, _preload_content=False
            )
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise
        found: dict[str, Any] = json.loads(response.data)
        return found

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(self.coordination.create_namespaced_lease, self.namespace, body)

    def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._write(
            self.coordination.replace_namespaced_lease, self.name, self.namespace, body
        )

    def _write(self, call: Callable[..., Any], *args: Any) -> dict[str, Any]:
        try:
            response = call(*args, _request_timeout=self.timeout, _preload_content=False)
        except client.ApiException as error:
            if error.status == 409:  # a conflict, or created meanwhile
                raise LeaseConflictError(str(error.reason)) from error
            raise
        written: dict[str, Any] = json.loads(response.data)
        return written


class Leadership:
    """Whether this process acts, and the loop that keeps (or waits for) the Lease."""

    def __init__(
        self,
        settings: LeaderElectionSettings,
        identity: str,
        namespace: str,
        leases: LeaseApi,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        exit_process: Callable[[int], Any] = os._exit,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.namespace = namespace
        self.leases = leases
        self.leading = False
        self.holder: str = ""  # the holder this process last read ("" none, or unknown)
        self.last_error: str | None = None
        self._clock, self._wall, self._exit = clock, wall, exit_process
        self._observed: Observed | None = None
        self._renewed_at: float | None = None
        self._on_elected: Callable[[], Awaitable[None]] | None = None
        self._busy: Callable[[], bool] = lambda: False
        self._rounds: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lease")
        LEADER.set(0)

    @property
    def where(self) -> str:
        """``namespace/name`` of the Lease, for messages."""
        return f"{self.namespace}/{self.settings.lease_name}"

    def attach(self, on_elected: Callable[[], Awaitable[None]], busy: Callable[[], bool]) -> None:
        """What to run on taking the Lease (a pass for every object), and how to tell that a
        pass is under way. Runs ``on_elected`` now when this process already leads."""
        self._on_elected, self._busy = on_elected, busy
        if self.leading:
            self._spawn_round()

    async def run(self) -> None:
        """Read, take or renew the Lease every retry period, until ``stop``."""
        log.info(
            "leader election: Lease %s as %s (duration %ss, renew deadline %ss, retry %ss)",
            self.where, self.identity, self.settings.lease_duration_seconds,
            self.settings.renew_deadline_seconds, self.settings.retry_period_seconds,
        )  # fmt: skip
        while not self._stopped:
            await self.step()
            await asyncio.sleep(self.settings.retry_period_seconds)

    async def step(self) -> None:
        """One read of the Lease, and what follows from it."""
        started = self._clock()
        try:
            held = await asyncio.get_running_loop().run_in_executor(self._executor, self._try)
        except Exception as error:  # the API server, or the connection to it
            if self.last_error is None:
                log.warning("cannot read or write the Lease %s: %s", self.where, error)
            self.last_error = str(error) or type(error).__name__
            held = False
        else:
            if self.last_error is not None:
                log.info("the Lease %s answers again", self.where)
            self.last_error = None
        if self._stopped:
            return
        if held:
            self._renewed_at = started
            if not self.leading:
                self._elected()
        elif self.leading:
            if self.holder and self.holder != self.identity:
                await self._step_down(f"{self.holder} holds it now")
            elif lost(self._renewed_at, self._clock(), self.settings.renew_deadline_seconds):
                reason = f"not renewed for {self.settings.renew_deadline_seconds}s"
                await self._step_down(f"{reason} ({self.last_error or 'refused'})")

    def _try(self) -> bool:
        """Read the Lease, and take or renew it when the rules allow. A thread."""
        lease = self.leases.read()
        now = self._clock()
        record = record_of(lease)
        self._observed = observe(self._observed, record, now)
        duration = self.settings.lease_duration_seconds
        step = decide(self._observed, self.identity, now, duration)
        self.holder = record.holder if record else ""
        if step is Step.WAIT:
            return False
        body = claim(
            step, lease, self.identity, name=self.settings.lease_name,
            namespace=self.namespace, duration_seconds=duration, wall=self._wall(),
        )  # fmt: skip
        try:
            written = self.leases.create(body) if step is Step.CREATE else self.leases.replace(body)
        except LeaseConflictError:
            return False  # another candidate won this round: read again next period
        self._observed = observe(self._observed, record_of(written), now)
        self.holder = self.identity
        return True

    def _elected(self) -> None:
        self.leading = True
        LEADER.set(1)
        record = self._observed.record if self._observed else None
        log.info(
            "took the Lease %s as %s (transitions: %s): acting",
            self.where, self.identity, record.transitions if record else 0,
        )  # fmt: skip
        self._spawn_round()

    def _spawn_round(self) -> None:
        if self._on_elected is None:
            return
        task = asyncio.get_running_loop().create_task(self._round(self._on_elected))
        self._rounds.add(task)
        task.add_done_callback(self._rounds.discard)

    async def _round(self, on_elected: Callable[[], Awaitable[None]]) -> None:
        try:
            await on_elected()
        except Exception:
            log.exception("the first round after taking the Lease failed")

    async def _step_down(self, reason: str) -> None:
        """Stop acting; let the passes under way end before the Lease could be taken over,
        else exit (a pass must not write beside a new leader)."""
        self.leading = False
        LEADER.set(0)
        log.error("lost the Lease %s: %s; standing by", self.where, reason)
        renewed = self._renewed_at if self._renewed_at is not None else self._clock()
        deadline = (
            renewed + self.settings.lease_duration_seconds - self.settings.retry_period_seconds
        )
        while self._busy() and self._clock() < deadline:
            await asyncio.sleep(0.05)
        if self._busy():
            log.critical("passes still run after losing the Lease %s: exiting", self.where)
            logging.shutdown()
            self._exit(EXIT_LEASE_LOST)

    async def release(self, grace: float) -> None:
        """Stop the loop; as the leader, wait up to ``grace`` seconds for the passes under
        way, then release the Lease (no holder) so a standby takes it at once."""
        self._stopped = True
        if not self.leading:
            self._executor.shutdown(wait=False)
            return
        self.leading = False
        LEADER.set(0)
        deadline = self._clock() + grace
        while self._busy() and self._clock() < deadline:
            await asyncio.sleep(0.05)
        if self._busy():
            log.warning("passes still run: not releasing the Lease %s (it expires)", self.where)
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._release)
        except Exception as error:
            log.warning("cannot release the Lease %s (it expires): %s", self.where, error)
        else:
            log.info("released the Lease %s", self.where)
        finally:
            self._executor.shutdown(wait=False)

    def _release(self) -> None:
        lease = self.leases.read()
        record = record_of(lease)
        if lease is None or record is None or record.holder != self.identity:
            return  # not ours (any more): nothing to release
        self.leases.replace(release(lease, wall=self._wall()))
