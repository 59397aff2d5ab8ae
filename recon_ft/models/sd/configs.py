"""Stable Diffusion 1.x / 2.x configs: the published checkpoints' parts (random weights at true size,
no download), the tiny parts (the offline default and the test fixtures) and the noise schedules.

`sd15_arch()` is Stable Diffusion v1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M
parameters), `sd21_arch()` Stable Diffusion 2.1 (768 px, v-prediction, OpenCLIP ViT-H text encoder),
their configs written out as in the released checkpoints' config files. Random weights make the
losses meaningless but the cost exact: they are for measuring speed and memory, not for training.
The tiny parts use the real CLIP vocabulary, so the vocabulary bridge is exercised for real.
"""

from __future__ import annotations

CLIP_VOCAB_SIZE = 49408


def sd15_unet_config() -> dict:
    """UNet2DConditionModel config of stable-diffusion-v1-5 (unet/config.json)."""
    return dict(
        sample_size=64,  # latents of 512 px images
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=768,
        attention_head_dim=8,  # SD v1 names the head *count* so: 8 heads
    )


def sd15_vae_config() -> dict:
    """AutoencoderKL config of stable-diffusion-v1-5 (vae/config.json): factor 8, 4 latent channels."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )


def sd15_text_config():
    """CLIPTextConfig of OpenAI CLIP ViT-L/14's text tower (text_encoder/config.json).

    The hub file carries the legacy bos/eos/pad ids 0/2/1, which only pick the pooled output (unused
    here: Stable Diffusion conditions on the last hidden state); the tokenizer's real ids are set.
    """
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        initializer_range=0.02,
        initializer_factor=1.0,
        projection_dim=768,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def sd15_arch() -> dict:
    """Random-init Stable Diffusion v1.5 parts: vae, unet, text_encoder, scheduler (no tokenizer)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    return dict(
        vae=AutoencoderKL(**sd15_vae_config()),
        unet=UNet2DConditionModel(**sd15_unet_config()),
        text_encoder=CLIPTextModel(sd15_text_config()),
        scheduler=PNDMScheduler.from_config(sd_v1_scheduler_config()),
    )


def sd_v2_scheduler_config() -> dict:
    """DDIMScheduler config of stable-diffusion-2-1 (scheduler/scheduler_config.json): SD v1's betas,
    v-prediction."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )


def sd21_unet_config() -> dict:
    """UNet2DConditionModel config of stabilityai/stable-diffusion-2-1 (unet/config.json): SD v1's
    layout with head widths of 64 (5, 10, 20, 20 heads), linear projections, 1024-d cross-attention."""
    return dict(
        sd15_unet_config(),
        sample_size=96,  # latents of 768 px images
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        upcast_attention=True,
    )


def sd21_text_config():
    """CLIPTextConfig of stable-diffusion-2-1's text_encoder: OpenCLIP ViT-H/14's text tower with its
    last layer removed (23 of 24 layers: SD 2 conditions on the penultimate layer, final norm applied).

    The hub file carries the legacy bos/eos/pad ids 0/2/1; the tokenizer's real ids are set (SD 2's
    tokenizer pads with "!", id 0).
    """
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        projection_dim=512,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )


def sd21_arch() -> dict:
    """Random-init Stable Diffusion 2.1 parts (768 px, v-prediction), with its tokenizer (pad "!")."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    from recon_ft.models.tokenizers import clip_tokenizer

    return dict(
        vae=AutoencoderKL(**dict(sd15_vae_config(), sample_size=768)),
        unet=UNet2DConditionModel(**sd21_unet_config()),
        text_encoder=CLIPTextModel(sd21_text_config()),
        scheduler=DDIMScheduler(**sd_v2_scheduler_config()),
        tokenizer=clip_tokenizer(pad_token="!"),
    )


# `arch:` names of build_stable_diffusion (and of recon_ft.models.archs)
ARCHS = {"sd15": sd15_arch, "sd21": sd21_arch}


def tiny_sd_components(sample_size: int = 32, cross_attention_dim: int = 32, prediction_type: str = "epsilon",
                       zero_terminal_snr: bool = False):
    """Random-init Stable Diffusion parts: VAE (factor-2 downsampling), UNet, CLIP text encoder, schedulers.

    `sample_size` is the image resolution; latents are (4, sample_size / 2, sample_size / 2).
    `zero_terminal_snr`: the schedule of `zero_snr_scheduler_config` (DDIM sampler) instead of SD v1's
    (PNDM sampler).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=sample_size,
    )
    unet = UNet2DConditionModel(
        sample_size=sample_size // 2,
        in_channels=4,
        out_channels=4,
        # Cross-attention at the coarser level only (8x8 latents at 32 px): the same layout as
        # diffusers' own tiny test UNet, and 4x fewer attention tokens than at the first level.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=cross_attention_dim,
            intermediate_size=2 * cross_attention_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=cross_attention_dim,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    # The sampler and its schedule; the training scheduler (DDPM) is made from this config, as
    # diffusers' training scripts do.
    if zero_terminal_snr:
        scheduler = DDIMScheduler.from_config(zero_snr_scheduler_config(prediction_type))
    else:
        scheduler = PNDMScheduler.from_config(sd_v1_scheduler_config(prediction_type))
    return dict(vae=vae, unet=unet, text_encoder=text_encoder, scheduler=scheduler)


def sd_v1_scheduler_config(prediction_type: str = "epsilon") -> dict:
    """PNDMScheduler config of Stable Diffusion v1 (scheduler/scheduler_config.json: scaled-linear
    betas, 1,000 steps). Its `clip_sample: false` is not a PNDMScheduler argument, but `from_config`
    keeps it in the config, so that a DDIM or DDPM sampler made from this config (eval's
    `generation.scheduler`) does not clip the predicted latents to [-1, 1] as their default does."""
    return dict(
        clip_sample=False,
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def zero_snr_scheduler_config(prediction_type: str = "v_prediction") -> dict:
    """DDIMScheduler config of SD v1's betas rescaled to zero terminal SNR, sampled from t = 999.

    Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (WACV 2024): SD's
    schedule ends at alpha_bar = 0.0047, so training never shows the model pure noise, while
    sampling starts from it. On small latents the leak is large: at t = 999 a 16 x 16 latent's
    channel means still carry 0.068 x their clean value against noise means of std 1/16, so the
    UNet learns to read an image's colours from its noisy input rather than from the text.
    Rescaling the betas makes the last step pure noise, which needs v-prediction (epsilon is
    undefined at alpha_bar = 0), and "trailing" timestep spacing makes the sampler start at
    t = 999. On the synthetic benchmark this moved the zoo generator's colour accuracy from 0.2-0.5
    to 0.92 (docs/zoo.md, "The generator's noise schedule").
    """
    if prediction_type != "v_prediction":
        raise ValueError(f"zero terminal SNR needs prediction_type 'v_prediction', got {prediction_type!r}")
    config = sd_v1_scheduler_config(prediction_type) | dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    del config["skip_prk_steps"]  # PNDM's; with "trailing" steps_offset is unused
    return config
