"""The cycle terms on unpaired data: images without captions, captions without images.

  L_i2t2i_unpaired  (trains the captioner; `loss.unpaired_image_mode`)
    soft        the captioner samples its own caption for the image; its teacher-forced soft tokens
                over that caption go through the bridge into the generator, whose denoising loss on
                the image is the loss (the paired image cycle, on the captioner's own caption).
    ranked      the beam caption and k sampled captions are scored by the generator's denoising loss
                on the image over D shared (t, noise) draws (the generator as a classifier,
                arXiv 2303.16203); the caption loss on the lowest-scoring one. No gradient passes
                through a softmax, so none vanishes when the captioner is confident.
    self_train  the caption loss on the captioner's own beam caption: the same captioner compute, no
                generator. What the generator adds is the difference from this control.
    oracle      the caption loss on the images' true captions (a synthetic stream's "truth"): the
                same images as pairs, the ceiling a study compares the cycles with.
  L_t2i2t_unpaired  (trains the generator)
    The generator samples an image for the text from noise with deterministic DDIM steps (guided
    as it samples), the gradient kept through the last K steps only (DRaFT-K, arXiv 2309.17400);
    the decoded image's caption loss of the text, the captioner a critic.

Gradient routing, as the paired terms (docs/design.md): with `cycle_grads=own` the generator is a
critic in the image term and the captioner in the text term; with `both` each soft / sampled path
also trains the other model. Captions are chosen without gradient, so `ranked` and `self_train`
reach the captioner only, whatever `cycle_grads` says.

Sampling (caption search, the noise of the text cycle) draws from the step's generator `rng`:
a resumed run draws the same captions and images.
"""

from __future__ import annotations

import contextlib

import torch

from recon_ft.method import losses as L
from recon_ft.method.passes import noised_latents, soft_caption_denoising
from recon_ft.utils import eval_mode

IMAGE_MODES = ("soft", "ranked", "self_train", "oracle")


def image_cycle_unpaired(captioner, generator, bridge, images: dict, cfg, rng: torch.Generator,
                         critic: bool) -> dict[str, torch.Tensor]:
    """{"loss_i2t2i_unpaired", plus the mode's mechanism values} for unpaired images
    {"image_cap": (B, 3, Hc, Wc), "image_gen": (B, 3, Hg, Wg)}."""
    image_cap, image_gen = images["image_cap"], images["image_gen"]
    mode = cfg.unpaired_image_mode
    if mode == "self_train":
        captions = own_captions(captioner, image_cap, cfg, rng, sampled=0)
        return {"loss_i2t2i_unpaired": _caption_loss_on(captioner, image_cap, captions, cfg)}
    if mode == "oracle":
        if "truth" not in images:
            raise ValueError("loss.unpaired_image_mode=oracle: the unpaired images have no true captions; it needs a "
                             "stream that knows them (data.unpaired.images: recon_ft.data.SyntheticImages)")
        return {"loss_i2t2i_unpaired": _caption_loss_on(captioner, image_cap, list(images["truth"]), cfg)}
    if mode == "ranked":
        b, k = image_cap.shape[0], cfg.unpaired_rank_k
        candidates = own_captions(captioner, image_cap, cfg, rng, sampled=k)  # B * (1 + k), beam first
        scores = denoising_scores(generator, image_gen, candidates, cfg.unpaired_rank_draws, rng)  # (B, 1 + k)
        best = scores.argmin(1)  # ties keep the beam caption
        chosen = [candidates[i * (1 + k) + int(j)] for i, j in enumerate(best.tolist())]
        return {"loss_i2t2i_unpaired": _caption_loss_on(captioner, image_cap, chosen, cfg),
                "unpaired/ranked_not_beam": (best != 0).float().mean()}
    if mode == "soft":
        captions = own_captions(captioner, image_cap, cfg, rng, sampled=1, beam=False)
        tokens = captioner.tokenize(captions, image_cap.device)
        logits = captioner.logits(image_cap, tokens)  # (B, L, V_C)
        with torch.no_grad():
            moments = generator.encode_moments(image_gen)  # (B, 2C, h, w), frozen VAE
        zt, t, _, target, snr_w = noised_latents(generator, moments, rng, cfg.min_snr_gamma)
        loss, probs, mask = soft_caption_denoising(captioner, generator, bridge, logits, tokens, zt, t, target,
                                                   snr_w, cfg, rng, critic)
        entropy = -(probs.detach() * probs.detach().clamp_min(1e-12).log()).sum(-1)  # (B, N)
        return {"loss_i2t2i_unpaired": loss,
                "unpaired/soft_entropy": (entropy * mask).sum() / mask.sum().clamp_min(1)}
    raise ValueError(f"loss.unpaired_image_mode: expected one of {IMAGE_MODES}, got {mode!r}")


