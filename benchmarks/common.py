"""What every benchmark prints and stores: the hardware line and the result file's name."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from sokit.device import device_name


def hardware(device: torch.device) -> str:
    """The device, CPU threads, torch version and the machine's 1-minute load average."""
    return (f"hardware: {device_name(device)} ({device.type}, {torch.get_num_threads()} CPU threads), "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")


def result_file(benchmark: str, device: torch.device) -> Path:
    """``benchmarks/<benchmark>_<device slug>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{device.type} {device_name(device)}".lower()).strip("-")
    return Path(__file__).resolve().parent / f"{benchmark}_{slug}.json"
