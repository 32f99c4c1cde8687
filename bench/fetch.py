"""Fetch benchmark on loopback: ``modeldeploy fetch`` against ``curl``, warm cache, resume.

Run from the repository root: ``.venv/bin/python bench/fetch.py [--size-mib 1024]``.

One run, three measurements, printed as JSON:

- throughput of ``modeldeploy fetch`` (a new process, sha256 verified against a pinned
  digest, atomic publish) and of ``curl -o`` (no verification) for the same file from the
  same server (the Range stand-in of the tests, serving with sendfile); target >= 0.9x curl;
- a warm-cache fetch with the resolved revision pinned: its wall time (target < 1 s) and
  the bytes the server sent (target 0);
- a fetch killed (SIGKILL) once it holds half the file (its resume journal records half the
  bytes as written), then run again: the bytes the second run transferred (target <= half
  the file plus one chunk). The server has sent more by then: what sits in the kernel's
  socket buffers when a process dies is lost to any fetcher, and is reported apart.

Not a test: nothing here asserts; the numbers go in the closing note of issue 5.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.unit.fetch.standins import RangeServer  # noqa: E402

from modeldeploy.fetch.journal import journaled_bytes  # noqa: E402

NAME = "bench-Q4_K_M.gguf"
MIB = 1024 * 1024


def make_payload(path: Path, size: int) -> str:
    """Write ``size`` random bytes and return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(16 * MIB, left))
            digest.update(piece)
            handle.write(piece)
            left -= len(piece)
    return digest.hexdigest()


def cli_chunk_bytes() -> int:
    """The range size of ``modeldeploy fetch`` as the bench runs it (its default --chunk-mib)."""
    from modeldeploy.fetch.cli import configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return int(parser.get_default("chunk_mib")) * MIB


def fetch_argv(server: RangeServer, cache: Path, digest: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "modeldeploy.fetch",
        "--source", server.https(NAME),
        "--digest", f"{NAME}={digest}",
        "--cache", str(cache),
        "--progress-interval", "0",
        *extra,
    ]  # fmt: skip


def run_fetch(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, json.loads(done.stdout)


def journaled(cache: Path) -> int:
    """Bytes the resume journals under ``cache`` record as written."""
    return sum(journaled_bytes(path) for path in cache.rglob("*.part.journal"))


def drop_caches_of(path: Path) -> None:
    """Push the file's dirty pages to disk so one run's writeback does not slow the next."""
    os.sync()
    if path.exists():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = Path(tempfile.mkdtemp(prefix="fetch-bench-", dir=args.workdir))
    server = RangeServer()
    server.start()
    try:
        payload = work / NAME
        digest = make_payload(payload, size)
        server.add(NAME, payload)
        env = {**os.environ, **server.env}
        env["PYTHONPATH"] = str(REPO / "operator")
        drop_caches_of(payload)

        # curl: one plain GET to a file, no verification.
        curl_out = work / "curl.out"
        start = time.perf_counter()
        subprocess.run(
            ["curl", "-sS", "--fail", "-o", str(curl_out), server.url + "/" + NAME],
            check=True, timeout=600,
        )  # fmt: skip
        curl_seconds = time.perf_counter() - start
        curl_out.unlink()
        drop_caches_of(payload)

        # modeldeploy fetch: resolve, parallel ranges, streaming sha256 against the pin, publish.
        server.reset_counters()
        cold_cache = work / "cache"
        fetch_seconds, result = run_fetch(fetch_argv(server, cold_cache, digest), env)
        fetch_bytes = server.total_served()

        # Warm cache: the resolved revision pinned, as the operator's init container runs it.
        server.reset_counters()
        revision = str(result["revision"])
        warm_seconds, warm = run_fetch(
            fetch_argv(server, cold_cache, digest, "--revision", revision), env
        )
        warm_bytes = server.total_served()
        shutil.rmtree(cold_cache)
        drop_caches_of(payload)

        # Resume: SIGKILL once the fetcher holds half the file, then fetch again.
        server.reset_counters()
        resume_cache = work / "resume"
        victim = subprocess.Popen(
            fetch_argv(server, resume_cache, digest), env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while journaled(resume_cache) < size // 2 and victim.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the fetch to be killed never reached half the file")
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        served_before_kill = server.total_served()
        held_at_kill = journaled(resume_cache)
        server.reset_counters()
        _, resumed = run_fetch(fetch_argv(server, resume_cache, digest), env)
        resume_bytes = server.total_served()
        chunk = cli_chunk_bytes()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "fileBytes": size,
        "loadAverage1m": round(os.getloadavg()[0], 2),  # other work on this machine skews ratios
        "throughput": {
            "curlMiBps": round(size / MIB / curl_seconds, 1),
            "fetchMiBps": round(size / MIB / fetch_seconds, 1),
            "ratioToCurl": round(curl_seconds / fetch_seconds, 3),
            "target": ">= 0.9",
            "fetchBytesServed": fetch_bytes,
            "verifiedSha256": result["files"][0]["sha256"] == digest,  # type: ignore[index]
        },
        "warmCache": {
            "seconds": round(warm_seconds, 3),
            "bytesTransferred": warm_bytes,
            "reportedCached": warm["cached"],
            "target": "< 1 s, 0 bytes",
        },
        "resume": {
            "journaledAtKill": held_at_kill,
            "bytesAfterResume": resume_bytes,
            "resumedExactlyTheRest": resume_bytes == size - held_at_kill,
            "servedBeforeKill": served_before_kill,
            # Sent by the server before the kill but never read by the fetcher: bytes in
            # kernel socket buffers (the server's send queues, the fetcher's receive queues).
            "lostInSocketBuffers": served_before_kill - held_at_kill,
            "limit": size // 2 + chunk,
            "withinLimit": resume_bytes <= size // 2 + chunk,
            "verifiedSha256": resumed["files"][0]["sha256"] == digest,  # type: ignore[index]
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
