"""`modeldeploy serve` of gemma 270M with a real GGUF LoRA adapter (written by e2e.lora).

The adapter comes from a pvc:// source like the model (a directory standing in for the
claim): the fetcher verifies and caches it, the launcher loads it unapplied and puts the
adapter router in front of llama-server, so the adapter is reached by its own model name.
Requests go to 127.0.0.1, bounded in tokens and time; waits poll with deadlines.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e.lora import write_lora_adapter
from e2e.models import claims_root
from e2e.runtime import LocalServe
from gemma_serve import EXAMPLE, SERVED_NAME

from modeldeploy.api import Adapter
from modeldeploy.fetch.resolve import resolve_adapter

ADAPTER = "gemma-3-270m-pirate"
CLAIM = "gemma3-270m-lora"
FILE = "gemma-lora.gguf"
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapter_file(gemma: Path) -> Path:
    """The adapter, in the stand-in claim pvc://gemma3-270m-lora/ (same bytes every run)."""
    return write_lora_adapter(gemma, claims_root() / CLAIM / FILE, seed=7)


def spec_with_adapter(tmp: Path, **adapter: Any) -> Path:
    """The local gemma example with one adapter from the stand-in claim."""
    md = yaml.safe_load(EXAMPLE.read_text())
    md["spec"]["adapters"] = [{"name": ADAPTER, "source": f"pvc://{CLAIM}/{FILE}", **adapter}]
    path = tmp / "gemma-lora.yaml"
    path.write_text(yaml.safe_dump(md))
    return path


def local(tmp: Path, spec: Path, env: dict[str, str]) -> LocalServe:
    """`modeldeploy serve -f SPEC` with a fresh cache under ``tmp``."""
    return LocalServe(
        spec, cache=tmp / "cache", pvc_root=claims_root(), extra_env=env, log=tmp / "serve.log"
    )


def complete(base_url: str, model: str) -> str:
    """A greedy completion of PROMPT by ``model``."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "seed": 1}
    response = httpx.post(f"{base_url}/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, runtime_env: dict[str, str], adapter_file: Path
) -> Iterator[LocalServe]:
    """gemma with the adapter, served once for the module."""
    tmp = tmp_path_factory.mktemp("lora")
    with local(tmp, spec_with_adapter(tmp), runtime_env) as serve:
        yield serve


def test_models_lists_the_base_and_the_adapter(served: LocalServe) -> None:
    listing = httpx.get(f"{served.url}/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in listing["data"]] == [SERVED_NAME, ADAPTER]
    assert listing["data"][1]["parent"] == SERVED_NAME


def test_the_adapter_answers_differently_and_the_base_stays_the_base(
    served: LocalServe, server: LocalServe
) -> None:
    # ``server`` is the same spec served without adapters (tests/runtime/conftest.py).
    plain = complete(server.url, SERVED_NAME)
    base = complete(served.url, SERVED_NAME)
    tuned = complete(served.url, ADAPTER)
    assert base == plain
    assert tuned != base
    # The base is unchanged after the adapter ran (no scale leaks between requests).
    assert complete(served.url, SERVED_NAME) == plain


@pytest.mark.parametrize("stream", [False, True])
def test_responses_name_the_model_asked_for(served: LocalServe, stream: bool) -> None:
    # llama-server names its alias (the base) in every response; the router renames.
    body = {"model": ADAPTER, "prompt": PROMPT, "max_tokens": 3, "stream": stream}
    with httpx.stream("POST", f"{served.url}/completions", json=body, timeout=TIMEOUT) as answer:
        assert answer.status_code == 200
        if not stream:
            assert json.loads(answer.read())["model"] == ADAPTER
            return
        events = [line for line in answer.iter_lines() if line.startswith("data: {")]
    assert events
    assert {json.loads(event.removeprefix("data: "))["model"] for event in events} == {ADAPTER}


def test_an_unknown_model_name_is_refused_openai_style(served: LocalServe) -> None:
    body = {"model": "no-such-adapter", "prompt": PROMPT, "max_tokens": 1}
    response = httpx.post(f"{served.url}/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_tampered_adapter_keeps_the_engine_from_starting(
    tmp_path: Path, runtime_env: dict[str, str], gemma: Path
) -> None:
    claim = claims_root() / f"{CLAIM}-tampered"
    good = write_lora_adapter(gemma, claim / FILE, seed=7)
    pinned = hashlib.sha256(good.read_bytes()).hexdigest()
    # The bytes change after the digest was pinned (one byte of a tensor flipped).
    data = bytearray(good.read_bytes())
    data[-1] ^= 0xFF
    good.write_bytes(bytes(data))
    source = f"pvc://{CLAIM}-tampered/{FILE}"
    revision = resolve_adapter(
        Adapter(name=ADAPTER, source=source),
        settings={"MODELDEPLOY_PVC_ROOT": str(claims_root())},
    ).revision
    md = yaml.safe_load(EXAMPLE.read_text())
    md["spec"]["adapters"] = [
        {"name": ADAPTER, "source": source, "revision": revision, "digests": {FILE: pinned}}
    ]
    spec = tmp_path / "tampered.yaml"
    spec.write_text(yaml.safe_dump(md))
    serve = local(tmp_path, spec, runtime_env)
    process = subprocess.run(
        serve.command, env=serve.env, capture_output=True, text=True, timeout=300, check=False
    )
    assert process.returncode != 0
    assert f"fetch of adapter {ADAPTER} failed" in process.stderr
    assert "sha256" in process.stderr
    assert process.stdout == ""  # no base URL: the engine never started
