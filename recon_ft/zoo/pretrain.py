"""The three pretraining stages of the zoo, each a plain loop over batches drawn from memory.

Order matters: the VAE first (a random VAE decodes every latent to noise), then the UNet and text
encoder on the frozen VAE's latents; the captioner is independent of both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from recon_ft.data.synthetic import COLOURS, KINDS, SIZES
from recon_ft.method.losses import add_noise, diffusion_target
from recon_ft.zoo.data import RenderedSplit, to_unit_range
from recon_ft.zoo.recipe import CaptionerRecipe, UnetRecipe, VaeRecipe

Curve = list[tuple[int, float]]  # (step, loss) every `log_every` steps


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loop(name: str, steps: int, params, optimizer, scheduler, step_loss: Callable[[], torch.Tensor],
          log_every: int = 50) -> Curve:
    curve: Curve = []
    bar = tqdm(range(steps), desc=name, dynamic_ncols=True, mininterval=2)
    for step in bar:
        loss = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps - 1:
            value = loss.item()
            curve.append((step, value))
            bar.set_postfix(loss=f"{value:.4f}")
    return curve


def train_vae(vae, data: RenderedSplit, r: VaeRecipe, size: int, rng: torch.Generator) -> Curve:
    """MSE reconstruction of a posterior sample + kl_weight x the KL per latent element."""
    vae.requires_grad_(True).train()
    params = list(vae.parameters())
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, 20, r.steps)

    def step_loss():
        x, _, _ = data.batch(rng, r.batch_size, size)  # (B, 3, size, size)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=rng)  # (B, 4, size / 2, size / 2)
        kl = posterior.kl().mean() / z[0].numel()
        return F.mse_loss(vae.decode(z).sample, x) + r.kl_weight * kl

    curve = _loop("zoo: VAE", r.steps, params, optimizer, scheduler, step_loss)
    vae.requires_grad_(False).eval()
    return curve


@torch.no_grad()
def latent_moments(vae, data: RenderedSplit, size: int, chunk: int = 500) -> torch.Tensor:
    """The VAE posterior's parameters (N, 8, size / 2, size / 2) of every item, computed once."""
    return torch.cat([
        vae.encode(to_unit_range(data.images[i : i + chunk], size)).latent_dist.parameters
        for i in range(0, len(data), chunk)
    ])


def train_unet(generator, data: RenderedSplit, moments: torch.Tensor, r: UnetRecipe, rng: torch.Generator) -> Curve:
    """diffusers' text-to-image loss (uniform t; the generator's prediction type decides the target:
    epsilon, or v for SD 2.x) with full weights; a share of the captions is emptied so that
    classifier-free guidance has an unconditional model. Through the generator interface: SDXL's
    conditioning (two text encoders, pooled embedding, size ids) is its own `encode_text`'s."""
    unet = generator.unet
    trained = [unet] + (list(generator.text_encoders()) if r.train_text_encoder else [])
    for module in trained:
        module.requires_grad_(True).train()
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=1e-2)
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps)
    alphas = generator.alphas_cumprod  # (T,)

    def step_loss():
        _, texts, index = data.batch(rng, r.batch_size, canonical=r.canonical_captions, images=False)
        drop = (torch.rand(r.batch_size, generator=rng) < r.caption_dropout).tolist()
        texts = ["" if d else t for t, d in zip(texts, drop)]
        z0 = generator.sample_latents(moments[index], rng)  # (B, 4, h, w), scaled
        noise = torch.randn(z0.shape, generator=rng)
        t = torch.randint(generator.num_train_timesteps, (r.batch_size,), generator=rng)
        zt = add_noise(z0, noise, alphas[t])
        cond = generator.encode_text(generator.tokenize(texts))  # (B, 77, D); SDXL: an SDXLCond
        target = diffusion_target(z0, noise, alphas[t], generator.prediction_type)  # noise, or v
        return F.mse_loss(generator.denoise(zt, t, cond), target)

    curve = _loop("zoo: UNet", r.steps, params, optimizer, scheduler, step_loss)
    for module in trained:
        module.requires_grad_(False).eval()
    return curve


