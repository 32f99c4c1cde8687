"""Bench-only: where the operator's Python memory goes (``bench.reconcile --tracemalloc``).

On ``PYTHONPATH`` of the operator process only, when ``MODELDEPLOY_BENCH_TRACEMALLOC`` names
a file: traces allocations from start-up, and every 5 s, when the traced total is a new high,
writes the top allocation sites (by file and line) at that high to the file. Not part of
the operator; tracing slows it, so its latency figures are not comparable.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc

_OUT = os.environ.get("MODELDEPLOY_BENCH_TRACEMALLOC")


def _watch(path: str) -> None:
    high = 0
    while True:
        time.sleep(5)
        current, _ = tracemalloc.get_traced_memory()
        if current <= high * 1.02:
            continue
        high = current
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        lines = [f"traced {current / 2**20:.1f} MiB at {time.strftime('%H:%M:%S')}"]
        by_file = snapshot.statistics("filename")[:25]
        for stat in by_file:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}  {stat.traceback[0]}")
        lines.append("-- by line")
        for stat in snapshot.statistics("lineno")[:40]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:8d}  {stat.traceback[0]}")
        with open(path, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")


if _OUT:
    tracemalloc.start(1)
    threading.Thread(target=_watch, args=(_OUT,), daemon=True, name="bench-tracemalloc").start()
