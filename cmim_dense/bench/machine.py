"""What a timing ran on: the CPU, and the instruction sets of torch's and OpenVINO's kernels.

A ceiling set in the environment shows here as it takes effect: ``ATEN_CPU_CAPABILITY`` in
torch's capability, ``ONEDNN_MAX_CPU_ISA`` (which torch's oneDNN convolutions honour, and
OpenVINO's float ones) as it was set, and OpenVINO's BinaryConvolution kernel, which that
variable does not cap, as the plugin compiled it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from cmim_dense.deploy.runtime import binary_convolution_kernel
from cmim_dense.utils.processes import in_fresh_process


def cpu_name() -> str:
    """The CPU's model name: ``model name`` of /proc/cpuinfo (Linux), else the platform's."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def machine(probe_here: bool = False) -> dict[str, str | int | None]:
    """``cpu`` name, ``cores`` (the logical CPUs this process may run on: its affinity on
    Linux, which a cgroup quota does not narrow; else all of them), ``torch_cpu_capability``,
    ``onednn_max_cpu_isa`` (the environment's, None if unset) and
    ``openvino_binary_convolution`` (None: the plugin has no such kernel).

    ``probe_here``: compile OpenVINO's probe in this process, for a process that has run
    OpenVINO already and trains nothing after; else in a fresh one (about 4 s;
    :func:`~cmim_dense.utils.processes.in_fresh_process`, whose process dying raises).
    """
    affinity = getattr(os, "sched_getaffinity", None)
    return dict(
        cpu=cpu_name(),
        cores=len(affinity(0)) if affinity else os.cpu_count(),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
        openvino_binary_convolution=(
            binary_convolution_kernel()
            if probe_here
            else in_fresh_process(binary_convolution_kernel)
        ),
    )


def machine_line(info: dict) -> str:
    """:func:`machine` in one line, e.g. ``AMD EPYC, 2 cores; torch kernels AVX512; OpenVINO
    BinaryConvolution jit_avx512_u1``."""
    parts = [
        f"{info['cpu']}, {info['cores']} cores",
        f"torch kernels {info['torch_cpu_capability']}",
    ]
    if info["onednn_max_cpu_isa"]:
        parts.append(f"ONEDNN_MAX_CPU_ISA={info['onednn_max_cpu_isa']}")
    parts.append(f"OpenVINO BinaryConvolution {info['openvino_binary_convolution'] or 'none'}")
    return "; ".join(parts)
