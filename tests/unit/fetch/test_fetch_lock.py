"""The cache lock on its own: exclusion, heartbeat, stale recovery and loss detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.fetch.standins import wait_until

from modeldeploy.fetch.errors import LockLostError
from modeldeploy.fetch.lock import CONTENT_BYTES, CacheLock


def lock(path: Path, stale_after: float = 0.3) -> CacheLock:
    return CacheLock(path, heartbeat_interval=0.02, stale_after=stale_after, poll_interval=0.01)


def test_only_one_holder_at_a_time_and_release_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    a, b = lock(path), lock(path)
    assert a.try_acquire()
    assert not b.try_acquire()
    assert json.loads(path.read_text())["token"] == a.token
    a.release()
    assert not path.exists()
    assert b.try_acquire()
    b.release()


def test_a_live_holder_is_never_judged_stale(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder, waiter = lock(path), lock(path, stale_after=1.0)
    assert holder.try_acquire()
    beats = json.loads(path.read_text())["beat"]
    wait_until(lambda: _beats(path) >= beats + 30)
    # The waiter watches a beating lock for well over stale_after and keeps waiting.
    assert not waiter.acquire_or_wait(lambda: _beats(path) >= beats + 100)
    holder.check()
    holder.release()


def _beats(path: Path) -> int:
    try:
        return int(json.loads(path.read_text() or "{}").get("beat", 0))
    except ValueError:
        return 0


def test_a_silent_lock_is_broken_and_its_holder_learns_it_lost(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    holder = CacheLock(path, heartbeat_interval=3600, stale_after=0.2, poll_interval=0.01)
    assert holder.try_acquire()  # its heartbeat will not run again: a hung holder
    taker = lock(path, stale_after=0.2)
    assert taker.acquire_or_wait(lambda: False, deadline=None)
    with pytest.raises(LockLostError):
        holder.check()
    holder.release()  # must not remove the new holder's lock
    assert json.loads(path.read_text())["token"] == taker.token
    taker.release()


def test_the_holder_never_misreads_its_own_lock_while_the_heartbeat_rewrites_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.lock"
    holder = CacheLock(path, heartbeat_interval=0.0005, stale_after=60, poll_interval=0.01)
    assert holder.try_acquire()
    start = _beats(path)

    def checked_through_many_beats() -> bool:
        holder.check()  # raises LockLostError if it ever reads a torn rewrite
        return _beats(path) >= start + 300

    wait_until(checked_through_many_beats)
    assert len(path.read_bytes()) == CONTENT_BYTES  # every rewrite has the same length
    holder.release()
