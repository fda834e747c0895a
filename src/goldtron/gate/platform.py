"""Name the machine a run happens on, so the gate picks the golden file recorded on its kind.

GPUs are named as Megatron names them (`dgx_h100`, `dgx_a100`, `dgx_h200`, `dgx_gb200`, ...).
CPUs are named `cpu_<vendor>_<isa>` (`cpu_intel_avx512`, `cpu_amd_avx2`, ...): the vector
instruction set PyTorch dispatches to (`torch.backends.cpu.get_cpu_capability()`) and the
vendor together decide which matmul and reduction kernels run (the BLAS picks different code
paths on Intel and AMD parts with the same ISA), and so the order of fp32 additions: they are
what makes two CPUs give different bits for the same run. The thread count also changes the
bits, but it is a property of the case (pin it in ENV_VARS), not of the machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_ENVIRONMENT = "dev"
# Substring of torch.cuda.get_device_name() -> Megatron's platform name; first match wins,
# so the longer names (GB200 before B200, H200 before H100's prefix) come first.
GPU_PLATFORMS = (
    ("GB200", "dgx_gb200"),
    ("GB300", "dgx_gb300"),
    ("B200", "dgx_b200"),
    ("H200", "dgx_h200"),
    ("H100", "dgx_h100"),
    ("A100", "dgx_a100"),
)


def gpu_platform_name(device_name: str) -> str:
    for marker, platform in GPU_PLATFORMS:
        if marker in device_name.upper():
            return platform
    return "gpu_" + re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def cpu_platform_name(capability: str, vendor: str | None = None) -> str:
    parts = ["cpu"] + ([vendor] if vendor else []) + [capability]
    return "_".join(re.sub(r"[^a-z0-9]+", "_", part.lower()).strip("_") for part in parts)


CPU_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def cpu_vendor() -> str | None:
    """`intel`, `amd`, or None when /proc/cpuinfo names neither (other vendors: ISA only)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return CPU_VENDORS.get(line.split(":", 1)[1].strip())
    except OSError:
        return None
    return None


NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def nvidia_gpu_models() -> list[str]:
    """Model names of the NVIDIA GPUs this process may use, read from the driver (no torch
    import: importing torch costs the gate seconds before every case)."""
    if not NVIDIA_GPUS.is_dir():
        return []
    models = []
    for info in sorted(NVIDIA_GPUS.glob("*/information")):
        for line in info.read_text(errors="replace").splitlines():
            if line.startswith("Model:"):
                models.append(line.split(":", 1)[1].strip())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        models = models[: len([d for d in visible.split(",") if d.strip()])]
    return models


def cpu_capability() -> str:
    """The vector ISA ATen dispatches to, as `torch.backends.cpu.get_cpu_capability()` says.

    x86 is read from /proc/cpuinfo with ATen's own rule (AVX512 needs avx512f/bw/vl/dq,
    AVX2 needs avx2 and fma) and its ATEN_CPU_CAPABILITY override; other CPUs ask torch.
    """
    override = os.environ.get("ATEN_CPU_CAPABILITY")
    if override:
        return override.upper()
    flags = _cpu_flags()
    if flags is None:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    if {"avx2", "fma"} <= flags:
        return "AVX2"
    return "DEFAULT"


def _cpu_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def detect_platform() -> str:
    models = nvidia_gpu_models()
    if models:
        return gpu_platform_name(models[0])
    return cpu_platform_name(cpu_capability(), cpu_vendor())


def gpu_count() -> int:
    return len(nvidia_gpu_models())


def device_description() -> str:
    """Human-readable device and CPU model, for provenance (read from /proc: no torch import)."""
    import platform as std_platform

    cpu = _cpu_model() or std_platform.processor() or std_platform.machine()
    models = nvidia_gpu_models()
    if models:
        return f"{len(models)} x {models[0]}; CPU {cpu}"
    return f"CPU {cpu} ({cpu_capability()}, {len(os.sched_getaffinity(0))} threads)"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
