"""The machine a run measures on: its threads, the other load on it, and the record of both
beside the numbers (built on recon_ft.experiments.machine)."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import time
import warnings

import torch

from recon_ft.experiments.machine import cpu_model, library_versions


def busy_cores(seconds: float = 0.5) -> float | None:
    """Cores kept busy by other processes (this one sleeps meanwhile), from /proc/stat."""

    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    n = os.cpu_count() or 1
    return n * (1 - (idle1 - idle0) / max(1, total1 - total0))


def setup_runtime(device: torch.device, threads: int | None = None) -> tuple[int, float | None]:
    """Threads and quieter Lightning; returns (threads, cores busy with other work at the start).

    On a CPU, one intra-op thread per usable core that other processes leave free, and a single
    one on machines of 2 cores or fewer: OpenMP threads that outnumber the free cores wait on each
    other at every parallel region, and on a small shared machine any other process takes a core
    (on 2 cores with one taken, a tiny joint step went from 0.6 s to 5-18 s with 2 threads; 0.8 s
    with 1), which would make the ratios measure the neighbours rather than the code.
    """
    busy = busy_cores()
    if device.type == "cpu":
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        auto = 1 if usable <= 2 else max(1, usable - round(busy or 0))
        torch.set_num_threads(threads or auto)
    else:
        torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts, as Lightning advises
    import lightning  # noqa: F401  (it sets its loggers' levels on import: import first, then quieten)

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*modules? in eval mode at the start of training.*")
    warnings.filterwarnings("ignore", message=r".*(LoRA|lora).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")
    return torch.get_num_threads(), busy


def machine_info(device: torch.device, threads: int, busy: float | None = None) -> dict:
    versions = library_versions()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "busy_cores_at_start": busy,  # other processes' load: timings on a shared machine vary
        "loadavg_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        # torch's own version string: it keeps the build's local part (+cu130), which names the CUDA
        # build and which the installed package's metadata may lack
        "torch": torch.__version__,
        **{lib: versions[lib] for lib in ("lightning", "diffusers", "transformers")},
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    return info
