"""What an experiment ran on: the processor, the libraries, the commit; recorded beside every
measured number, since a timing or a metric means something only with the machine that made it."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
from importlib import metadata

from recon_ft.utils import git_commit

LIBRARIES = ("torch", "lightning", "diffusers", "transformers", "peft")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return versions


def gpus() -> str | None:
    """"<n> x <name>" of the visible CUDA devices, or None."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # noqa: BLE001 - the record names the machine as far as it can
        pass
    return None


def machine() -> dict:
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "versions": library_versions(), "commit": git_commit(), "date": datetime.date.today().isoformat()}
    gpu = gpus()
    if gpu:
        info["gpu"] = gpu
    return info
