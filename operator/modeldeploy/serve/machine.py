"""This machine as a Kubernetes Node object, so local mode plans with the cluster planner.

The labels are the ones Node Feature Discovery and GPU Feature Discovery would publish
(CPU feature flags from ``/proc/cpuinfo``; GPU product, memory, count and compute
capability from ``nvidia-smi``), the allocatable CPUs and memory are what this process may
use (affinity mask, ``MemTotal``). The parsers are pure; ``local_node`` reads the machine.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modeldeploy.nodes import (
    GPU_RESOURCE,
    LABEL_AMXBF16,
    LABEL_ARCH,
    LABEL_AVX2,
    LABEL_AVX512F,
    LABEL_COMPUTE_MAJOR,
    LABEL_COMPUTE_MINOR,
    LABEL_GPU_COUNT,
    LABEL_GPU_MEMORY,
    LABEL_GPU_PRESENT,
    LABEL_GPU_PRODUCT,
)
from modeldeploy.serve.supervisor import available_cpus

NODE_NAME = "local"
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# /proc/cpuinfo flag -> NFD cpu-cpuid label.
_CPU_FLAGS = {"avx2": LABEL_AVX2, "avx512f": LABEL_AVX512F, "amx_bf16": LABEL_AMXBF16}
NVIDIA_SMI_QUERY = "--query-gpu=name,memory.total,compute_cap"


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it."""

    name: str
    memory_mib: int
    compute_capability: tuple[int, int] | None


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in ``/proc/cpuinfo`` text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def mem_total_bytes(meminfo: str) -> int:
    """``MemTotal`` from ``/proc/meminfo`` text, in bytes (0 if absent)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def parse_nvidia_smi(csv: str) -> list[Gpu]:
    """GPUs from ``nvidia-smi NVIDIA_SMI_QUERY --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in csv.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[1].isdigit():
            continue
        capability = None
        if len(fields) > 2 and "." in fields[2]:
            major, _, minor = fields[2].partition(".")
            if major.isdigit() and minor.isdigit():
                capability = (int(major), int(minor))
        gpus.append(Gpu(fields[0], int(fields[1]), capability))
    return gpus


def gfd_product(name: str) -> str:
    """A GPU name as GPU Feature Discovery labels it (spaces become dashes)."""
    return "-".join(name.split())


def node_object(
    *,
    arch: str,
    cpus: int,
    memory_bytes: int,
    flags: set[str],
    gpus: Sequence[Gpu] = (),
    name: str = NODE_NAME,
) -> dict[str, Any]:
    """A Ready Node object with NFD/GFD labels and allocatable resources."""
    labels = {LABEL_ARCH: arch, "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if arch == "amd64":
        for flag, label in _CPU_FLAGS.items():
            if flag in flags:
                labels[label] = "true"
    allocatable: dict[str, str] = {"cpu": str(cpus), "memory": f"{memory_bytes // 1024}Ki"}
    if gpus:
        # One product per node, as GFD assumes; a mixed machine plans on its smallest GPU.
        smallest = min(gpus, key=lambda g: g.memory_mib)
        labels[LABEL_GPU_PRESENT] = "true"
        labels[LABEL_GPU_PRODUCT] = gfd_product(smallest.name)
        labels[LABEL_GPU_MEMORY] = str(smallest.memory_mib)
        labels[LABEL_GPU_COUNT] = str(len(gpus))
        if smallest.compute_capability is not None:
            labels[LABEL_COMPUTE_MAJOR] = str(smallest.compute_capability[0])
            labels[LABEL_COMPUTE_MINOR] = str(smallest.compute_capability[1])
        allocatable[GPU_RESOURCE] = str(len(gpus))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "allocatable": allocatable,
            "capacity": dict(allocatable),
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"architecture": arch, "operatingSystem": "linux"},
        },
    }


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def local_gpus() -> list[Gpu]:
    """The NVIDIA GPUs nvidia-smi lists, or none (no driver, no tool, or it fails)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run(
            [smi, NVIDIA_SMI_QUERY, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []


def local_node() -> dict[str, Any]:
    """This machine as a Node object."""
    machine = platform.machine().lower()
    return node_object(
        arch=_ARCHES.get(machine, machine),
        cpus=available_cpus(),
        memory_bytes=mem_total_bytes(_read("/proc/meminfo")) or _physical_memory(),
        flags=cpu_flags(_read("/proc/cpuinfo")),
        gpus=local_gpus(),
    )


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
