"""SDXL's configs: the published base 1.0 parts (random weights at true size, no download) and the
tiny parts (the offline default and the test fixtures). The VAE and the first text encoder are
Stable Diffusion v1.5's (recon_ft.models.sd.configs)."""

from __future__ import annotations

from recon_ft.models.sd.configs import (
    CLIP_VOCAB_SIZE,
    sd15_text_config,
    sd15_vae_config,
    tiny_sd_components,
)


def sdxl_unet_config() -> dict:
    """UNet2DConditionModel config of stabilityai/stable-diffusion-xl-base-1.0 (unet/config.json).

    Cross-attention on 2048 = 768 + 1280 (both text encoders' penultimate states concatenated); the
    "text_time" added embedding takes the pooled text embedding (1280) and six size / crop numbers,
    each sinusoidally embedded to 256: 1280 + 6 x 256 = 2816.
    """
    return dict(
        sample_size=128,  # latents of 1024 px images
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        upcast_attention=False,
        addition_embed_type="text_time",
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def sdxl_text_2_config():
    """CLIPTextConfig of SDXL's text_encoder_2: OpenCLIP ViT-bigG/14's text tower (32 layers, 1280 wide,
    projection 1280), a CLIPTextModelWithProjection."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
        dropout=0.0,
        projection_dim=1280,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )


def sdxl_scheduler_config() -> dict:
    """EulerDiscreteScheduler config of stable-diffusion-xl-base-1.0 (epsilon prediction)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )


def sdxl_base_arch() -> dict:
    """Random-init SDXL base 1.0 parts (1024 px): VAE (scaling 0.13025), UNet 2.6B, CLIP ViT-L text
    encoder (as SD 1.5's) and OpenCLIP bigG text encoder with projection, both tokenizers."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    import torch

    from recon_ft.models.tokenizers import clip_tokenizer

    with torch.device("cpu"):  # its sigmas go through numpy: not on the meta device
        scheduler = EulerDiscreteScheduler(**sdxl_scheduler_config())
    return dict(
        vae=AutoencoderKL(**dict(sd15_vae_config(), sample_size=1024, scaling_factor=0.13025, force_upcast=True)),
        unet=UNet2DConditionModel(**sdxl_unet_config()),
        text_encoder=CLIPTextModel(sd15_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(sdxl_text_2_config()),
        scheduler=scheduler,
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"),
    )


# `arch:` names of build_sdxl (and of recon_ft.models.archs)
ARCHS = {"sdxl_base": sdxl_base_arch}


def tiny_sdxl_components(sample_size: int = 32, text_dims: tuple[int, int] = (32, 32), time_embed_dim: int = 8,
                         prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """Random-init SDXL parts: the tiny SD VAE, two CLIP text encoders (the second with a projection
    giving the pooled embedding) and a UNet with SDXL's "text_time" added conditioning.

    The sampler: SDXL's Euler over SD's betas, or with `zero_terminal_snr` the zoo SD's schedule and
    DDIM sampler (`zero_snr_scheduler_config`); Euler's sigma is unbounded at alpha_bar = 0.

    Cross-attention width = text_dims[0] + text_dims[1] (the two penultimate states concatenated);
    the added embedding takes the pooled text embedding (text_dims[1]) and 6 size / crop numbers
    of time_embed_dim each: projection_class_embeddings_input_dim = text_dims[1] + 6 * time_embed_dim.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    parts = tiny_sd_components(sample_size, text_dims[0], prediction_type, zero_terminal_snr)
    d1, d2 = text_dims
    parts["unet"] = UNet2DConditionModel(
        sample_size=sample_size // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=d1 + d2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=d2 + 6 * time_embed_dim,
    )
    parts["text_encoder_2"] = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=d2,
            intermediate_size=2 * d2,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=d2,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,
        )
    )
    assert isinstance(parts["text_encoder"], CLIPTextModel)
    if not zero_terminal_snr:  # SDXL's sampler, SD's betas (tiny_sd_components made the zero-SNR DDIM)
        parts["scheduler"] = EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type,
        )
    return parts
