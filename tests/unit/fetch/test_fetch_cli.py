"""``modeldeploy fetch`` as the init container runs it: exit codes, one-line errors, results."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.unit.fetch.conftest import HUB_TOKEN, published_files, sha256
from tests.unit.fetch.payloads import GgufFactory
from tests.unit.fetch.standins import HubStandin

from modeldeploy.cli import main as modeldeploy_main
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


def _deployment(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "tiny"},
        "spec": {"model": model},
    }


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``fetch`` installs its own stderr handler on the root logger: put pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("missing.yaml", None, "missing.yaml: No such file or directory"),
        (
            "bad.yaml",
            "spec: [unclosed\n",
            "bad.yaml: not valid YAML: line 2, column 1: expected ',' or ']', but got "
            "'<stream end>' (while parsing a flow sequence)",
        ),
        (
            "two.yaml",
            yaml.safe_dump_all([_deployment({"source": "hf://a/b"})] * 2),
            "two.yaml: expected one ModelDeployment, found 2",
        ),
        (
            "scheme.yaml",
            yaml.safe_dump(_deployment({"source": "ftp://a/b"})),
            "spec.model.source: 'ftp://a/b' must be a URI with scheme hf://",
        ),
        (
            "unknown.yaml",
            yaml.safe_dump(_deployment({"source": "hf://a/b", "colour": "red"})),
            "spec.model.colour: unknown field; allowed: source, ",
        ),
        (
            "nomodel.yaml",
            yaml.safe_dump({**_deployment({}), "spec": {}}),
            "spec.model: required field is missing",
        ),
    ],
)
@pytest.mark.usefixtures("restore_logging")
def test_a_bad_model_yaml_exits_2_with_one_line_and_no_traceback(
    name: str, content: str | None, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    log = tmp_path / "termination-log"
    argv = ["fetch", "-f", str(path), "--cache", str(tmp_path / "c"), "--termination-log", str(log)]
    code = modeldeploy_main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.startswith("modeldeploy fetch: error: ") and err.count("\n") == 1, err
    assert says in err and "Traceback" not in err
    message = err.strip().removeprefix("modeldeploy fetch: error: ")
    assert json.loads(log.read_text()) == {"error": message, "reason": "InvalidInput"}
    assert not (tmp_path / "c").exists()


@pytest.mark.usefixtures("restore_logging")
def test_a_bad_digest_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fetch", "--source", "hf://a/b", "--digest", "x.gguf=abc", "--cache", str(tmp_path)]
    code = modeldeploy_main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "modeldeploy fetch: error: --digest 'x.gguf=abc': expected FILE=SHA256 "
        "(64 hex characters)\n"
    )


def test_a_bad_model_yaml_as_a_process_prints_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("spec: [unclosed\n")
    done = subprocess.run(
        [sys.executable, "-m", "modeldeploy", "fetch", "-f", str(path), "--cache", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"modeldeploy fetch: error: {path}: not valid YAML: line 2")
