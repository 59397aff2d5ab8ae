"""The real architectures with random weights, no download: for benchmarks at true size.

`sd15_arch()` is Stable Diffusion v1.5 (UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M parameters),
`sd21_arch()` Stable Diffusion 2.1 (768 px, v-prediction, OpenCLIP ViT-H text encoder), `sdxl_base_arch()`
SDXL base 1.0 (1024 px, two text encoders)
and `blip_base_arch()` BLIP base captioning (ViT-B/16 at 384 px + BERT-base text decoder, 224M),
their configs written out as in the released checkpoints' config files; likewise the other
captioner families: BLIP large, BLIP-2 with OPT-2.7b or Flan-T5-XL, GIT base and large. A test
builds each on the meta device (no memory) and checks its configs' LoRA targets against it. The builders reach them as
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


def blip_large_arch():
    """BlipConfig of Salesforce/blip-image-captioning-large: ViT-L/16 at 384 px, the same BERT-base
    decoder cross-attending to 1024-wide image tokens."""
    config = blip_base_arch()
    v = config.vision_config
    v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 1024, 4096, 24, 16
    config.text_config.encoder_hidden_size = 1024
    return config


def _blip2_vision_qformer() -> dict:
    """BLIP-2's EVA ViT-g/14 at 224 px (256 patches + CLS) and its Q-Former (BERT-base, cross-attention
    to the image every second layer, 32 learned queries), shared by every released BLIP-2."""
    return dict(
        vision_config=dict(
            hidden_size=1408,
            intermediate_size=6144,
            num_hidden_layers=39,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            qkv_bias=True,
        ),
        qformer_config=dict(
            vocab_size=30522,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            cross_attention_frequency=2,
            encoder_hidden_size=1408,
        ),
        num_query_tokens=32,
    )


def blip2_opt_arch():
    """Blip2Config of Salesforce/blip2-opt-2.7b (3.9B parameters): OPT-2.7b as the language model.

    OPT's vocabulary is 50,265 BPE tokens + "<image>" (50265), padded to 50,272 rows; captions end
    with "\n" (50118), the language model config's eos, as in LAVIS's training.
    """
    from transformers import Blip2Config

    return Blip2Config(
        **_blip2_vision_qformer(),
        text_config=dict(
            model_type="opt",
            vocab_size=50272,
            hidden_size=2560,
            ffn_dim=10240,
            num_hidden_layers=32,
            num_attention_heads=32,
            max_position_embeddings=2048,
            word_embed_proj_dim=2560,
            do_layer_norm_before=True,
            activation_function="relu",
            dropout=0.1,
            attention_dropout=0.0,
            bos_token_id=2,
            eos_token_id=50118,
            pad_token_id=1,
        ),
        image_token_index=50265,
    )


def blip2_flan_t5_arch():
    """Blip2Config of Salesforce/blip2-flan-t5-xl (3.9B parameters): Flan-T5-XL's encoder-decoder.

    T5's vocabulary is 32,100 SentencePiece tokens + "<image>" (32100), padded to 32,128 rows.
    """
    from transformers import Blip2Config

    return Blip2Config(
        **_blip2_vision_qformer(),
        text_config=dict(
            model_type="t5",
            vocab_size=32128,
            d_model=2048,
            d_kv=64,
            d_ff=5120,
            num_layers=24,
            num_decoder_layers=24,
            num_heads=32,
            feed_forward_proj="gated-gelu",
            relative_attention_num_buckets=32,
            dropout_rate=0.1,
            tie_word_embeddings=False,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        image_token_index=32100,
    )


def _git_config(vision: dict):
    from transformers import GitConfig

    # GIT's text side: a 6-layer BERT-base-sized decoder over BERT uncased's 30,522 tokens, the image
    # tokens prefixed to the text ([CLS] 101 starts, [SEP] 102 ends a caption)
    return GitConfig(
        vision_config=dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=512, **vision),
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        bos_token_id=101,
        eos_token_id=102,
        pad_token_id=0,
    )


def git_base_arch():
    """GitConfig of microsoft/git-base-coco: CLIP ViT-B/16 at 224 px (197 image tokens)."""
    return _git_config(dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=224, patch_size=16))


def git_large_arch():
    """GitConfig of microsoft/git-large-coco: CLIP ViT-L/14 at 224 px (257 image tokens)."""
    return _git_config(dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            image_size=224, patch_size=14))


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


CAPTIONER_ARCHS = {
    "blip_base": blip_base_arch,
    "blip_large": blip_large_arch,
    "blip2_opt_2.7b": blip2_opt_arch,
    "blip2_flan_t5_xl": blip2_flan_t5_arch,
    "git_base": git_base_arch,
    "git_large": git_large_arch,
}
# Stable Diffusion 1.x / 2.x (build_stable_diffusion) and SDXL (build_sdxl) take different parts.
GENERATOR_ARCHS = {"sd15": sd15_arch, "sd21": sd21_arch, "sdxl_base": sdxl_base_arch}


def _lookup(table: dict, name: str, what: str):
    if name not in table:
        raise ValueError(f"{what}: unknown arch {name!r}; available: {sorted(table)}")
    return table[name]


def captioner_arch(name: str):
    return _lookup(CAPTIONER_ARCHS, name, "captioner")()


def generator_arch(name: str) -> dict:
    return _lookup(GENERATOR_ARCHS, name, "generator")()
