"""Text-to-image diffusion models behind one small interface, and the Stable Diffusion implementation.

What the losses and the evaluation need from a generator:
  - `tokenize(captions)` and `encode_text(ids)`: conditioning from token ids, (B, 77, D);
  - `encode_bridged(bridge, probs, next_continues, lengths)`: conditioning from the captioner's soft
    caption, mapped by the vocabulary bridge into the text encoder's token embeddings
    (`token_embedding`, then `encode_soft(token_embeds, lengths)`, with the text encoder's own
    BOS / EOS / padding around them);
  - `encode_images` / `decode_latents`: VAE, images in [-1, 1] <-> scaled latents; `encode_images` is
    `encode_moments` (the posterior's parameters, cacheable) then `sample_latents` (`decode_latents`
    goes through the cheaper `cycle_decoder` when one is set: it only serves the text cycle);
  - `denoise(zt, t, cond)`: the denoiser's prediction (epsilon or v);
  - `alphas_cumprod`, `prediction_type`, `num_train_timesteps`: the noise schedule;
  - `sample(prompts, seeds)`: images through the diffusers pipeline.
The conditioning `cond` is opaque to the losses: only the generator builds it (`encode_text`,
`encode_bridged`) and consumes it (`denoise`). Here it is a (B, 77, D) tensor; SDXL's is a structure
(recon_ft.models.sdxl). SD 1.x and 2.x fit this class as is (2.x: v-prediction, a tokenizer padding
with "!"); their builder and configs are recon_ft.models.sd.

Every generator family's builder is `load_or_init_parts` (the pipeline's parts, pretrained or
random), the family's class with a `build_cycle_decoder`, then `finish_build`. Their Hydra configs
are conf/generator/*.yaml; docs/adding_a_model.md walks through adding a family.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.utils.checkpoint
from torch import nn

from recon_ft.constants import LOAD_DTYPE
from recon_ft.utils import is_rank_zero
from recon_ft.models.lora import AdapterSpec, critic_call, critic_checkpoint_context, inject_lora, unfreeze_modules


class StableDiffusionGenerator(nn.Module):
    # Classifier-free guidance when a caller gives none (`sample`, eval.py's generation): the
    # builders' `guidance_scale`, set from the model's config (the zoo's zero-SNR models want 2).
    guidance_scale: float = 7.5

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, cycle_decoder=None):
        super().__init__()
        from diffusers import DDPMScheduler

        self.vae = vae
        self.text_encoder = text_encoder
        self.unet = unet
        self.tokenizer = tokenizer
        self.scheduler = scheduler  # the sampler of the saved pipeline
        # Training uses DDPM with the same betas, as diffusers' text-to-image training scripts do.
        self.noise_scheduler = DDPMScheduler.from_config(scheduler.config)
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.latent_scale = float(vae.config.scaling_factor)
        self.max_length = int(tokenizer.model_max_length)
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id
        self.image_size = int(unet.config.sample_size) * self.vae_scale_factor
        # An AutoencoderTiny (TAESD) standing in for the VAE decoder in `decode_latents`, or None.
        self.cycle_decoder = cycle_decoder.requires_grad_(False) if cycle_decoder is not None else None
        self.decode_chunk: int | None = None  # decode this many rows at a time (set with checkpointing)

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's own dtype: float32 under *-mixed precision (it runs outside autocast: NaN or
        black images in fp16 otherwise), bfloat16 under bf16-true. Its input is cast to it."""
        return next(self.vae.parameters()).dtype

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) (Lightning's *-true precisions) casts floating buffers too; the noise
        # schedule stays float32: in bfloat16 a_0 = 0.99915 rounds to 1.0 and a_t is off by up to 0.4%.
        schedule = self.alphas_cumprod
        super()._apply(fn, recurse)
        self.alphas_cumprod = schedule.to(self.alphas_cumprod.device)
        return self

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return self.noise_scheduler.config.num_train_timesteps

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_encoder.embeddings.token_embedding

    # What a frozen-cache entry of text states can hold: a (77, D) tensor per caption.
    text_states_cacheable = True

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline

    def adapter_parts(self) -> dict[str, nn.Module]:
        """The parts adapters can train, by the names diffusers' LoRA files use."""
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder]

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, captions: list[str], device=None) -> torch.Tensor:
        ids = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).input_ids
        return ids.to(device) if device is not None else ids

    def encode_text(self, input_ids: torch.Tensor, critic: bool = False) -> torch.Tensor:
        """(B, 77) ids -> (B, 77, D) conditioning."""
        return self.encode_embeddings(self.token_embedding(input_ids), critic=critic)

    def encode_bridged(self, bridge, probs: torch.Tensor, next_continues: torch.Tensor, lengths: torch.Tensor,
                       critic: bool = False):
        """The captioner's soft caption probs (B, N, |V_C|) -> conditioning, through the bridge into
        the text encoder's token embeddings (B, N, D_tok)."""
        token_embeds = bridge.embed(probs, self.token_embedding.weight, next_continues)
        return self.encode_soft(token_embeds, lengths, critic=critic)

    def encode_soft(self, token_embeds: torch.Tensor, lengths: torch.Tensor, critic: bool = False) -> torch.Tensor:
        """Soft caption tokens (B, N, D_tok), row b valid for its first lengths[b] positions -> (B, 77, D).

        The sequence is laid out exactly as the tokenizer lays out a caption of lengths[b] tokens:
        BOS, the soft tokens, EOS, then padding, so the text encoder sees its own conventions.
        """
        seq = soft_sequence(token_embeds, lengths, self.token_embedding, self.tokenizer)
        return self.encode_embeddings(seq, critic=critic)

    def encode_embeddings(self, token_embeds: torch.Tensor, critic: bool = False) -> torch.Tensor:
        """CLIP text transformer on token embeddings (B, 77, D_tok) -> last hidden state (B, 77, D).

        CLIPTextModel.forward takes ids only, so its body is followed here (causal mask, no padding
        mask, final layer norm): Stable Diffusion conditions on every position's hidden state.
        """
        te = self.text_encoder
        if critic:
            return critic_call(_TextTransformer(te), token_embeds)
        return _TextTransformer(te)(token_embeds)

    # -- images ---------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents z0 = s E(x), (B, 4, H/f, W/f), sampled from the
        VAE posterior with `rng`."""
        return self.sample_latents(self.encode_moments(images), rng)

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the VAE posterior's parameters (B, 2C, H/f, W/f): mean and
        log-variance stacked on channels, unscaled. A function of the image alone (cacheable)."""
        with torch.autocast(images.device.type, enabled=False):
            return self.vae.encode(images.to(self.vae_dtype)).latent_dist.parameters

    def sample_latents(self, moments: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """Posterior parameters (B, 2C, h, w) -> scaled latents s (mean + std eps), (B, C, h, w)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        with torch.autocast(moments.device.type, enabled=False):
            return DiagonalGaussianDistribution(moments).sample(generator=rng) * self.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images (B, 3, H, W), roughly in [-1, 1] (not clamped)."""
        if self.decode_chunk and latents.shape[0] > self.decode_chunk:
            # With gradient checkpointing, one chunk's decoder activations are recomputed at a time.
            return torch.cat([self.decode_latents(z) for z in latents.split(self.decode_chunk)])
        if self.cycle_decoder is not None:
            # TAESD decodes the diffusion model's latents as they are: its config has scaling_factor 1
            # and shift_factor 0 (AutoencoderTiny.decode applies neither; a pipeline divides by the
            # factor before calling it). It clamps with tanh(z / 3) * 3 and returns [-1, 1] images.
            # Small, fp16-safe: it runs under the ambient autocast.
            cfg = self.cycle_decoder.config
            z = latents / cfg.scaling_factor + getattr(cfg, "shift_factor", 0.0)
            return self.cycle_decoder.decode(z).sample
        with torch.autocast(latents.device.type, enabled=False):
            return self.vae.decode(latents.to(self.vae_dtype) / self.latent_scale).sample

    # -- diffusion ------------------------------------------------------------------------------
    def denoise(self, noisy_latents, timesteps, cond, critic: bool = False) -> torch.Tensor:
        if critic:
            return critic_call(self.unet, noisy_latents, timesteps, encoder_hidden_states=cond).sample
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=cond).sample

    def pipeline(self):
        pipe = self.pipeline_class(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        guidance_scale: float | None = None,
        num_inference_steps: int = 50,
        scheduler: str | None = None,
    ) -> torch.Tensor:
        """One image per prompt, item i from torch.Generator seeded with seeds[i]: (B, 3, H, W) in [0, 1].
        `guidance_scale` None: the model's own (`self.guidance_scale`)."""
        pipe = self.pipeline()
        if scheduler:
            pipe.scheduler = sampler_from_config(scheduler, self.scheduler.config)
        device = self.unet.device
        generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
        out = pipe(
            prompts,
            generator=generators,
            guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
            num_inference_steps=num_inference_steps,
            height=self.image_size,
            width=self.image_size,
            output_type="pt",
        )
        return out.images

    # -- adapters and saving ----------------------------------------------------------------------
    def configure_adapters(self, unet: AdapterSpec, text_encoder: AdapterSpec) -> None:
        self.vae.requires_grad_(False)
        for module, spec in ((self.unet, unet), *((te, text_encoder) for te in self.text_encoders())):
            module.requires_grad_(False)
            if spec.mode == "lora" and module is self.unet:
                module.add_adapter(spec.lora_config())  # diffusers' PEFT integration
            elif spec.mode == "lora":
                inject_lora(module, spec)
            elif spec.mode == "full":
                unfreeze_modules(module, spec.target_modules)

    def save_base(self, directory: str | Path) -> None:
        """A diffusers pipeline directory (call before adapters are added)."""
        self.pipeline().save_pretrained(directory)

    def enable_gradient_checkpointing(self) -> None:
        """UNet, and the decoder the text cycle backpropagates through (decoded one row at a time:
        at 512 px one up-block's recomputed activations for a batch of 8 would take tens of GB)."""
        checkpoint = functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False, context_fn=critic_checkpoint_context(self.unet)
        )
        self.unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint)
        for decoder in (self.vae, self.cycle_decoder):
            if decoder is not None:
                decoder.enable_gradient_checkpointing()
        self.decode_chunk = 1


