"""Leader election over a ``coordination.k8s.io/v1`` Lease: the decisions. Pure.

The rules are client-go's (``tools/leaderelection``), which controller-runtime uses:

- A candidate reads the Lease every retry period. No Lease: it creates one naming itself.
  Its own Lease: it renews it (a new ``renewTime``). A Lease with no holder (released on
  shutdown): it takes it. Another holder's Lease: it waits until the Lease has not changed
  for the holder's ``leaseDurationSeconds`` *as measured on this process's own clock*,
  from the moment this process first saw that version of the record, then takes it over.
  The holder's ``renewTime`` is never compared with this clock, so clock skew between
  machines cannot shorten a lease.
- A leader that has not renewed for the renew deadline (shorter than the lease duration)
  stops acting; the others can take over only once the lease duration has passed since
  they saw the last renewal, which leaves the difference for in-flight work to end.
- On shutdown the leader releases the Lease (no holder, a duration of 1 s), so a standby
  takes it at its next read instead of waiting for the lease duration.

Times: ``now`` arguments are seconds of a monotonic clock of this process; ``wall`` is
the UTC time written into the Lease (``acquireTime``, ``renewTime``: MicroTime).
"""

from __future__ import annotations

import copy
import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # metav1.MicroTime, as the API server wants it


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says about its holder (``spec``), and its version."""

    holder: str  # "" when nobody holds it (released, or never held)
    duration_seconds: int  # 0 when the Lease does not say
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None


def record_of(lease: Mapping[str, Any] | None) -> LeaseRecord | None:
    """The record of a Lease object (a dict as the API server returns it); None: no Lease."""
    if lease is None:
        return None
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime"),
        renew_time=spec.get("renewTime"),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=meta.get("resourceVersion"),
    )


@dataclass(frozen=True)
class Observed:
    """The Lease record this process last read, and when (its clock) it first saw it."""

    record: LeaseRecord | None
    since: float


def observe(previous: Observed | None, record: LeaseRecord | None, now: float) -> Observed:
    """The observation after reading ``record`` at ``now``: the same record keeps the time
    it was first seen (every write changes the resourceVersion, so a renewal is new)."""
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


class Step(enum.StrEnum):
    """What a candidate (or the leader) does after reading the Lease."""

    CREATE = "create"  # there is no Lease: create it, naming this process
    RENEW = "renew"  # this process holds it: renew it
    TAKE_OVER = "take-over"  # released, or expired on this process's clock: take it
    WAIT = "wait"  # another holder's lease is still valid


def expires_at(observed: Observed, default_duration: int) -> float:
    """When (this process's clock) the observed holder's lease runs out, unless renewed."""
    record = observed.record
    duration = (record.duration_seconds if record else 0) or default_duration
    return observed.since + duration


def decide(observed: Observed, identity: str, now: float, default_duration: int) -> Step:
    """The step for ``identity`` after reading the Lease (``observed``) at ``now``.

    A holder's own ``leaseDurationSeconds`` bounds its lease; ``default_duration`` (this
    process's setting) stands in when the Lease names none.
    """
    record = observed.record
    if record is None:
        return Step.CREATE
    if record.holder == identity:
        return Step.RENEW
    if not record.holder or now >= expires_at(observed, default_duration):
        return Step.TAKE_OVER
    return Step.WAIT


def lost(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """Whether a leader whose last successful renewal began at ``renewed_at`` must stop
    acting at ``now``: it has not renewed within the renew deadline."""
    return renewed_at is None or now - renewed_at >= renew_deadline


def micro_time(wall: datetime.datetime) -> str:
    """``wall`` as a metav1.MicroTime string (UTC, microseconds)."""
    return wall.astimezone(datetime.UTC).strftime(MICRO_TIME)


def claim(
    step: Step,
    lease: Mapping[str, Any] | None,
    identity: str,
    *,
    name: str,
    namespace: str,
    duration_seconds: int,
    wall: datetime.datetime,
) -> dict[str, Any]:
    """The Lease to write for ``step`` (CREATE, RENEW or TAKE_OVER): the read object with
    this process as the holder (its labels, annotations and resourceVersion kept, so the
    write is refused with a conflict when someone wrote in between)."""
    if step is Step.WAIT:
        raise ValueError("nothing to write while another holder's lease is valid")
    body: dict[str, Any] = copy.deepcopy(dict(lease)) if lease is not None else {}
    body["apiVersion"] = "coordination.k8s.io/v1"
    body["kind"] = "Lease"
    meta = body.setdefault("metadata", {})
    meta["name"], meta["namespace"] = name, namespace
    spec = dict(body.get("spec") or {})
    record = record_of(lease)
    now = micro_time(wall)
    transitions = record.transitions if record else 0
    if step is Step.RENEW:
        spec["acquireTime"] = spec.get("acquireTime") or now
    else:
        spec["acquireTime"] = now
        if step is Step.TAKE_OVER:  # a new term (client-go counts every acquisition)
            transitions += 1
    spec.update(
        holderIdentity=identity,
        leaseDurationSeconds=duration_seconds,
        renewTime=now,
        leaseTransitions=transitions,
    )
    body["spec"] = spec
    return body


def release(lease: Mapping[str, Any], *, wall: datetime.datetime) -> dict[str, Any]:
    """The Lease to write on shutdown: no holder and a duration of 1 s, so a standby takes
    it at its next read (client-go's ReleaseOnCancel)."""
    body: dict[str, Any] = copy.deepcopy(dict(lease))
    spec = dict(body.get("spec") or {})
    spec.pop("holderIdentity", None)
    spec.update(leaseDurationSeconds=1, renewTime=micro_time(wall))
    body["spec"] = spec
    return body
