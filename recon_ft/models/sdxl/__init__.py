"""SDXL (stabilityai/stable-diffusion-xl-base-1.0): the class and builder in model.py, the published
and tiny parts in configs.py."""

from recon_ft.models.sdxl.model import SDXLCond, StableDiffusionXLGenerator, build_sdxl

__all__ = ["SDXLCond", "StableDiffusionXLGenerator", "build_sdxl"]
