"""GIT's configs: the published COCO captioning checkpoints' (random weights at true size, no
download) and the tiny one (the offline default and the test fixtures), all over BERT uncased's
30,522 tokens (the real GIT tokenizer)."""

from __future__ import annotations


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


# `arch:` names of build_git (and of recon_ft.models.archs)
ARCHS = {"git_base": git_base_arch, "git_large": git_large_arch}


def tiny_git_config(image_size: int = 32, patch_size: int = 8, hidden_size: int = 32, num_layers: int = 2):
    """GIT at hidden size 32 over BERT uncased's 30,522 tokens (the real GIT tokenizer)."""
    from transformers import GitConfig

    return GitConfig(
        vision_config=dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                           num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        vocab_size=30522,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
