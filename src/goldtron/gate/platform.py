"""Name the machine a run happens on, so the gate picks the golden file recorded on its kind.

GPUs are named as Megatron names them (`dgx_h100`, `dgx_a100`, `dgx_h200`, `dgx_gb200`, ...).
CPUs are named `cpu_<isa>` from the vector instruction set PyTorch dispatches to
(`torch.backends.cpu.get_cpu_capability()`: `cpu_avx512`, `cpu_avx2`, `cpu_default`, ...):
the kernel ATen picks for matmul and reductions changes the order of fp32 additions, so the
ISA is what makes two CPUs give different bits for the same run. The thread count also
changes the bits, but it is a property of the case (pin it in ENV_VARS), not of the machine.
"""

from __future__ import annotations

import re

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


def cpu_platform_name(capability: str) -> str:
    return "cpu_" + re.sub(r"[^a-z0-9]+", "_", capability.lower()).strip("_")


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def detect_platform() -> str:
    import torch

    if has_gpu():
        return gpu_platform_name(torch.cuda.get_device_name(0))
    return cpu_platform_name(torch.backends.cpu.get_cpu_capability())


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_description() -> str:
    """Human-readable device and CPU model, for provenance."""
    import platform as std_platform

    import torch

    cpu = _cpu_model() or std_platform.processor() or std_platform.machine()
    if has_gpu():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}; CPU {cpu}"
    return f"CPU {cpu} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None
