"""Stable Diffusion 1.x / 2.x's builder. The model class is the generator interface's own
(recon_ft.models.generator.StableDiffusionGenerator); configs: recon_ft.models.sd.configs,
conf/generator/sd_*.yaml, sd15_arch.yaml, tiny_sd.yaml, tiny_sd2.yaml."""

from __future__ import annotations

import functools

from recon_ft.models.generator import StableDiffusionGenerator, build_cycle_decoder, finish_build, load_or_init_parts
from recon_ft.models.lora import AdapterSpec
from recon_ft.models.sd.configs import ARCHS, tiny_sd_components


def build_stable_diffusion(
    pretrained: str | None = None,
    tiny: dict | None = None,
    arch: str | None = None,
    cycle_decoder: str = "full",
    cycle_decoder_pretrained: str | None = None,
    unet_adapter: dict | AdapterSpec | None = None,
    text_encoder_adapter: dict | AdapterSpec | None = None,
    gradient_checkpointing: bool = False,
    save_base_to: str | None = None,
    init_seed: int = 0,
    pad_token: str = "<|endoftext|>",
    guidance_scale: float = 7.5,
) -> StableDiffusionGenerator:
    """Stable Diffusion 1.x / 2.x from `pretrained` (hub id or pipeline directory) or, offline, a tiny
    config or a published architecture with random weights (`arch`: "sd15", "sd21"). `pad_token`:
    the offline tiny build's tokenizer padding ("!" as SD 2.x's); a pretrained pipeline and an
    `arch` bring their own tokenizer. `guidance_scale`: the model's sampling default
    (StableDiffusionGenerator.guidance_scale).

    `cycle_decoder`: which decoder the text cycle backpropagates through. `full` is the VAE's;
    `tiny` is diffusers' AutoencoderTiny (TAESD), loaded from `cycle_decoder_pretrained` (a local
    copy of madebyollin/taesd, the one for SD v1/v2 latents) or random-init without it (then the
    text cycle's images are noise: for measuring cost only).
    """
    from transformers import CLIPTextModel

    from recon_ft.models.tokenizers import clip_tokenizer

    parts = load_or_init_parts(
        pretrained, arch, tiny, init_seed, archs=ARCHS, tiny_parts=tiny_sd_components,
        text_encoders={"text_encoder": CLIPTextModel},
        tokenizers={"tokenizer": functools.partial(clip_tokenizer, pad_token=pad_token)},
    )
    decoder = build_cycle_decoder(cycle_decoder, parts["vae"], cycle_decoder_pretrained, init_seed)
    generator = StableDiffusionGenerator(**parts, cycle_decoder=decoder)
    return finish_build(generator, pretrained, guidance_scale, unet_adapter, text_encoder_adapter,
                        gradient_checkpointing, save_base_to)
