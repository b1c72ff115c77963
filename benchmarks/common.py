"""What every benchmark prints and stores: the hardware line, the machine's record and the result file's name."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

import sokit
from sokit.device import device_name
from sokit.experiments.provenance import git_commit, git_dirty


def hardware(device: torch.device) -> str:
    """The device, CPU threads, torch version and the machine's 1-minute load average."""
    return (f"hardware: {device_name(device)} ({device.type}, {torch.get_num_threads()} CPU threads), "
            f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}")


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo (None where it is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))
    return len(cores) or None


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what a benchmark ran: CPU model, cores, threads, GPU, versions, commit, dirty."""
    return {"device": device_name(device), "device_type": device.type,
            "cpu": device_name("cpu"), "cpu_logical": os.cpu_count(), "cpu_physical": physical_cores(),
            "cpu_threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if device.type == "cuda" else None,
            "python_version": platform.python_version(), "sokit_version": sokit.__version__,
            "commit": git_commit(), "dirty": git_dirty()}


def result_file(benchmark: str, device: torch.device) -> Path:
    """``benchmarks/<benchmark>_<device slug>.json``."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{device.type} {device_name(device)}".lower()).strip("-")
    return Path(__file__).resolve().parent / f"{benchmark}_{slug}.json"
