"""Where sokit trains: the default device and a readable name for it."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: str | torch.device | None = None) -> str:
    """The GPU's name on CUDA, else the CPU model from /proc/cpuinfo (or the platform)."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
