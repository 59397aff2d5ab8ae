"""Every family's published architectures by name, gathered from the families' configs.ARCHS: the
tables the architecture tests and the benchmarks walk. A family's builder looks its `arch` up in its
own table; a new family adds its table here to be listed.

Captioner entries give a transformers config, generator entries a dict of random-init pipeline
parts (build them under `torch.device("meta")` to count parameters without memory).
"""

from __future__ import annotations

from recon_ft.models.blip import configs as blip
from recon_ft.models.blip2 import configs as blip2
from recon_ft.models.git import configs as git
from recon_ft.models.sd import configs as sd
from recon_ft.models.sdxl import configs as sdxl

CAPTIONER_ARCHS = {**blip.ARCHS, **blip2.ARCHS, **git.ARCHS}
# Stable Diffusion 1.x / 2.x (build_stable_diffusion) and SDXL (build_sdxl) take different parts.
GENERATOR_ARCHS = {**sd.ARCHS, **sdxl.ARCHS}


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"{what}: unknown arch {name!r}; available: {sorted(table)}")
    return table[name]


def captioner_arch(name: str):
    return _lookup(CAPTIONER_ARCHS, name, "captioner")()


def generator_arch(name: str) -> dict:
    return _lookup(GENERATOR_ARCHS, name, "generator")()
