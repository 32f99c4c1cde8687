"""The e2e pod runner's pure parts and the stand-in mirror, without a cluster.

What the runner does with a live pod is covered end to end by tests/e2e/test_serving.py;
here: which images it runs, how container paths map onto host directories, ``$(VAR)``
expansion, the process-tree helpers, and the mirror's HTTP semantics.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e.mirror import ModelMirror
from e2e.podrunner import (
    descendants,
    expand,
    image_repository,
    our_repositories,
    pid_alive,
    rewrite_path,
)

from modeldeploy.config import OperatorConfig
from modeldeploy.runtimes import RUNTIMES

SHA = "a" * 64


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/modeldeploy/llamacpp:0.1.0", "ghcr.io/modeldeploy/llamacpp"),
        ("ghcr.io/modeldeploy/llamacpp:0.1.0-cuda", "ghcr.io/modeldeploy/llamacpp"),
        ("localhost:5000/vllm@sha256:" + SHA, "localhost:5000/vllm"),
        ("localhost:5000/vllm", "localhost:5000/vllm"),
        ("busybox", "busybox"),
    ],
)
def test_image_repository_drops_tag_and_digest(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_our_repositories_are_the_operator_configs_images() -> None:
    config = OperatorConfig()
    ours = our_repositories(config)
    for runtime in RUNTIMES.values():
        for gpu in (False, True):
            assert image_repository(runtime.image(config, gpu=gpu)) in ours
    assert image_repository(config.operator_image) in ours
    assert "docker.io/library/busybox" not in ours


MOUNTS = [
    ("/tmp", Path("/host/pod/tmp")),
    ("/models", Path("/host/pv")),
    ("/models/extra", Path("/host/extra")),
    ("/dev/termination-log", Path("/host/pod/termination/fetch")),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/models", "/host/pv"),
        ("/models/", "/host/pv/"),
        ("/models/a/b.gguf", "/host/pv/a/b.gguf"),
        ("/models/extra/x", "/host/extra/x"),  # the longest mount wins
        ("/modelsx", "/modelsx"),  # a prefix of a name is not a mount
        ("--cache=/models/c", "--cache=/host/pv/c"),
        ("/dev/termination-log", "/host/pod/termination/fetch"),
        ("/tmp", "/host/pod/tmp"),
        ("a,/models/x", "a,/models/x"),  # inside another string: not rewritten (documented)
        ("8000", "8000"),
    ],
)
def test_rewrite_path_maps_mounts_onto_host_dirs(value: str, expected: str) -> None:
    assert rewrite_path(value, MOUNTS) == expected


def test_expand_follows_kubernetes_rules() -> None:
    env = {"POD_IP": "127.1.0.7", "PORT": "8000"}
    assert expand("$(POD_IP):$(PORT)", env) == "127.1.0.7:8000"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(POD_IP)", env) == "$(POD_IP)"


def test_descendants_and_pid_alive_follow_a_process_tree() -> None:
    code = (
        "import subprocess; c = subprocess.Popen(['sleep', '60']); "
        "print(c.pid, flush=True); c.wait()"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert descendants(parent.pid) == [child]
        assert pid_alive(parent.pid) and pid_alive(child)
    finally:
        os.kill(child, 9)
        parent.wait(30)
        parent.stdout.close()
    assert not pid_alive(parent.pid) and not pid_alive(child)


def test_mirror_serves_head_ranges_and_refuses_a_changed_etag(tmp_path: Path) -> None:
    data = os.urandom(70_000)
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    with ModelMirror({"m.gguf": path}) as mirror:
        url = "http://" + mirror.url("m.gguf").removeprefix("https://")
        head = httpx.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        etag = head.headers["etag"]
        assert not etag.startswith("W/")
        part = httpx.get(url, headers={"Range": "bytes=10-19", "If-Match": etag})
        assert part.status_code == 206 and part.content == data[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
        assert httpx.get(url, headers={"If-Match": '"other"'}).status_code == 412
        assert httpx.get(url, headers={"Range": "bytes=99999999-"}).status_code == 416
        whole = httpx.get(url)
        assert hashlib.sha256(whole.content).hexdigest() == hashlib.sha256(data).hexdigest()
        assert httpx.get(url + "x").status_code == 404
        assert mirror.bytes_served == 10 + len(data)
