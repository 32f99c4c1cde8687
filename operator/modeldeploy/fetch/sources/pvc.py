"""pvc:// — files on a PersistentVolumeClaim that the init container mounts.

The operator mounts claim ``CLAIM`` read-only at ``$MODELDEPLOY_PVC_ROOT/CLAIM`` (default
``/mnt/pvc/CLAIM``); ``pvc://CLAIM/PATH`` is a file or a directory inside it. There is no
remote revision: it is derived from names, sizes and modification times, and the files are
copied into the cache with the same streaming sha256 as a download, so that the served
copy cannot change under the engine. The operator itself cannot list a claim: it resolves
pvc:// only in the init container.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from modeldeploy.fetch.errors import MissingFileError
from modeldeploy.fetch.sources.base import LocalLocation, Location, Source
from modeldeploy.fetch.uri import SourceURI
from modeldeploy.resolution import ArtifactFile, Listing

DEFAULT_ROOT = "/mnt/pvc"


class PvcSource(Source):
    """A file or directory on a mounted claim."""

    def __init__(self, uri: SourceURI, env: Mapping[str, str]) -> None:
        super().__init__(uri, env)
        root = Path(env.get("MODELDEPLOY_PVC_ROOT") or DEFAULT_ROOT) / uri.authority
        self.base = root / uri.path if uri.path else root

    def list(self, revision: str | None, hints: Sequence[str] = ()) -> Listing:
        if self.base.is_file():
            stat = self.base.stat()
            files = [ArtifactFile(self.base.name, stat.st_size, ref=str(stat.st_mtime_ns))]
        elif self.base.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(self.base):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for filename in sorted(filenames):
                    if filename.startswith("."):
                        continue
                    path = Path(dirpath) / filename
                    stat = path.stat()
                    name = path.relative_to(self.base).as_posix()
                    files.append(ArtifactFile(name, stat.st_size, ref=str(stat.st_mtime_ns)))
        else:
            raise MissingFileError(
                f"{self.uri.url}: {self.base} does not exist (is the claim mounted?)"
            )
        return Listing(tuple(files), revision=None, derived_kind="mtimes")

    def location(self, revision: str, file: ArtifactFile) -> Location:
        return LocalLocation(self.base if self.base.is_file() else self.base / file.name)
