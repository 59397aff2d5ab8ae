"""The module the bench measures: a captioner + generator pair of one size with the adapters and
optimizer of settings.measured(), and the switch between the text cycle's two decoders."""

from __future__ import annotations

import torch

from recon_ft.experiments.bench.settings import SizePreset, measured


def build_module(size: SizePreset, gradient_checkpointing: bool = False, init_seed: int = 0):
    from recon_ft.models.blip import build_blip
    from recon_ft.models.sd import build_stable_diffusion
    from recon_ft.training.module import ReconModule

    m = measured()
    captioner = build_blip(adapter=m.captioner_adapter, init_seed=init_seed, **size.captioner)
    generator = build_stable_diffusion(unet_adapter=m.unet_adapter, init_seed=init_seed, **size.generator)
    if gradient_checkpointing:
        captioner.enable_gradient_checkpointing()
        generator.enable_gradient_checkpointing()
    return ReconModule(captioner, generator, loss=m.joint, optim=m.optim)


def set_cycle_decoder(module, kind: str, device: torch.device, gradient_checkpointing: bool, cache: dict) -> None:
    """The text cycle decodes with the VAE's decoder ("full") or the tiny TAESD one, built once
    into `cache`."""
    from recon_ft.models.generator import build_cycle_decoder

    generator = module.generator
    if kind == "full":
        generator.cycle_decoder = None
        return
    if "tiny" not in cache:
        cache["tiny"] = build_cycle_decoder("tiny", generator.vae).to(device)
    generator.cycle_decoder = cache["tiny"]
    if gradient_checkpointing:
        generator.enable_gradient_checkpointing()
