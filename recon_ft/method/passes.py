"""The passes the paired and the unpaired cycle terms share: a training draw of noised latents, and
the image cycle's core (soft caption -> bridge -> denoiser). recon_ft/method/objective.py and
recon_ft/method/unpaired.py call them."""

from __future__ import annotations

import torch

from recon_ft.method import losses as L


def noised_latents(generator, moments: torch.Tensor, rng, min_snr_gamma=None):
    """A training draw on VAE posteriors (B, 2C, h, w): z0 sampled, then t, noise and zt; returns
    (zt, t, alpha_bar (B,), target, min-SNR weights or None)."""
    z0 = generator.sample_latents(moments.detach(), rng)  # (B, C, h, w)
    t = torch.randint(0, generator.num_train_timesteps, (z0.shape[0],), generator=rng, device=z0.device)
    noise = torch.randn(z0.shape, generator=rng, device=z0.device, dtype=z0.dtype)
    alpha_bar = generator.alphas_cumprod.to(z0.device)[t]  # (B,)
    zt = L.add_noise(z0, noise, alpha_bar)
    target = L.diffusion_target(z0, noise, alpha_bar, generator.prediction_type)
    snr_w = L.min_snr_weights(alpha_bar, min_snr_gamma, generator.prediction_type) if min_snr_gamma else None
    return zt, t, alpha_bar, target, snr_w


def soft_caption_denoising(captioner, generator, bridge, logits, tokens, zt, t, target, snr_w, cfg, rng, critic):
    """The image cycle's core, paired or not: the soft caption of teacher-forced `logits` over
    `tokens` conditions the denoiser at (zt, t). Returns (loss, probs (B, N, V_C), caption mask (B, N))."""
    # logits[:, i] predicts token i + 1, so the caption tokens P.. are predicted by positions P-1..
    p_len = tokens.prompt_length
    caption_mask = (tokens.labels[:, p_len:] != L.IGNORE_INDEX) & (
        tokens.input_ids[:, p_len:] != captioner.eos_token_id
    )  # (B, N): caption tokens, not [SEP] or padding
    probs = L.soft_tokens(logits[:, p_len - 1 : -1], cfg.tau, cfg.gumbel, rng)  # (B, N, V_C)
    # P(next position continues the word), (B, N): sends "skate ##board" to "skate board</w>"
    next_continues = bridge.next_continues(probs, caption_mask)
    # through B into the text encoder's(s') token embeddings, then encoded: cond as encode_text's
    cond_soft = generator.encode_bridged(bridge, probs, next_continues, caption_mask.sum(1), critic=critic)
    pred_soft = generator.denoise(zt, t, cond_soft, critic=critic)
    return L.image_cycle_loss(pred_soft, target, snr_w), probs, caption_mask