def soft_sequence(token_embeds: torch.Tensor, lengths: torch.Tensor, embedding: nn.Embedding, tokenizer) -> torch.Tensor:
    """Soft tokens (B, N, D_tok) laid out as `tokenizer` lays out a caption of lengths[b] tokens:
    BOS, the soft tokens, EOS, then the tokenizer's padding -> (B, max_length, D_tok) embeddings."""
    b, n, _ = token_embeds.shape
    device = token_embeds.device
    max_length = int(tokenizer.model_max_length)
    lengths = lengths.clamp(max=max_length - 2)
    pos = torch.arange(max_length, device=device)  # (77,)
    ids = torch.full((b, max_length), tokenizer.pad_token_id, dtype=torch.long, device=device)
    ids[:, 0] = tokenizer.bos_token_id
    ids.scatter_(1, (lengths + 1).unsqueeze(1), tokenizer.eos_token_id)
    hard = embedding(ids)  # (B, 77, D_tok)
    soft = torch.zeros_like(hard)
    n = min(n, max_length - 2)
    soft[:, 1 : 1 + n] = token_embeds[:, :n].to(hard.dtype)
    is_soft = (pos >= 1) & (pos < 1 + lengths.unsqueeze(1))  # (B, 77)
    return torch.where(is_soft.unsqueeze(-1), soft, hard)


