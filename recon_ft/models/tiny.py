"""Tiny model configurations with random weights: the offline default and the test fixtures.

Sizes follow DESIGN.md section 10: a full joint step (both cycles) at batch 8 takes a fraction of a
second on a CPU. The vocabularies are the real BLIP (BERT WordPiece) and Stable Diffusion (CLIP BPE)
ones, so the vocabulary bridge between them is exercised for real.
"""

from __future__ import annotations

BLIP_VOCAB_SIZE = 30524  # BERT uncased (30,522) + [DEC] + [ENC]
CLIP_VOCAB_SIZE = 49408


def tiny_blip_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2):
    from transformers import BlipConfig

    return BlipConfig(
        vision_config=dict(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=BLIP_VOCAB_SIZE,
            hidden_size=hidden_size,
            encoder_hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            max_position_embeddings=64,
        ),
    )


def _tiny_vision(image_size: int, patch_size: int, hidden_size: int, num_layers: int) -> dict:
    return dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_blip2_config(
    language_model: str = "opt",
    vocab_size: int = 608,
    image_token_index: int = 600,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_query_tokens: int = 4,
):
    """BLIP-2 at hidden size 32, no dropout (as the tiny BLIP): ViT, Q-Former (cross-attention in every layer) and an OPT
    ("opt", decoder-only) or T5 ("t5", encoder-decoder) language model. Special ids as OPT's and
    T5's (recon_ft.models.trained_tokenizers); `vocab_size` may exceed the tokenizer's, as the
    released models pad their embedding matrices."""
    from transformers import Blip2Config

    h = hidden_size
    if language_model == "opt":
        text = dict(model_type="opt", vocab_size=vocab_size, hidden_size=h, ffn_dim=2 * h, num_hidden_layers=num_layers,
                    num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=h, dropout=0.0,
                    bos_token_id=2, eos_token_id=2, pad_token_id=1)
    elif language_model == "t5":
        text = dict(model_type="t5", vocab_size=vocab_size, d_model=h, d_kv=h // 2, d_ff=2 * h, num_layers=num_layers,
                    num_decoder_layers=num_layers, num_heads=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    else:
        raise ValueError(f"captioner.tiny.language_model: expected opt or t5, got {language_model!r}")
    return Blip2Config(
        vision_config=_tiny_vision(image_size, patch_size, h, num_layers),
        qformer_config=dict(hidden_size=h, num_hidden_layers=num_layers, num_attention_heads=2,
                            intermediate_size=2 * h, cross_attention_frequency=1, encoder_hidden_size=h,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=text,
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_index,
    )


def tiny_git_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2):
    """GIT at hidden size 32 over BERT uncased's 30,522 tokens (the real GIT tokenizer)."""
    from transformers import GitConfig

    return GitConfig(
        vision_config=_tiny_vision(image_size, patch_size, hidden_size, num_layers),
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


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
    to 0.92 (README, "The generator's noise schedule").
    """
    if prediction_type != "v_prediction":
        raise ValueError(f"zero terminal SNR needs prediction_type 'v_prediction', got {prediction_type!r}")
    config = sd_v1_scheduler_config(prediction_type) | dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    del config["skip_prk_steps"]  # PNDM's; with "trailing" steps_offset is unused
    return config


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
