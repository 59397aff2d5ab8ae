"""The cycle terms as `compute_losses` wires them, against values computed by hand.

Every expected value here is built from primitive torch ops and direct calls of the tiny models'
own modules (the VAE, CLIP's text model, the UNet, BLIP's forward) on the same tensors: the noise,
timesteps and latent sample are re-drawn from the seed in the order the objective documents
(latent sample, timesteps, noise), the min-SNR weights and the smoothed cross-entropy are written
out. Nothing on the expected side calls recon_ft.method.losses, recon_ft.method.objective or the bridge.
"""

from __future__ import annotations

import math

import pytest
import torch

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.method.objective import LossConfig, compute_losses
from tests.conftest import tiny_pair

# Every word is one BLIP token and one CLIP token, so the caption's CLIP ids are its words' ids.
CAPTIONS = ["a small red circle", "a large blue square left of a green star"]
SEED = 7
GAMMA = 0.05  # min-SNR gamma below most timesteps' SNR, so the weights are not all 1
SMOOTHING = 0.3


def _randomize_adapters(*models):
    """LoRA B starts at zero; random B makes the adapters change every forward pass they are in."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for model in models:
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def pair(request):
    captioner, generator = tiny_pair(prediction_type=request.param)
    assert generator.prediction_type == request.param
    _randomize_adapters(captioner, generator)
    # Random-init BLIP is nearly uniform over 30k tokens, where label smoothing hardly changes the
    # loss; a sharper output layer makes every term of the smoothed cross-entropy count.
    with torch.no_grad():
        captioner.model.text_decoder.cls.predictions.decoder.weight.mul_(30.0)
    return captioner, generator


def make_batch(captioner, generator):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(len(CAPTIONS), 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
    return {"image_gen": images, "image_cap": captioner.preprocess(images), "caption": list(CAPTIONS), "n_bad": 0}


def draws_by_hand(generator, images):
    """z0, t, noise, a_t exactly as the objective draws them from a generator seeded with SEED."""
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        moments = generator.vae.encode(images).latent_dist.parameters
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    z0 = (mean + std * torch.randn(mean.shape, generator=g)) * generator.vae.config.scaling_factor
    t = torch.randint(0, 1000, (z0.shape[0],), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    # The DDPM schedule of SD v1 written out: scaled-linear betas from 0.00085 to 0.012.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    a = torch.cumprod(1 - betas, 0)[t].float()
    return z0, t, noise, a


def target_by_hand(z0, noise, a, prediction_type):
    a4 = a.view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        return noise
    return a4.sqrt() * noise - (1 - a4).sqrt() * z0


def min_snr_by_hand(a, prediction_type):
    snr = a / (1 - a)
    clipped = torch.where(snr < GAMMA, snr, torch.full_like(snr, GAMMA))
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def weighted_mse_by_hand(pred, target, w):
    per_sample = ((pred - target) ** 2).flatten(1).mean(1)
    return (per_sample * w).sum() / len(w)


def clip_ids(generator, captions):
    """CLIP token ids: <|startoftext|> words <|endoftext|>, padded with <|endoftext|> to 77."""
    tok = generator.tokenizer
    rows = []
    for c in captions:
        words = [tok.convert_tokens_to_ids(w + "</w>") for w in c.split()]
        assert tok.unk_token_id not in words
        rows.append([49406, *words, 49407] + [49407] * (77 - len(words) - 2))
    return torch.tensor(rows)


def one_hot_logits(tokens, vocab_size):
    """Teacher-forced logits whose softmax is exactly one-hot on the next caption token."""
    logits = torch.full((*tokens.input_ids.shape, vocab_size), -1e4)
    nxt = torch.roll(tokens.input_ids, -1, dims=1)  # logits[:, i] predicts input_ids[:, i + 1]
    logits.scatter_(2, nxt.unsqueeze(-1), 0.0)
    return logits


def test_image_cycle_soft_caption_and_loss_by_hand(pair, bridge, monkeypatch):
    captioner, generator = pair
    pt = generator.prediction_type
    batch = make_batch(captioner, generator)
    vocab = captioner.model.config.text_config.vocab_size

    seen = []
    real_denoise = generator.denoise
    monkeypatch.setattr(captioner, "logits", lambda pixels, tokens, critic=False: one_hot_logits(tokens, vocab))
    monkeypatch.setattr(generator, "denoise", lambda zt, t, cond, critic=False: (
        seen.append((zt, t, cond)), real_denoise(zt, t, cond, critic=critic))[1])
    cfg = LossConfig(w_cap=0.0, w_gen=1.0, lambda_img=1.0, lambda_txt=0.0, min_snr_gamma=GAMMA)
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))
    assert sorted(out) == ["bridge_mass", "loss", "loss_gen", "loss_i2t2i"]

    ids = clip_ids(generator, CAPTIONS)
    with torch.no_grad():
        cond = generator.text_encoder(input_ids=ids).last_hidden_state  # CLIPTextModel's own forward
    (_, _, cond_real), (_, _, cond_soft) = seen
    # The soft caption of a one-hot captioner is the caption itself: the same conditioning as its ids.
    torch.testing.assert_close(cond_real, cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond_soft, cond, rtol=1e-5, atol=1e-5)
    assert out["bridge_mass"].item() == 1.0  # every caption token is matched exactly

    z0, t, noise, a = draws_by_hand(generator, batch["image_gen"])
    zt = a.view(-1, 1, 1, 1).sqrt() * z0 + (1 - a.view(-1, 1, 1, 1)).sqrt() * noise
    for zt_seen, t_seen, _ in seen:
        assert t_seen.tolist() == t.tolist()
        torch.testing.assert_close(zt_seen, zt)
    w = min_snr_by_hand(a, pt)
    assert (w - 1).abs().min() > 0.05 and (w[0] - w[1]).abs() > 1e-4  # the weights matter
    with torch.no_grad():
        pred = generator.unet(zt, t, encoder_hidden_states=cond).sample
    expected = weighted_mse_by_hand(pred, target_by_hand(z0, noise, a, pt), w)
    # the same tensors, so the denoising loss of the real and of the soft caption coincide
    torch.testing.assert_close(out["loss_i2t2i"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss_gen"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss"], 2 * expected, rtol=1e-5, atol=1e-7)


def test_image_cycle_mismatch_control_denoises_the_next_items_image(pair, bridge, monkeypatch):
    """loss.i2t2i_mismatch: soft caption b conditions the denoising of item b-1's noised latents
    (same t, noise and weight as that item), so the term says nothing about caption b's own image."""
    captioner, generator = pair
    pt = generator.prediction_type
    batch = make_batch(captioner, generator)
    vocab = captioner.model.config.text_config.vocab_size
    monkeypatch.setattr(captioner, "logits", lambda pixels, tokens, critic=False: one_hot_logits(tokens, vocab))
    seen = []
    real_denoise = generator.denoise
    monkeypatch.setattr(generator, "denoise", lambda zt, t, cond, critic=False: (
        seen.append((zt, t)), real_denoise(zt, t, cond, critic=critic))[1])
    cfg = LossConfig(w_cap=0.0, w_gen=1.0, lambda_img=1.0, lambda_txt=0.0, min_snr_gamma=GAMMA, i2t2i_mismatch=True)
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))

    ids = clip_ids(generator, CAPTIONS)
    z0, t, noise, a = draws_by_hand(generator, batch["image_gen"])
    zt = a.view(-1, 1, 1, 1).sqrt() * z0 + (1 - a.view(-1, 1, 1, 1)).sqrt() * noise
    w = min_snr_by_hand(a, pt)
    target = target_by_hand(z0, noise, a, pt)
    with torch.no_grad():
        cond = generator.text_encoder(input_ids=ids).last_hidden_state
        own = weighted_mse_by_hand(generator.unet(zt, t, encoder_hidden_states=cond).sample, target, w)
        roll = lambda x: x.roll(1, dims=0)  # noqa: E731
        pred = generator.unet(roll(zt), roll(t), encoder_hidden_states=cond).sample
    expected = weighted_mse_by_hand(pred, roll(target), roll(w))
    torch.testing.assert_close(out["loss_i2t2i"], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss_gen"], own, rtol=1e-5, atol=1e-7)  # L_gen keeps its pairs
    # L_gen denoises each item's own latents, the control the previous item's (a tiny random UNet
    # barely tells the two apart by its loss, so the inputs are what is compared)
    (zt_gen, t_gen), (zt_cycle, t_cycle) = seen
    torch.testing.assert_close(zt_gen, zt)
    torch.testing.assert_close(zt_cycle, roll(zt))
    assert t_cycle.tolist() == roll(t).tolist() and not torch.equal(zt_cycle, zt_gen)


def smoothed_ce_by_hand(logits, input_ids, attention_mask, prompt_length, eps):
    """Mean over caption tokens (after the prompt, [SEP] included, padding excluded) of
    (1 - eps) * (-log p_y) + eps * mean_k(-log p_k), position i predicting token i + 1."""
    logp = logits.double().log_softmax(-1)
    total, count = 0.0, 0
    for b in range(input_ids.shape[0]):
        for j in range(prompt_length, input_ids.shape[1]):
            if attention_mask[b, j] == 0:
                continue
            row = logp[b, j - 1]
            total += (1 - eps) * -row[input_ids[b, j]] - eps * row.mean()
            count += 1
    return total / count


def test_text_cycle_loss_by_hand(pair, bridge):
    captioner, generator = pair
    pt = generator.prediction_type
    batch = make_batch(captioner, generator)
    cfg = LossConfig(w_cap=1.0, w_gen=0.0, lambda_img=0.0, lambda_txt=1.0, label_smoothing=SMOOTHING)
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))
    assert sorted(out) == ["loss", "loss_cap", "loss_t2i2t"]

    enc = captioner.tokenizer(["a picture of " + c for c in CAPTIONS], padding="longest", return_tensors="pt")
    input_ids = enc.input_ids.clone()
    input_ids[:, 0] = captioner.model.config.text_config.bos_token_id  # [DEC]
    prompt_length = 4  # [DEC] a picture of
    assert captioner.tokenizer.convert_ids_to_tokens(enc.input_ids[0, 1:prompt_length].tolist()) == ["a", "picture", "of"]

    z0, t, noise, a = draws_by_hand(generator, batch["image_gen"])
    a4 = a.view(-1, 1, 1, 1)
    zt = a4.sqrt() * z0 + (1 - a4).sqrt() * noise
    with torch.no_grad():
        cond = generator.text_encoder(input_ids=clip_ids(generator, CAPTIONS)).last_hidden_state
        pred = generator.unet(zt, t, encoder_hidden_states=cond).sample
        z0_hat = (zt - (1 - a4).sqrt() * pred) / a4.sqrt() if pt == "epsilon" else a4.sqrt() * zt - (1 - a4).sqrt() * pred
        x_hat = generator.vae.decode(z0_hat / generator.vae.config.scaling_factor).sample.clamp(-1, 1)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        assert x_hat.shape[-1] == captioner.image_size  # no resizing at these sizes
        pixels_hat = ((x_hat + 1) / 2 - mean) / std
        logits_hat = captioner.model(pixel_values=pixels_hat, input_ids=input_ids,
                                     attention_mask=enc.attention_mask).logits
        pixels = ((batch["image_gen"] + 1) / 2 - mean) / std
        logits = captioner.model(pixel_values=pixels, input_ids=input_ids, attention_mask=enc.attention_mask).logits

    expected_t2i2t = smoothed_ce_by_hand(logits_hat, input_ids, enc.attention_mask, prompt_length, SMOOTHING)
    unsmoothed = smoothed_ce_by_hand(logits_hat, input_ids, enc.attention_mask, prompt_length, 0.0)
    assert abs(expected_t2i2t - unsmoothed) > 1e-3 * abs(unsmoothed)  # the smoothing matters here
    assert out["loss_t2i2t"].item() == pytest.approx(float(expected_t2i2t), rel=1e-5)
    expected_cap = smoothed_ce_by_hand(logits, input_ids, enc.attention_mask, prompt_length, SMOOTHING)
    assert out["loss_cap"].item() == pytest.approx(float(expected_cap), rel=1e-5)
    assert out["loss"].item() == pytest.approx(float(expected_cap + expected_t2i2t), rel=1e-5)


