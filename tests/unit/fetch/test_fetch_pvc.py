"""pvc:// — a claim mounted into the init container, read as a local directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.fetch.conftest import markers, sha256
from tests.unit.fetch.payloads import GgufFactory

from modeldeploy.fetch.errors import DigestMismatchError, MissingFileError, SourceChangedError
from modeldeploy.fetch.fetcher import FetchOptions, fetch
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.fetch.resolve import resolve


@pytest.fixture
def claim(tmp_path: Path, ggufs: GgufFactory) -> tuple[dict[str, str], dict[str, bytes]]:
    root = tmp_path / "mnt"
    files = {"m-Q4_K_M.gguf": ggufs.model("Q4_K_M"), "m-Q8_0.gguf": ggufs.model("Q8_0")}
    model_dir = root / "models" / "tiny"
    model_dir.mkdir(parents=True)
    for name, data in files.items():
        (model_dir / name).write_bytes(data)
    return {"MODELDEPLOY_PVC_ROOT": str(root)}, files


def test_a_claim_directory_resolves_copies_and_verifies(
    claim: tuple[dict[str, str], dict[str, bytes]], tmp_path: Path, fast_options: FetchOptions
) -> None:
    env, files = claim
    request = FetchRequest(
        source="pvc://models/tiny", quantization="Q8_0",
        digests={"m-Q8_0.gguf": sha256(files["m-Q8_0.gguf"])},
    )  # fmt: skip
    resolution = resolve(request, env=env)
    assert resolution.revision.startswith("mtimes-")
    assert resolution.architecture is not None and resolution.architecture.quantization == "Q8_0"
    result = fetch(request, tmp_path / "cache", env=env, options=fast_options)
    assert (result.path / "m-Q8_0.gguf").read_bytes() == files["m-Q8_0.gguf"]
    assert result.files[0].verified_against == "pinned"


def test_a_changed_or_wrong_file_is_refused(
    claim: tuple[dict[str, str], dict[str, bytes]], tmp_path: Path, fast_options: FetchOptions
) -> None:
    env, files = claim
    request = FetchRequest(source="pvc://models/tiny", quantization="Q4_K_M")
    revision = resolve(request, env=env, read_metadata=False).revision
    target = Path(env["MODELDEPLOY_PVC_ROOT"]) / "models/tiny/m-Q4_K_M.gguf"
    target.write_bytes(files["m-Q4_K_M.gguf"] + b"x")
    with pytest.raises(SourceChangedError):
        fetch(
            FetchRequest(source=request.source, quantization="Q4_K_M", revision=revision),
            tmp_path / "c",
            env=env,
            options=fast_options,
        )
    pinned = FetchRequest(
        source=request.source,
        quantization="Q4_K_M",
        digests={"m-Q4_K_M.gguf": sha256(files["m-Q4_K_M.gguf"])},
    )
    with pytest.raises(DigestMismatchError):
        fetch(pinned, tmp_path / "c", env=env, options=fast_options)
    assert markers(tmp_path / "c") == []
    with pytest.raises(MissingFileError, match="is the claim mounted"):
        resolve(FetchRequest(source="pvc://other/x"), env=env)
