"""The real llama-server with a real GGUF LoRA adapter (``e2e.lora``) on the gemma 270M model.

llama-server runs directly here (not through `modeldeploy serve`) with
``--lora ADAPTER --lora-init-without-apply``. In the pinned build that flag does not zero the
server's global scale (llama.cpp issue #28674): ``GET /lora-adapters`` says 1.0 and requests
without a ``lora`` field get the adapter, so the fixture sets the global scale to 0 with
``POST /lora-adapters`` first. Requests go to 127.0.0.1 only, greedy, without the prompt cache,
bounded in tokens and time; waits poll with deadlines.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from e2e.lora import write_lora_adapter
from e2e.runtime import free_port, wait_until

TIMEOUT = httpx.Timeout(60.0, connect=5.0)
STARTUP_S = 120.0
PROMPT = "The capital of France is"
TOKENS = 16
ON = [{"id": 0, "scale": 1.0}]
OFF = [{"id": 0, "scale": 0.0}]
REFUSALS = {  # adapter kind: what llama.cpp's loader says
    "architecture": "model arch and LoRA arch mismatch",
    "shape": "tensor 'blk.0.attn_q.weight' has incorrect shape (hint: maybe wrong base model?)",
}


class LoraServer(NamedTuple):
    """A running llama-server: its base URL and ``GET /lora-adapters`` as it started."""

    url: str
    initial: list[dict[str, Any]]


def _start(
    binary: Path, model: Path, adapter: Path, log: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [str(binary), "-m", str(model), "--lora", str(adapter), "--lora-init-without-apply"]
    command += ["--host", "127.0.0.1", "--port", str(port), "-c", "512", "-np", "1", "-t", "2"]
    with log.open("wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT), port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def _adapters(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/lora-adapters", timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return list(response.json())


def _set_global(url: str, lora: list[dict[str, Any]]) -> None:
    response = httpx.post(f"{url}/lora-adapters", json=lora, timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def _complete(url: str, **extra: Any) -> str:
    body = {"prompt": PROMPT, "n_predict": TOKENS, "temperature": 0, "seed": 42, **extra}
    body["cache_prompt"] = False  # every answer evaluates the whole prompt the same way
    response = httpx.post(f"{url}/completion", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return str(response.json()["content"])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, gemma: Path) -> dict[str, Path]:
    """A compatible adapter and two that llama.cpp must refuse."""
    root = tmp_path_factory.mktemp("lora")
    return {
        "good": write_lora_adapter(gemma, root / "good.gguf", seed=1),
        "architecture": write_lora_adapter(gemma, root / "llama.gguf", architecture="llama"),
        "shape": write_lora_adapter(gemma, root / "shape.gguf", wrong_shape=True),
    }


@pytest.fixture(scope="module")
def lora_server(
    tmp_path_factory: pytest.TempPathFactory,
    llama_server: Path,
    gemma: Path,
    adapters: dict[str, Path],
) -> Iterator[LoraServer]:
    """llama-server with the good adapter loaded and its global scale set to 0."""
    log = tmp_path_factory.mktemp("lora-server") / "llama-server.log"
    process, port = _start(llama_server, gemma, adapters["good"], log)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{log.read_text()[-3000:]}")
            try:
                return True if httpx.get(f"{url}/health", timeout=2.0).status_code == 200 else None
            except httpx.TransportError:
                return None

        wait_until(ready, timeout=STARTUP_S, what="llama-server with a LoRA adapter")
        initial = _adapters(url)
        _set_global(url, OFF)
        yield LoraServer(url, initial)
    finally:
        _stop(process)


def test_lists_the_adapter_and_the_flag_leaves_its_global_scale_at_1(
    lora_server: LoraServer, adapters: dict[str, Path]
) -> None:
    [entry] = lora_server.initial
    assert entry["id"] == 0 and Path(entry["path"]) == adapters["good"]
    assert entry["scale"] == 1.0  # despite --lora-init-without-apply: llama.cpp #28674
    assert [(a["id"], a["scale"]) for a in _adapters(lora_server.url)] == [(0, 0.0)]


def test_the_adapter_changes_the_greedy_answer_and_scale_0_does_not(
    lora_server: LoraServer,
) -> None:
    base = _complete(lora_server.url)
    adapted = _complete(lora_server.url, lora=ON)
    assert base.strip() and adapted.strip()
    assert adapted != base
    assert _complete(lora_server.url, lora=OFF) == base
    assert _complete(lora_server.url, lora=ON) == adapted  # deterministic
    assert _complete(lora_server.url) == base  # a per-request scale does not stick


def test_openai_completions_take_the_lora_field_too(lora_server: LoraServer) -> None:
    def complete(**extra: Any) -> str:
        body = {"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "seed": 42, **extra}
        body["cache_prompt"] = False
        response = httpx.post(f"{lora_server.url}/v1/completions", json=body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["text"])

    assert complete() == _complete(lora_server.url)
    assert complete(lora=ON) == _complete(lora_server.url, lora=ON) != complete()


def test_an_empty_lora_list_means_the_global_scales(lora_server: LoraServer) -> None:
    base = _complete(lora_server.url, lora=OFF)
    adapted = _complete(lora_server.url, lora=ON)
    assert _complete(lora_server.url, lora=[]) == base
    _set_global(lora_server.url, ON)
    try:
        assert _complete(lora_server.url) == adapted
        assert _complete(lora_server.url, lora=[]) == adapted  # not "no adapters"
        assert _complete(lora_server.url, lora=OFF) == base
    finally:
        _set_global(lora_server.url, OFF)
    assert _adapters(lora_server.url)[0]["scale"] == 0.0


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_refuses_to_start_with_an_incompatible_adapter(
    tmp_path: Path, llama_server: Path, gemma: Path, adapters: dict[str, Path], kind: str
) -> None:
    log = tmp_path / "llama-server.log"
    process, _ = _start(llama_server, gemma, adapters[kind], log)
    try:
        status = process.wait(timeout=STARTUP_S)
    finally:
        _stop(process)
    text = log.read_text()
    assert status == 1, text[-3000:]
    assert (
        f"llama_adapter_lora_init_from_file_ptr: failed to apply lora adapter: {REFUSALS[kind]}"
        in text
    )
    assert f"common_init_: failed to load lora adapter '{adapters[kind]}'" in text
    assert "llama_server: exiting due to model loading error" in text
