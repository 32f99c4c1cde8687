"""``modeldeploy fetch`` as the init container runs it: exit codes, one-line errors, results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.unit.fetch.conftest import HUB_TOKEN, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin

from modeldeploy.fetch.provenance import termination_message

REPO = "acme/Tiny-GGUF"


@pytest.fixture
def repo(hub: HubStandin, ggufs: GgufFactory) -> dict[str, bytes]:
    files = {"t-Q4_K_M.gguf": ggufs.model("Q4_K_M"), "t-Q8_0.gguf": ggufs.model("Q8_0")}
    hub.repo(REPO).license = "mit"
    hub.repo(REPO).commit(files)
    return files


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [sys.executable, "-m", "modeldeploy.fetch", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_a_fetch_exits_zero_and_writes_its_result_to_the_termination_log(
    hub_env: dict[str, str], repo: dict[str, bytes], tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    args = [
        "--source",
        f"hf://{REPO}",
        "--quantization",
        "q4_k_m",
        "--cache",
        str(tmp_path / "c"),
        "--termination-log",
        str(log),
    ]
    done = run(args, hub_env)
    assert done.returncode == 0, done.stderr
    result = json.loads(log.read_text())
    assert result["files"] == [
        {
            "name": "t-Q4_K_M.gguf",
            "size": len(repo["t-Q4_K_M.gguf"]),
            "sha256": sha256(repo["t-Q4_K_M.gguf"]),
        }
    ]
    assert result["bytesTransferred"] == len(repo["t-Q4_K_M.gguf"]) and not result["cached"]
    assert json.loads(done.stdout) == result
    again = run([*args, "--revision", result["revision"]], {})  # warm, pinned: no Hub needed
    assert again.returncode == 0, again.stderr
    assert json.loads(log.read_text())["bytesTransferred"] == 0
    for text in (done.stdout, done.stderr, log.read_text()):
        assert HUB_TOKEN not in text


def test_a_digest_mismatch_exits_3_with_one_line(
    hub_env: dict[str, str], repo: dict[str, bytes], tmp_path: Path
) -> None:
    log = tmp_path / "termination-log"
    done = run(
        [
            "--source",
            f"hf://{REPO}",
            "--quantization",
            "Q8_0",
            "--revision",
            "main",
            "--digest",
            "t-Q8_0.gguf=" + "ab" * 32,
            "--cache",
            str(tmp_path / "c"),
            "--termination-log",
            str(log),
        ],
        hub_env,
    )
    assert done.returncode == 3
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith("modeldeploy fetch: error: ")
    assert "pinned sha256 abababababab" in errors[0]
    assert json.loads(log.read_text())["reason"] == "DigestMismatch"
    assert published_files(tmp_path / "c") == []


def test_a_missing_quantization_exits_4_listing_what_exists(
    hub_env: dict[str, str], repo: dict[str, bytes], tmp_path: Path
) -> None:
    done = run(
        ["--source", f"hf://{REPO}", "--quantization", "Q2_K", "--cache", str(tmp_path)], hub_env
    )
    assert done.returncode == 4
    assert done.stderr.strip().splitlines()[-1].endswith("available: Q4_K_M, Q8_0")


def test_a_denied_credential_exits_5_and_the_secret_is_never_printed(
    hub: HubStandin, repo: dict[str, bytes], tmp_path: Path
) -> None:
    wrong = "hf_this_token_is_wrong_and_secret_42"
    log = tmp_path / "termination-log"
    done = run(
        ["--source", f"hf://{REPO}", "--cache", str(tmp_path / "c"), "--termination-log", str(log)],
        {"HF_ENDPOINT": hub.url, "HF_TOKEN": wrong},
    )
    assert done.returncode == 5
    assert "rejected HF_TOKEN" in done.stderr
    for text in (done.stdout, done.stderr, log.read_text()):
        assert wrong not in text


def test_a_model_yaml_is_accepted(
    hub_env: dict[str, str], repo: dict[str, bytes], tmp_path: Path
) -> None:
    spec = {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny"},
        "spec": {
            "model": {
                "source": f"hf://{REPO}",
                "quantization": "Q8_0",
                "credentialsSecret": "hf-token",
            }
        },
    }
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = run(["-f", str(path), "--cache", str(tmp_path / "c")], hub_env)
    assert done.returncode == 0, done.stderr
    assert [f["name"] for f in json.loads(done.stdout)["files"]] == ["t-Q8_0.gguf"]


def test_the_termination_message_fits_kubernetes_4096_bytes() -> None:
    payload = {
        "revision": "a" * 40,
        "files": [
            {"name": f"model-{i:05d}-of-00200.safetensors", "size": i, "sha256": "f" * 64}
            for i in range(200)
        ],
    }
    text = termination_message(payload)
    assert len(text.encode()) <= 4096
    data = json.loads(text)
    assert data["revision"] == "a" * 40
    assert data["filesOmitted"] == 200 - len(data["files"]) > 0
