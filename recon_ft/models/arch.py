"""The real architectures with random weights, no download: for benchmarks at true size.

`sd15_arch()` is Stable Diffusion v1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M parameters)
and `blip_base_arch()` BLIP base captioning (ViT-B/16 at 384 px + BERT-base text decoder, 224M),
their configs written out as in the released checkpoints' config files. The builders reach them as
`build_stable_diffusion(arch="sd15")` and `build_blip(arch="blip_base")`, with the real tokenizers
(recon_ft.models.tokenizers). Random weights make the losses meaningless but the cost exact: these
are for measuring speed and memory, not for training.
"""

from __future__ import annotations

from recon_ft.models.tiny import BLIP_VOCAB_SIZE, CLIP_VOCAB_SIZE, sd_v1_scheduler_config


def blip_base_arch():
    """BlipConfig of Salesforce/blip-image-captioning-base."""
    from transformers import BlipConfig

    return BlipConfig(
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=384,
            patch_size=16,  # (384 / 16)^2 + 1 = 577 tokens
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            projection_dim=512,
            initializer_range=0.02,
        ),
        text_config=dict(
            vocab_size=BLIP_VOCAB_SIZE,  # BERT uncased 30,522 + [DEC] + [ENC]
            hidden_size=768,
            encoder_hidden_size=768,  # cross-attention onto the ViT's tokens
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=512,
            hidden_act="gelu",
            layer_norm_eps=1e-12,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            projection_dim=768,
            bos_token_id=30522,
            pad_token_id=0,
            sep_token_id=102,
        ),
        projection_dim=512,
        image_text_hidden_size=256,
    )


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
        scheduler=PNDMScheduler(**sd_v1_scheduler_config()),
    )


CAPTIONER_ARCHS = {"blip_base": blip_base_arch}
GENERATOR_ARCHS = {"sd15": sd15_arch}


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"{what}: unknown arch {name!r}; available: {sorted(table)}")
    return table[name]


def captioner_arch(name: str):
    return _lookup(CAPTIONER_ARCHS, name, "captioner")()


def generator_arch(name: str) -> dict:
    return _lookup(GENERATOR_ARCHS, name, "generator")()
