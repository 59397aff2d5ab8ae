"""BLIP-2's configs: the published checkpoints' (OPT-2.7b and Flan-T5-XL; random weights at true
size, no download) and the tiny ones (OPT-style or T5-style language model, the offline default and
the test fixtures)."""

from __future__ import annotations


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
    """Blip2Config of Salesforce/blip2-opt-2.7b (3.74B parameters): OPT-2.7b as the language model.

    OPT's vocabulary is 50,265 BPE tokens + "<image>" (50265), padded to 50,304 rows (a multiple of
    64; the hub's config was revised from OPT's own 50,272 when "<image>" was added); captions end
    with "\n" (50118), the language model config's eos, as in LAVIS's training.
    """
    from transformers import Blip2Config

    return Blip2Config(
        **_blip2_vision_qformer(),
        text_config=dict(
            model_type="opt",
            vocab_size=50304,
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
    """Blip2Config of Salesforce/blip2-flan-t5-xl (3.94B parameters): Flan-T5-XL's encoder-decoder.

    T5's vocabulary is 32,100 SentencePiece tokens + "<image>" (32100), padded to 32,128 rows.
    `tie_word_embeddings: false`: lm_head is its own matrix (recon_ft.models.blip2.model.untie_t5_lm_head;
    transformers 5's T5Config alone would tie it).
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


# `arch:` names of build_blip2 (and of recon_ft.models.archs)
ARCHS = {"blip2_opt_2.7b": blip2_opt_arch, "blip2_flan_t5_xl": blip2_flan_t5_arch}


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
    """BLIP-2 at hidden size 32, no dropout (as the tiny BLIP): ViT, Q-Former (cross-attention in
    every layer) and an OPT ("opt", decoder-only) or T5 ("t5", encoder-decoder) language model.
    Special ids as OPT's and T5's (recon_ft.models.trained_tokenizers); `vocab_size` may exceed the
    tokenizer's, as the released models pad their embedding matrices."""
    from transformers import Blip2Config

    h = hidden_size
    if language_model == "opt":
        text = dict(model_type="opt", vocab_size=vocab_size, hidden_size=h, ffn_dim=2 * h, num_hidden_layers=num_layers,
                    num_attention_heads=2, max_position_embeddings=128, word_embed_proj_dim=h, dropout=0.0,
                    bos_token_id=2, eos_token_id=2, pad_token_id=1)
    elif language_model == "t5":
        text = dict(model_type="t5", vocab_size=vocab_size, d_model=h, d_kv=h // 2, d_ff=2 * h, num_layers=num_layers,
                    num_decoder_layers=num_layers, num_heads=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0, eos_token_id=1,
                    pad_token_id=0)
    else:
        raise ValueError(f"captioner.tiny.language_model: expected opt or t5, got {language_model!r}")
    return Blip2Config(
        vision_config=dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=num_layers, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        qformer_config=dict(hidden_size=h, num_hidden_layers=num_layers, num_attention_heads=2,
                            intermediate_size=2 * h, cross_attention_frequency=1, encoder_hidden_size=h,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        text_config=text,
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_index,
    )