def text_cycle_unpaired(captioner, generator, texts: list[str], cfg, rng: torch.Generator,
                        critic: bool) -> torch.Tensor:
    """L_t2i2t_unpaired of captions without images: sample, decode, caption loss of the text."""
    device = generator.alphas_cumprod.device
    z0 = sample_latents_with_grad(generator, texts, cfg.unpaired_text_sampling_steps, cfg.unpaired_text_grad_steps,
                                  cfg.unpaired_text_guidance, rng, device)
    x_hat = generator.decode_latents(z0).clamp(-1, 1)  # (B, 3, H, W)
    tokens = captioner.tokenize(texts, device)
    logits = captioner.logits(captioner.preprocess(x_hat), tokens, critic=critic)
    return L.text_cycle_loss(logits, tokens.labels, cfg.label_smoothing)


# -- pieces -------------------------------------------------------------------------------------


@torch.no_grad()
def own_captions(captioner, image_cap: torch.Tensor, cfg, rng, sampled: int, beam: bool = True) -> list[str]:
    """The captioner's captions of each image, grouped by image: its beam caption (if `beam`), then
    `sampled` nucleus samples (top_p `cfg.unpaired_caption_top_p`), seeded from `rng`.
    Captioned with the modules in eval mode (no dropout), their modes restored after."""
    length = {"max_length": cfg.unpaired_caption_max_length, "min_length": 5}  # None: the captioner's own
    with eval_mode(captioner):
        groups = []
        if beam:
            groups.append(captioner.generate(image_cap, num_beams=3, **length))
        if sampled:
            with seeded(rng, image_cap.device):
                flat = captioner.generate(image_cap, do_sample=True, top_p=cfg.unpaired_caption_top_p,
                                          num_return_sequences=sampled, **length)
            groups += [flat[j::sampled] for j in range(sampled)]
    return [group[i] for i in range(image_cap.shape[0]) for group in groups]


@torch.no_grad()
def denoising_scores(generator, image_gen: torch.Tensor, captions: list[str], draws: int, rng) -> torch.Tensor:
    """(B, C) mean denoising loss of image b conditioned on its c-th caption, captions grouped by image
    (B * C strings), over `draws` (t, noise) draws shared by the candidates of an image."""
    b = image_gen.shape[0]
    c = len(captions) // b
    cond = generator.encode_text(generator.tokenize(captions, image_gen.device))  # B * C conditionings
    moments = generator.encode_moments(image_gen)  # (B, 2C', h, w)
    scores = torch.zeros(b, c, device=image_gen.device)
    for _ in range(draws):
        zt, t, _, target, _ = noised_latents(generator, moments, rng)
        pred = generator.denoise(zt.repeat_interleave(c, 0), t.repeat_interleave(c), cond)
        scores += L.per_sample_mse(pred, target.repeat_interleave(c, 0)).view(b, c)
    return scores / draws


def sample_latents_with_grad(generator, texts: list[str], steps: int, grad_steps: int, guidance: float | None,
                             rng, device) -> torch.Tensor:
    """z0 (B, C, h, w) sampled for `texts` with `steps` DDIM steps (trailing spacing, eta 0), guided
    by `guidance` (None: the generator's own), the graph kept through the last `grad_steps` only."""
    scale = generator.guidance_scale if guidance is None else guidance
    cond = generator.encode_text(generator.tokenize(texts, device))
    uncond = generator.encode_text(generator.tokenize([""] * len(texts), device)) if scale != 1 else None
    side = generator.image_size // generator.vae_scale_factor
    channels = int(generator.unet.config.in_channels)
    alphas = generator.alphas_cumprod.to(device)
    z = torch.randn((len(texts), channels, side, side), generator=rng, device=device)
    timesteps = L.trailing_timesteps(generator.num_train_timesteps, steps)
    for i, step in enumerate(timesteps):
        with torch.set_grad_enabled(i >= steps - grad_steps and torch.is_grad_enabled()):
            t = torch.full((len(texts),), step, device=device, dtype=torch.long)
            pred = generator.denoise(z, t, cond)
            if uncond is not None:  # classifier-free guidance, as the pipeline samples
                pred_u = generator.denoise(z, t, uncond)
                pred = pred_u + scale * (pred - pred_u)
            a_prev = alphas[timesteps[i + 1]] if i + 1 < steps else torch.ones((), device=device)
            z = L.ddim_step(z, pred, alphas[t], a_prev.expand(len(texts)), generator.prediction_type)
    return z


def _caption_loss_on(captioner, image_cap, captions: list[str], cfg) -> torch.Tensor:
    tokens = captioner.tokenize(captions, image_cap.device)
    return L.caption_loss(captioner.logits(image_cap, tokens), tokens.labels, cfg.label_smoothing)


@contextlib.contextmanager
def seeded(rng: torch.Generator, device: torch.device):
    """The global RNG (transformers' sampling draws from it) seeded from `rng` inside, restored after."""
    seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], device_type=device.type):
        torch.manual_seed(seed)
        yield
