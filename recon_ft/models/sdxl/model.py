"""SDXL behind the generator interface (recon_ft.models.generator): two text encoders, pooled text
embeddings and size / crop conditioning. The class and its builder; configs: recon_ft.models.sdxl.configs,
conf/generator/sdxl_base.yaml, tiny_sdxl.yaml, zoo_sdxl.yaml.

What differs from Stable Diffusion 1.x / 2.x, as in diffusers' StableDiffusionXLPipeline:
  - two CLIP text encoders on the same tokens: `text_encoder` (CLIP ViT-L, 768) and `text_encoder_2`
    (OpenCLIP bigG with a projection, 1280). The UNet attends to both *penultimate* hidden states
    concatenated, (B, 77, 768 + 1280); no final layer norm on them.
  - added conditioning: the second encoder's pooled embedding (final layer norm at the EOS position,
    then its text projection), (B, 1280), and six numbers per image, (original height, width, crop
    top, left, target height, width), (B, 6). Training images here are resized to the model's
    resolution without cropping, so they are (S, S, 0, 0, S, S), which is also what the pipeline
    passes at sampling time.
So `cond` is an `SDXLCond`; the losses never look inside it.

The vocabulary bridge: both tokenizers are CLIP's BPE with the same 49,408 tokens, id for id (they
differ only in padding: "<|endoftext|>" for the first, "!" for the second), so one bridge B built
against the first tokenizer serves both: the soft caption q = p B is embedded with each encoder's
own token table (768- and 1280-wide) and each sequence gets its tokenizer's BOS / EOS / padding.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from recon_ft.models.generator import (
    StableDiffusionGenerator,
    build_cycle_decoder,
    finish_build,
    load_or_init_parts,
    soft_sequence,
)
from recon_ft.models.lora import AdapterSpec, critic_call
from recon_ft.models.sdxl.configs import ARCHS, tiny_sdxl_components


@dataclass
class SDXLCond:
    hidden_states: torch.Tensor  # (B, 77, D1 + D2): both encoders' penultimate states
    text_embeds: torch.Tensor  # (B, D2_proj): the second encoder's pooled, projected embedding
    time_ids: torch.Tensor  # (B, 6): original size, crop top-left, target size

    def unet_kwargs(self) -> dict:
        return {
            "encoder_hidden_states": self.hidden_states,
            "added_cond_kwargs": {"text_embeds": self.text_embeds, "time_ids": self.time_ids},
        }


class StableDiffusionXLGenerator(StableDiffusionGenerator):
    """The VAE, noise schedule and sampling of StableDiffusionGenerator; SDXL's text conditioning."""

    text_states_cacheable = False  # cond is a structure, not one (77, D) tensor per caption

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler, cycle_decoder=None):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, cycle_decoder)
        if tokenizer.get_vocab() != tokenizer_2.get_vocab():
            raise ValueError("SDXL: the two tokenizers must share one vocabulary (the soft caption feeds both)")
        if int(tokenizer_2.model_max_length) != self.max_length:
            raise ValueError(f"SDXL: tokenizer_2.model_max_length {tokenizer_2.model_max_length} != {self.max_length}")
        self.text_encoder_2 = text_encoder_2
        self.tokenizer_2 = tokenizer_2

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline

    def adapter_parts(self) -> dict[str, nn.Module]:
        return {"unet": self.unet, "text_encoder": self.text_encoder, "text_encoder_2": self.text_encoder_2}

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder, self.text_encoder_2]

    @property
    def token_embedding_2(self) -> nn.Embedding:
        return self.text_encoder_2.text_model.embeddings.token_embedding  # WithProjection wraps a text_model

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, captions: list[str], device=None) -> torch.Tensor:
        """(B, 2, 77): the ids of each tokenizer (they differ in padding only)."""
        ids = torch.stack([
            tok(captions, padding="max_length", truncation=True, max_length=self.max_length,
                return_tensors="pt").input_ids
            for tok in (self.tokenizer, self.tokenizer_2)
        ], dim=1)
        return ids.to(device) if device is not None else ids

    def encode_text(self, input_ids: torch.Tensor, critic: bool = False) -> SDXLCond:
        """(B, 2, 77) ids from `tokenize` -> SDXLCond."""
        ids_1, ids_2 = input_ids[:, 0], input_ids[:, 1]
        eos = (ids_2 == self.tokenizer_2.eos_token_id).int().argmax(1)  # (B,): first EOS
        return self._encode(self.token_embedding(ids_1), self.token_embedding_2(ids_2), eos, critic)

    def encode_bridged(self, bridge, probs, next_continues, lengths, critic: bool = False) -> SDXLCond:
        """One bridge, two embedding tables: probs (B, N, |V_C|) -> (B, N, D1) and (B, N, D2)."""
        embeds_1 = bridge.embed(probs, self.token_embedding.weight, next_continues)
        embeds_2 = bridge.embed(probs, self.token_embedding_2.weight, next_continues)
        return self.encode_soft((embeds_1, embeds_2), lengths, critic=critic)

    def encode_soft(self, token_embeds: tuple[torch.Tensor, torch.Tensor], lengths: torch.Tensor,
                    critic: bool = False) -> SDXLCond:
        """Soft tokens for each encoder ((B, N, D1), (B, N, D2)), valid for lengths[b] -> SDXLCond."""
        seq_1 = soft_sequence(token_embeds[0], lengths, self.token_embedding, self.tokenizer)
        seq_2 = soft_sequence(token_embeds[1], lengths, self.token_embedding_2, self.tokenizer_2)
        eos = lengths.clamp(max=self.max_length - 2) + 1  # where soft_sequence put EOS
        return self._encode(seq_1, seq_2, eos, critic)

    def _encode(self, seq_1: torch.Tensor, seq_2: torch.Tensor, eos: torch.Tensor, critic: bool) -> SDXLCond:
        run = critic_call if critic else (lambda module, *args: module(*args))
        h1, _ = run(_PenultimateText(self.text_encoder), seq_1, eos)  # (B, 77, D1)
        h2, pooled = run(_PenultimateText(self.text_encoder_2), seq_2, eos)  # (B, 77, D2), (B, P)
        b = seq_1.shape[0]
        s = float(self.image_size)
        time_ids = torch.tensor([s, s, 0.0, 0.0, s, s], device=h1.device, dtype=h1.dtype).expand(b, 6)
        return SDXLCond(torch.cat([h1, h2], dim=-1), pooled, time_ids)

    def encode_embeddings(self, token_embeds, critic: bool = False):
        raise NotImplementedError("SDXL: use encode_text or encode_soft (two encoders)")

    # -- diffusion ------------------------------------------------------------------------------
    def denoise(self, noisy_latents, timesteps, cond: SDXLCond, critic: bool = False) -> torch.Tensor:
        if critic:
            return critic_call(self.unet, noisy_latents, timesteps, **cond.unet_kwargs()).sample
        return self.unet(noisy_latents, timesteps, **cond.unet_kwargs()).sample

    def pipeline(self):
        pipe = self.pipeline_class(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.scheduler,
            add_watermarker=False,  # would need the invisible-watermark package; images stay as made
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


class _PenultimateText(nn.Module):
    """A CLIP text encoder's body on token embeddings (a view sharing its modules) ->
    (penultimate hidden state (B, 77, D), pooled embedding (B, P) or None).

    The pooled one is the final layer's output, final-layer-normed, at each row's EOS position,
    through `text_projection` where the model has one (CLIPTextModelWithProjection).
    """

    def __init__(self, text_encoder):
        super().__init__()
        body = getattr(text_encoder, "text_model", text_encoder)  # WithProjection keeps a text_model
        self.embeddings = body.embeddings
        self.layers = body.encoder.layers
        self.final_layer_norm = body.final_layer_norm
        self.text_projection = getattr(text_encoder, "text_projection", None)
        self._config = text_encoder.config

    def forward(self, token_embeds: torch.Tensor, eos: torch.Tensor):
        from transformers.masking_utils import create_causal_mask

        hidden = self.embeddings(inputs_embeds=token_embeds)
        # Positional: the cache argument is `past_key_values` before transformers 5.2x and `cache` after.
        mask = create_causal_mask(self._config, hidden, None, None)  # (config, embeds, attention mask, cache)
        for layer in self.layers[:-1]:
            hidden = layer(hidden, mask, is_causal=True)
        penultimate = hidden
        if self.text_projection is None:  # the first encoder: only its penultimate state is used
            return penultimate, None
        last = self.final_layer_norm(self.layers[-1](hidden, mask, is_causal=True))
        pooled = last[torch.arange(last.shape[0], device=last.device), eos]  # (B, D)
        return penultimate, self.text_projection(pooled)


def build_sdxl(
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
    guidance_scale: float = 7.5,
) -> StableDiffusionXLGenerator:
    """SDXL from `pretrained` (hub id or pipeline directory) or, offline, a tiny config
    (recon_ft.models.sdxl.configs.tiny_sdxl_components) or the published architecture with random
    weights (`arch: sdxl_base`). `text_encoder_adapter` applies to both text encoders.
    `guidance_scale`: the model's sampling default.
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from recon_ft.models.tokenizers import clip_tokenizer

    parts = load_or_init_parts(
        pretrained, arch, tiny, init_seed, archs=ARCHS, tiny_parts=tiny_sdxl_components,
        text_encoders={"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection},
        # the tokenizers differ in padding only, as SDXL's
        tokenizers={"tokenizer": clip_tokenizer, "tokenizer_2": functools.partial(clip_tokenizer, pad_token="!")},
    )
    decoder = build_cycle_decoder(cycle_decoder, parts["vae"], cycle_decoder_pretrained, init_seed)
    generator = StableDiffusionXLGenerator(**parts, cycle_decoder=decoder)
    return finish_build(generator, pretrained, guidance_scale, unet_adapter, text_encoder_adapter,
                        gradient_checkpointing, save_base_to)
