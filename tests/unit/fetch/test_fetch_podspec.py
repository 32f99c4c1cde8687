"""The init container's command line and credentials, and their round trip through the CLI."""

from __future__ import annotations

import argparse

from modeldeploy.api import ModelSource
from modeldeploy.fetch.cli import _request, configure_parser
from modeldeploy.fetch.podspec import fetch_command, fetch_env, fetch_secret_volume, served_path
from modeldeploy.fetch.request import FetchRequest

MODEL = ModelSource(
    source="hf://Qwen/Qwen2.5-7B-Instruct-GGUF",
    revision="main",
    quantization="Q4_K_M",
    files=["*q4_k_m*.gguf"],
    digests={"qwen2.5-7b-instruct-q4_k_m.gguf": "ab" * 32},
    credentials_secret="hf-token",
)


def test_the_command_pins_the_resolved_revision_and_carries_every_choice() -> None:
    argv = fetch_command(MODEL, "/cache", revision="c0ffee" * 6 + "abcd")
    assert argv[:2] == ["modeldeploy", "fetch"]
    assert argv[argv.index("--revision") + 1] == "c0ffee" * 6 + "abcd"
    assert argv[-2:] == ["--termination-log", "/dev/termination-log"]
    assert "hf-token" not in " ".join(argv)


def test_the_command_parses_back_into_the_same_request() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(fetch_command(MODEL, "/cache")[2:])
    assert _request(args) == FetchRequest.from_model(MODEL)


def test_credentials_come_only_from_secret_key_refs() -> None:
    env = fetch_env(MODEL)
    assert env == [
        {
            "name": "HF_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN", "optional": True}
            },
        }
    ]
    s3 = ModelSource(source="s3://bucket/m", credentials_secret="aws")
    assert [e["name"] for e in fetch_env(s3)] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ]
    assert fetch_env(ModelSource(source="s3://bucket/m")) == []
    gs = ModelSource(source="gs://bucket/m", credentials_secret="gcp")
    volume, mount = fetch_secret_volume(gs) or ({}, {})
    assert volume["secret"]["secretName"] == "gcp"
    assert fetch_env(gs)[-1]["value"].startswith(mount["mountPath"])


def test_the_served_path_is_inside_the_cache_layout() -> None:
    path = served_path("/cache", "hf://org/repo@main", "abc", "m-Q4_K_M.gguf")
    assert path.startswith("/cache/") and path.endswith("/abc/m-Q4_K_M.gguf")