def test_bridge_mass_is_the_share_on_matched_tokens(pair, bridge, monkeypatch):
    """Half of every caption position's mass on the caption token, half on BERT's [unused5] (a
    placeholder with no counterpart): exactly half of the soft caption's mass is matched."""
    captioner, generator = pair
    vocab = captioner.model.config.text_config.vocab_size
    unused = captioner.tokenizer.convert_tokens_to_ids("[unused5]")

    def half_logits(pixels, tokens, critic=False):
        logits = one_hot_logits(tokens, vocab)
        logits[..., unused] = 0.0
        return logits

    monkeypatch.setattr(captioner, "logits", half_logits)
    cfg = LossConfig(w_cap=0.0, w_gen=0.0, lambda_img=1.0, lambda_txt=0.0)
    out = compute_losses(captioner, generator, bridge, make_batch(captioner, generator), cfg,
                         rng=torch.Generator().manual_seed(SEED))
    assert out["bridge_mass"].item() == 0.5


def test_text_cycle_t_max_keeps_exactly_the_rows_below_it(pair, bridge):
    """A partial selection: the one row with t < t_max, with its own caption and its own noised latent."""
    captioner, generator = pair
    pt = generator.prediction_type
    batch = make_batch(captioner, generator)
    z0, t, noise, a = draws_by_hand(generator, batch["image_gen"])
    assert t[0] != t[1]
    keep = int(t.argmin())  # t_max between the two timesteps: only this row qualifies
    cfg = LossConfig(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=1.0, t_max=int(t.max()))
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))

    def caption_loss_of(row, caption_row):
        a4 = a[row].view(1, 1, 1, 1)
        zt = a4.sqrt() * z0[row : row + 1] + (1 - a4).sqrt() * noise[row : row + 1]
        enc = captioner.tokenizer(["a picture of " + CAPTIONS[caption_row]], return_tensors="pt")
        input_ids = enc.input_ids.clone()
        input_ids[:, 0] = captioner.model.config.text_config.bos_token_id
        with torch.no_grad():
            cond = generator.text_encoder(input_ids=clip_ids(generator, [CAPTIONS[row]])).last_hidden_state
            pred = generator.unet(zt, t[row : row + 1], encoder_hidden_states=cond).sample
            z0_hat = (zt - (1 - a4).sqrt() * pred) / a4.sqrt() if pt == "epsilon" else a4.sqrt() * zt - (1 - a4).sqrt() * pred
            x_hat = generator.vae.decode(z0_hat / generator.vae.config.scaling_factor).sample.clamp(-1, 1)
            mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
            logits = captioner.model(pixel_values=((x_hat + 1) / 2 - mean) / std, input_ids=input_ids,
                                     attention_mask=enc.attention_mask).logits
        return float(smoothed_ce_by_hand(logits, input_ids, enc.attention_mask, 4, 0.0))

    expected = caption_loss_of(keep, keep)
    assert out["loss_t2i2t"].item() == pytest.approx(expected, rel=1e-5)
    # the other row, or the kept row's image with the other caption, would give another value
    assert caption_loss_of(1 - keep, 1 - keep) != pytest.approx(expected, rel=1e-3)
    assert caption_loss_of(keep, 1 - keep) != pytest.approx(expected, rel=1e-3)
