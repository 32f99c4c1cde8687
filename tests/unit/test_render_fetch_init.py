"""The fetch init container (render/fetch_init.py): its command line, credentials, mounts,
security context, and the round trip through ``modeldeploy fetch``'s CLI."""

from __future__ import annotations

import argparse

from modeldeploy.api import ModelSource
from modeldeploy.config import OperatorConfig
from modeldeploy.fetch.cli import _request, configure_parser
from modeldeploy.fetch.envvars import AWS_SECRET_VARS, SECRET_KEYS, SECRET_VARS
from modeldeploy.fetch.request import FetchRequest
from modeldeploy.render.fetch_init import (
    fetch_command,
    fetch_env,
    fetch_init_container,
    fetch_secret_volume,
    served_path,
)

_SHA = "a" * 64
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


def test_fetch_init_container_shape() -> None:
    model = ModelSource.model_validate(
        {
            "source": "https://mirror.example/m.gguf",
            "revision": "etags-0123456789abcdef",
            "format": "gguf",
            "quantization": "Q4_K_M",
            "digests": {"m.gguf": _SHA},
            "credentialsSecret": "mirror-token",
        }
    )
    container, volumes = fetch_init_container(
        model,
        image="ghcr.io/modeldeploy/operator:1",
        cache_mount_path="/models",
        settings={"HF_ENDPOINT": "http://hub.internal"},
    )
    assert container["command"] == ["modeldeploy", "fetch"]
    args = container["args"]
    assert args[args.index("--source") + 1] == model.source
    assert args[args.index("--cache") + 1] == "/models"
    assert args[args.index("--revision") + 1] == "etags-0123456789abcdef"
    assert args[args.index("--digest") + 1] == f"m.gguf={_SHA}"
    assert args[args.index("--termination-log") + 1] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp", "/models"}
    token = next(e for e in container["env"] if e["name"] == "MODELDEPLOY_BEARER_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "mirror-token",
        "key": "MODELDEPLOY_BEARER_TOKEN",
        "optional": True,
    }
    assert {"name": "HF_ENDPOINT", "value": "http://hub.internal"} in container["env"]
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    assert volumes == []


def test_fetch_init_container_mounts_a_pvc_source_read_only() -> None:
    model = ModelSource.model_validate({"source": "pvc://weights/gemma/m.gguf"})
    container, volumes = fetch_init_container(model, image="i", cache_mount_path="/models")
    assert volumes == [
        {
            "name": "model-source",
            "persistentVolumeClaim": {"claimName": "weights", "readOnly": True},
        }
    ]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model-source")
    assert mount == {"name": "model-source", "mountPath": "/mnt/pvc/weights", "readOnly": True}


def test_the_secret_keys_are_the_credential_variables_the_fetcher_reads() -> None:
    # One home for the names: every key the init container maps is a variable the
    # fetcher treats as a secret (redacted, never printed).
    assert {key for keys in SECRET_KEYS.values() for key in keys} <= set(SECRET_VARS)
    assert SECRET_KEYS["s3"] == AWS_SECRET_VARS


def test_the_init_container_takes_the_model_pods_security_context() -> None:
    model = ModelSource.model_validate({"source": "hf://org/repo"})
    container, _ = fetch_init_container(model, image="i", cache_mount_path="/models")
    assert container["securityContext"] == OperatorConfig().container_security_context
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    custom = {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    container, _ = fetch_init_container(
        model, image="i", cache_mount_path="/models", security_context=custom
    )
    assert container["securityContext"] == custom
    assert container["securityContext"] is not custom  # a copy: rendered objects are owned