class _TextTransformer(nn.Module):
    """CLIPTextModel's body from token embeddings on (a thin view sharing its modules)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.embeddings = text_encoder.embeddings
        self.encoder = text_encoder.encoder
        self.final_layer_norm = text_encoder.final_layer_norm
        self._config = text_encoder.config

    def forward(self, token_embeds: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        hidden = self.embeddings(inputs_embeds=token_embeds)  # adds position embeddings
        # Positional: the cache argument is `past_key_values` before transformers 5.2x and `cache` after.
        mask = create_causal_mask(self._config, hidden, None, None)  # (config, embeds, attention mask, cache)
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        return self.final_layer_norm(hidden)


def build_cycle_decoder(kind: str, vae, pretrained: str | None = None, init_seed: int = 0):
    """None for `full` (the VAE's own decoder); an AutoencoderTiny for `tiny`.

    Random-init, it has TAESD's layout (blocks (3, 3, 3, 1), 64 channels) with as many upsamplings
    as the VAE has and its latent channels; the width is capped at the VAE decoder's narrowest one
    so that at tiny sizes it stays cheaper than the decoder it replaces.
    """
    if kind not in ("full", "tiny"):
        raise ValueError(f"generator.cycle_decoder: expected full or tiny, got {kind!r}")
    if kind == "full":
        return None
    from diffusers import AutoencoderTiny

    latent_channels = int(vae.config.latent_channels)
    if pretrained:
        decoder = AutoencoderTiny.from_pretrained(pretrained, torch_dtype=LOAD_DTYPE)
        if int(decoder.config.latent_channels) != latent_channels:
            raise ValueError(
                f"cycle_decoder_pretrained: {decoder.config.latent_channels} latent channels, the VAE has "
                f"{latent_channels}"
            )
    else:
        stages = len(vae.config.block_out_channels)  # upsampling factor 2 ** (stages - 1)
        width = min(64, min(vae.config.block_out_channels))
        blocks = ((3,) * (stages - 1) + (1,))[-stages:]
        with torch.random.fork_rng():
            torch.manual_seed(init_seed)
            decoder = AutoencoderTiny(
                latent_channels=latent_channels,
                encoder_block_out_channels=(width,) * stages,
                decoder_block_out_channels=(width,) * stages,
                num_encoder_blocks=tuple(reversed(blocks)),
                num_decoder_blocks=blocks,
            )
    return decoder.eval()


def sampler_from_config(name: str, config):
    """The diffusers scheduler class `name` on the pipeline's noise schedule (its `config`).

    Latent diffusion never clips the predicted latents to [-1, 1] (they have unit variance):
    Stable Diffusion's configs say `clip_sample: false`, and a config without the key gets it here,
    since DDIM's and DDPM's default (true) would ruin every sample. A zero-terminal-SNR schedule
    (`rescale_betas_zero_snr`) needs a class that rescales its betas too (PNDM does not).
    """
    import inspect

    import diffusers

    cls = getattr(diffusers, name)
    if config.get("rescale_betas_zero_snr") and "rescale_betas_zero_snr" not in inspect.signature(cls).parameters:
        # from_config would drop the flag and sample with betas the model was not trained on
        raise ValueError(f"generation.scheduler: {name} cannot sample this model's zero-terminal-SNR schedule; "
                         "use one with rescale_betas_zero_snr, e.g. DDIMScheduler, EulerDiscreteScheduler, "
                         "DPMSolverMultistepScheduler or UniPCMultistepScheduler")
    return cls.from_config(config, **({} if "clip_sample" in config else {"clip_sample": False}))


def load_or_init_parts(pretrained: str | None, arch: str | None, tiny: dict | None, init_seed: int, archs: dict,
                       tiny_parts, text_encoders: dict, tokenizers: dict) -> dict:
    """The generator class's arguments by the pipeline's component names (vae, unet, scheduler,
    text_encoder[_2], tokenizer[_2]): the first half of every generator builder.

    `pretrained` (hub id or pipeline directory): each loaded from its subfolder in float32, whatever
    dtype its config names (recon_ft.constants.LOAD_DTYPE; SDXL's text encoders say float16), the
    text encoders with the classes of `text_encoders` ({name: class}), each with its CLIP tokenizer.
    Otherwise, no
    download: the published architecture `archs[arch]()` or `tiny_parts(**tiny)` with random
    weights, the same for the same `init_seed`; the tokenizers they do not bring are made by
    `tokenizers` ({name: function of no arguments}).
    """
    if pretrained:
        return _pipeline_parts(pretrained, text_encoders)
    if arch and tiny:
        raise ValueError("generator: give `arch` or `tiny`, not both")
    if arch and arch not in archs:
        raise ValueError(f"generator: unknown arch {arch!r}; available: {sorted(archs)}")
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        parts = archs[arch]() if arch else tiny_parts(**(tiny or {}))
    for name, make in tokenizers.items():
        if name not in parts:
            parts[name] = make()
    return parts


def finish_build(generator: StableDiffusionGenerator, pretrained, guidance_scale, unet_adapter, text_encoder_adapter,
                 gradient_checkpointing, save_base_to) -> StableDiffusionGenerator:
    """The builders' common tail: the sampling default, save a random-init base (before adapters,
    so a run's adapters always load back onto the exact base they were trained on), add adapters,
    checkpointing."""
    generator.guidance_scale = float(guidance_scale)
    if save_base_to and not pretrained and is_rank_zero():
        generator.save_base(save_base_to)
    generator.configure_adapters(AdapterSpec.coerce(unet_adapter), AdapterSpec.coerce(text_encoder_adapter))
    if gradient_checkpointing:
        generator.enable_gradient_checkpointing()
    return generator


def _pipeline_parts(pretrained: str, text_encoders: dict) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    parts = dict(
        vae=AutoencoderKL.from_pretrained(pretrained, subfolder="vae", torch_dtype=LOAD_DTYPE),
        unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", torch_dtype=LOAD_DTYPE),
        scheduler=_load_scheduler(pretrained),
    )
    for name, model_class in text_encoders.items():
        tokenizer = name.replace("text_encoder", "tokenizer")  # text_encoder_2 -> tokenizer_2
        parts[name] = model_class.from_pretrained(pretrained, subfolder=name, dtype=LOAD_DTYPE)
        parts[tokenizer] = CLIPTokenizer.from_pretrained(pretrained, subfolder=tokenizer)
    return parts


def _load_scheduler(pretrained: str):
    """The pipeline's own sampler class, from scheduler/scheduler_config.json (never clipping latents)."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(pretrained, subfolder="scheduler")
    return sampler_from_config(config["_class_name"], config)
