"""The resume journal: which bytes of a partial download are already in ``NAME.part``.

``NAME.part.journal`` holds, after a header naming the size, chunk size and the source's
validator, one 8-byte slot per chunk: how many bytes at the chunk's start are in
``.part``. A worker updates its chunk's slot with one aligned 8-byte ``pwrite`` after each
write of data: no rewrite, no rename, so it is done after every read. A killed process
(SIGKILL, OOM, eviction) thus leaves a journal that covers every byte it had received.
(Like the data, the journal is not fsynced: after a power loss it may claim bytes that
never reached the disk, and the sha256 check refuses the file.) A journal for other bytes
(a different validator, size or chunk size) is not loaded.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

JOURNAL_SUFFIX = ".part.journal"
PART_SUFFIX = ".part"

_JOURNAL_MAGIC = b"MDJRNL01"
_JOURNAL_HEADER = struct.Struct("<8sQQ32s")  # magic, size, chunk size, sha256(validator)
_JOURNAL_SLOTS_AT = 64  # slots are 8-byte aligned: one never straddles a page
_SLOT = struct.Struct("<Q")


def part_paths(dest: Path) -> tuple[Path, Path]:
    """The partial file and its journal for a destination path."""
    return dest.with_name(dest.name + PART_SUFFIX), dest.with_name(dest.name + JOURNAL_SUFFIX)


def journaled_bytes(path: Path) -> int:
    """How many bytes of its ``.part`` a journal records as written (0 if unreadable)."""
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    if len(data) < _JOURNAL_SLOTS_AT or not data.startswith(_JOURNAL_MAGIC):
        return 0
    slots = data[_JOURNAL_SLOTS_AT:]
    return sum(value for (value,) in _SLOT.iter_unpack(slots[: len(slots) // 8 * 8]))


class Journal:
    """Per chunk, how many bytes at its start are final in ``.part``; see the module docstring.

    Each worker writes only the slots of the chunks it holds, with positional writes: no
    lock. The data is written before the slot that vouches for it.
    """

    def __init__(self, path: Path, size: int, chunk_size: int, validator: str) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        self.count = (size + chunk_size - 1) // chunk_size
        header = _JOURNAL_HEADER.pack(
            _JOURNAL_MAGIC, size, chunk_size, hashlib.sha256(validator.encode()).digest()
        )
        self._header = header.ljust(_JOURNAL_SLOTS_AT, b"\0")
        self.have = [0] * self.count
        self._fd = -1

    def length(self, index: int) -> int:
        """The size of chunk ``index``."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def load(self) -> bool:
        """Adopt what a previous run recorded, if it is for the same bytes."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return False
        if len(data) != _JOURNAL_SLOTS_AT + _SLOT.size * self.count or not data.startswith(
            self._header
        ):
            return False
        have = [value for (value,) in _SLOT.iter_unpack(data[_JOURNAL_SLOTS_AT:])]
        if any(value > self.length(i) for i, value in enumerate(have)):
            return False
        self.have = have
        return True

    def create(self) -> None:
        """Start an empty journal (atomically replacing any other)."""
        self.have = [0] * self.count
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(self._header + bytes(_SLOT.size * self.count))
        os.replace(tmp, self.path)

    def open(self) -> None:
        """Open the journal file for ``record`` and ``reset``."""
        self._fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        """Close the journal file, if open."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def record(self, index: int, written: int) -> None:
        """Record that the first ``written`` bytes of chunk ``index`` are in ``.part``."""
        self.have[index] = written
        os.pwrite(self._fd, _SLOT.pack(written), _JOURNAL_SLOTS_AT + _SLOT.size * index)

    def reset(self) -> None:
        """Forget every chunk (a whole-body stream rewrites the file from the start)."""
        self.have = [0] * self.count
        os.pwrite(self._fd, bytes(_SLOT.size * self.count), _JOURNAL_SLOTS_AT)

    def final_bytes(self) -> int:
        """How many bytes of the file are already in place."""
        return sum(self.have)