def grammar_token_ids(tokenizer) -> torch.Tensor:
    """Sorted ids of every token the benchmark's captions use, and [SEP]."""
    words = " ".join(["a", "left", "right", "of", *KINDS, *SIZES, *COLOURS])
    ids = set(tokenizer(words, add_special_tokens=False).input_ids) | {tokenizer.sep_token_id}
    return torch.tensor(sorted(ids))


def train_captioner(captioner, data: RenderedSplit, r: CaptionerRecipe, rng: torch.Generator) -> Curve:
    """Teacher-forced caption cross-entropy with full weights.

    Captioners with a large vocabulary (BLIP, GIT: BERT's 30,522 WordPieces) train with a sampled
    softmax: the LM head scores the grammar's tokens plus `negatives` ids drawn uniformly each step,
    not the whole vocabulary (the full head is about 90% of a CPU step here). Every id is drawn as a
    negative about steps x negatives / 30,524 times (80 with the default recipe), which keeps the
    unused ids' logits low; the build's summary checks the result with the full vocabulary (beam
    search). Small vocabularies (the offline OPT / T5 tokenizers of the BLIP-2 variants, a few
    hundred tokens) take the full softmax through the captioner interface's `logits`.
    """
    model = captioner.model
    model.requires_grad_(True).train()
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=r.lr, weight_decay=1e-2, betas=(0.9, 0.98))
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps)
    head = lm_head(captioner)

    if head is None:
        def step_loss():
            x, texts, _ = data.batch(rng, r.batch_size, canonical=r.canonical_captions)
            tokens = captioner.tokenize(texts)
            logits = captioner.logits(captioner.preprocess(x), tokens)  # (B, L, V); i predicts i + 1
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens.labels[:, 1:].flatten(), ignore_index=-100)
    else:
        grammar = grammar_token_ids(captioner.tokenizer)
        transform, weight, bias = head
        vocab_size = weight.shape[0]

        def step_loss():
            x, texts, _ = data.batch(rng, r.batch_size, canonical=r.canonical_captions)
            tokens = captioner.tokenize(texts)
            hidden = text_hidden(captioner, captioner.preprocess(x), tokens)  # (B, L, H); i predicts i + 1
            labels = tokens.labels[:, 1:]
            keep = labels != -100
            hidden = transform(hidden[:, :-1][keep])  # (N, H): the caption positions only
            target = labels[keep]  # (N,)
            negatives = torch.randint(vocab_size, (r.negatives,), generator=rng)
            candidates = torch.unique(torch.cat([grammar, target, negatives]))  # sorted, (K,)
            logits = hidden @ weight[candidates].T + bias[candidates]  # (N, K)
            return F.cross_entropy(logits, torch.searchsorted(candidates, target))

    curve = _loop("zoo: captioner", r.steps, params, optimizer, scheduler, step_loss)
    model.requires_grad_(False).eval()
    return curve


def lm_head(captioner):
    """(transform, weight (V, H), bias (V,)) of a captioner whose head the sampled softmax can
    split from its last hidden state (BLIP, GIT), else None (full logits)."""
    from recon_ft.models.blip import BlipCaptioner
    from recon_ft.models.git import GitCaptioner

    if isinstance(captioner, BlipCaptioner):
        head = captioner.model.text_decoder.cls.predictions
        return head.transform, head.decoder.weight, head.decoder.bias
    if isinstance(captioner, GitCaptioner):
        output = captioner.model.output  # nn.Linear(H, V) straight on the last hidden state
        return (lambda h: h), output.weight, output.bias
    return None


def text_hidden(captioner, pixel_values: torch.Tensor, tokens) -> torch.Tensor:
    """The last hidden state (B, L, H) at the text positions, before the LM head."""
    from recon_ft.models.blip import BlipCaptioner

    model = captioner.model
    if isinstance(captioner, BlipCaptioner):
        image = model.vision_model(pixel_values=pixel_values).last_hidden_state
        return model.text_decoder.bert(
            tokens.input_ids, attention_mask=tokens.attention_mask, encoder_hidden_states=image, is_decoder=True
        ).last_hidden_state
    # GIT: one transformer over [N image tokens; L text tokens]
    out = model.git(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixel_values)
    return out.last_hidden_state[:, captioner.num_image_tokens :]
