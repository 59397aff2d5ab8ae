"""Stable Diffusion 1.x / 2.x: the builder in model.py (the class is recon_ft.models.generator's
StableDiffusionGenerator), the published and tiny parts and the noise schedules in configs.py."""

from recon_ft.models.sd.model import build_stable_diffusion

__all__ = ["build_stable_diffusion"]
