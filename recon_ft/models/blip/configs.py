"""BLIP's configs: the published captioning checkpoints' (random weights at true size, no download)
and the tiny one (the offline default and the test fixtures).

Both use the real BLIP vocabulary (BERT uncased WordPiece + [DEC] + [ENC]), so the vocabulary
bridge to a generator's CLIP BPE is exercised for real.
"""

from __future__ import annotations

BLIP_VOCAB_SIZE = 30524  # BERT uncased (30,522) + [DEC] + [ENC]


def blip_base_arch():
    """BlipConfig of Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px + BERT-base text
    decoder, 224M parameters."""
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
            vocab_size=BLIP_VOCAB_SIZE,
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


# `arch:` names of build_blip (and of recon_ft.models.archs)
ARCHS = {"blip_base": blip_base_arch, "blip_large": blip_large_arch}


def tiny_blip_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2):
    """BLIP at hidden size 32: a full joint step (both cycles) at batch 8 takes a fraction of a
    second on a CPU."""
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
