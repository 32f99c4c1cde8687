"""How long the GGUF header reader takes to end on hostile headers, now and at a revision.

Run from the repository root: ``.venv/bin/python bench/hostile_header.py [--before HEAD]``.

Each case is a crafted file (``tests/unit/fetch/hostile.py``) read through an in-memory
``RangeReader`` the way the operator reads a source: the 24 MB header of three million
empty strings from issue 15, the largest vocabulary of empty strings the bounds accept
(1 048 576, 8 MB), a tensor of an unknown type, arrays nested 100 000 deep. For this tree's
``fetch/gguf_header.py`` and for the one at ``--before`` (loaded from git), it prints one
line per case: wall and CPU seconds, the bytes read, and how it ended (parsed, or the
exception). Not a test: nothing here asserts; the numbers go in the closing note.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "operator"))

from tests.unit.fetch import hostile  # noqa: E402

from modeldeploy.fetch import gguf_header  # noqa: E402
from modeldeploy.resolution import ArtifactFile  # noqa: E402

CASES = {
    "3M empty strings (issue 15)": lambda: hostile.empty_strings(3_000_000),
    "1M empty strings (at the bound)": lambda: hostile.empty_strings(1 << 20),
    "unknown tensor type": lambda: hostile.unknown_tensor_type(99),
    "arrays nested 100k deep": lambda: hostile.nested_arrays(100_000),
}


def revision_module(revision: str) -> ModuleType:
    """``fetch/gguf_header.py`` as it was at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{revision}:operator/modeldeploy/fetch/gguf_header.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "gguf_header_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("gguf_header_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def measure(module: Any, data: bytes) -> str:
    read_bytes = 0

    def read(file: ArtifactFile, offset: int, length: int) -> bytes:
        nonlocal read_bytes
        read_bytes += length
        return data[offset : offset + length]

    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        header = module.read_gguf_header(read, ArtifactFile("hostile.gguf", len(data)))
        ended = f"parsed ({len(header.fields)} fields, {len(header.tensors)} tensors)"
    except BaseException as error:  # what each reader raises is what is measured
        ended = f"{type(error).__name__}: {str(error)[:110]}"
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    took = f"wall {wall * 1e3:7.1f} ms  cpu {cpu * 1e3:7.1f} ms"
    return f"{took}  read {read_bytes / 1e6:5.2f} MB  {ended}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="HEAD", help="the revision to compare with")
    args = parser.parse_args()
    readers = {args.before: revision_module(args.before), "this tree": gguf_header}
    for case, make in CASES.items():
        data = make()
        print(f"{case}: {len(data) / 1e6:.1f} MB file")
        for label, module in readers.items():
            print(f"  {label:>10}: {measure(module, data)}")


if __name__ == "__main__":
    main()
