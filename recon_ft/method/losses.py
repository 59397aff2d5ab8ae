"""The four training losses of recon_ft (docs/design.md, "The method") as pure functions on tensors.

Notation: a_t = alphas_cumprod[t] (the cumulative product of the noise schedule's alphas),
z0 clean scaled latents, n Gaussian noise, zt = sqrt(a_t) z0 + sqrt(1 - a_t) n.

  caption_loss     L_cap     teacher-forced cross-entropy of the captioner on the caption.
  generation_loss  L_gen     denoising loss of the generator, epsilon or v target, min-SNR option.
  image_cycle_loss L_i2t2i   the same denoising loss, the denoiser conditioned on the captioner's
                             soft caption (image -> caption -> image).
  text_cycle_loss  L_t2i2t   the captioner's caption loss of y on the image decoded from the
                             generator's x0 prediction (text -> image -> caption).
The unpaired terms (recon_ft/method/unpaired.py) reuse these, with `ddim_step` for the sampler the
unpaired text cycle backpropagates through.

The model calls that produce these tensors live in recon_ft/method/objective.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over the labelled tokens.

    logits (B, L, V) with logits[:, i] predicting token i + 1; labels (B, L) with IGNORE_INDEX on the
    prompt and on padding (those positions are excluded from the mean).
    """
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1)
    return F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) broadcastable against latents."""
    return a.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(z0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """zt = sqrt(a_t) z0 + sqrt(1 - a_t) n; alpha_bar (B,)."""
    a = _expand(alpha_bar, z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def diffusion_target(z0, noise, alpha_bar, prediction_type: str) -> torch.Tensor:
    """What the denoiser regresses: n (epsilon) or v = sqrt(a_t) n - sqrt(1 - a_t) z0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _expand(alpha_bar, z0)
        return a.sqrt() * noise - (1 - a).sqrt() * z0
    raise ValueError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {prediction_type!r}")


def predict_x0(zt, pred, alpha_bar, prediction_type: str) -> torch.Tensor:
    """The clean latent implied by a prediction at zt.

    epsilon: z0_hat = (zt - sqrt(1 - a_t) n_hat) / sqrt(a_t);  v: z0_hat = sqrt(a_t) zt - sqrt(1 - a_t) v_hat.
    """
    a = _expand(alpha_bar, zt)
    if prediction_type == "epsilon":
        return (zt - (1 - a).sqrt() * pred) / a.sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * zt - (1 - a).sqrt() * pred
    raise ValueError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {prediction_type!r}")


def predict_noise(zt, pred, alpha_bar, prediction_type: str) -> torch.Tensor:
    """The noise implied by a prediction at zt. epsilon: n_hat = pred; v: n_hat = sqrt(a_t) v_hat + sqrt(1 - a_t) zt."""
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        a = _expand(alpha_bar, zt)
        return a.sqrt() * pred + (1 - a).sqrt() * zt
    raise ValueError(f"prediction_type: expected 'epsilon' or 'v_prediction', got {prediction_type!r}")


def ddim_step(zt, pred, alpha_bar, alpha_bar_prev, prediction_type: str) -> torch.Tensor:
    """One deterministic DDIM step (eta 0) from a_t to a_prev, differentiable:
    z_prev = sqrt(a_prev) z0_hat + sqrt(1 - a_prev) n_hat. alpha_bar, alpha_bar_prev: (B,)."""
    z0_hat = predict_x0(zt, pred, alpha_bar, prediction_type)
    noise_hat = predict_noise(zt, pred, alpha_bar, prediction_type)
    a_prev = _expand(alpha_bar_prev, zt)
    return a_prev.sqrt() * z0_hat + (1 - a_prev).sqrt() * noise_hat


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """Sampling timesteps with "trailing" spacing (Lin et al. 2024, diffusers' timestep_spacing):
    T - 1 first, then every T / steps down: 1000, 10 -> 999, 899, ..., 99."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"sampling steps: expected 1..{num_train_timesteps}, got {steps}")
    return [int(round(num_train_timesteps - i * num_train_timesteps / steps)) - 1 for i in range(steps)]


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B,): each row's mean squared error."""
    return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)


def min_snr_weights(alpha_bar: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023), with diffusers' semantics.

    snr = a_t / (1 - a_t); weight = min(snr, gamma) / snr for epsilon, min(snr, gamma) / (snr + 1) for v.
    """
    snr = alpha_bar / (1 - alpha_bar)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def generation_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean ||pred - target||^2; with per-sample weights (B,), mean over elements then weighted mean."""
    if weights is None:
        return F.mse_loss(pred.float(), target.float())
    return (per_sample_mse(pred, target) * weights).mean()


def image_cycle_loss(pred_soft: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_i2t2i: the denoising loss of the real image's noised latent, the denoiser conditioned on the
    captioner's soft caption. It bounds -log p_G(x | caption), so a caption that lets G denoise x well
    carries x's content."""
    return generation_loss(pred_soft, target, weights)


def text_cycle_loss(logits_on_generated: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0):
    """L_t2i2t: the caption loss of y on the image decoded from the generator's x0 prediction."""
    return caption_loss(logits_on_generated, labels, label_smoothing)


def soft_tokens(logits: torch.Tensor, tau: float = 1.0, gumbel: bool = False,
                rng: torch.Generator | None = None) -> torch.Tensor:
    """Token distributions p (B, N, V) from logits (B, N, V).

    softmax(logits / tau), or a straight-through Gumbel-softmax sample: one-hot forward, the
    relaxed sample's gradient backward. The Gumbel noise g = -log(E), E ~ Exp(1), comes from
    `rng` (the step's generator, so a resumed run draws the same), not from the global RNG.
    """
    if not gumbel:
        return torch.softmax(logits.float() / tau, dim=-1)
    logits = logits.float()
    exp = torch.empty_like(logits).exponential_(generator=rng)  # (B, N, V)
    soft = torch.softmax((logits - exp.log()) / tau, dim=-1)
    hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return hard - soft.detach() + soft
