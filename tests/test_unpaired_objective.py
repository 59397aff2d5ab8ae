"""The unpaired cycle terms: which adapters each reaches, and their values against hand computations.

As in tests/test_cycle_values.py, the expected side is built from the tiny models' own modules
(the VAE, CLIP's text model, the UNet, BLIP's forward), diffusers' DDIM scheduler and written-out
cross-entropies; it does not call recon_ft.method.
"""

from __future__ import annotations

import pytest
import torch

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.method import unpaired as U
from recon_ft.method.objective import LossConfig, compute_losses
from recon_ft.utils import eval_mode
from tests.conftest import TEXT_ENCODER_ADAPTER, fake_batch, tiny_pair
from tests.test_cycle_values import _randomize_adapters, clip_ids, smoothed_ce_by_hand

SEED = 11
OFF = dict(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=0.0)
TEXTS = ["a small red circle", "a large blue square left of a green star"]
TRUTHS = ["a large green triangle", "a small purple star right of a small red circle"]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)  # LoRA's A matrices are drawn from the global RNG: the same in any test order
    return tiny_pair(text_encoder_adapter=TEXT_ENCODER_ADAPTER)


def with_unpaired(captioner, generator, b=2):
    batch = fake_batch(captioner, generator, b=2)
    g = torch.Generator().manual_seed(5)
    images = torch.rand(b, 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
    batch["unpaired_images"] = {"image_cap": captioner.preprocess(images), "image_gen": images,
                                "id": [f"u{i}" for i in range(b)], "truth": list(TRUTHS[:b])}
    batch["unpaired_texts"] = list(TEXTS)
    return batch


def backward_once(captioner, generator, bridge, **loss) -> dict:
    """The batch's losses with only `loss`'s terms (small search and sampling settings), backpropagated
    from zeroed gradients."""
    for p in list(captioner.parameters()) + list(generator.parameters()):
        p.grad = None
    cfg = LossConfig.coerce({**OFF, "unpaired_rank_k": 2, "unpaired_rank_draws": 2,
                             "unpaired_text_sampling_steps": 3, **loss})
    out = compute_losses(captioner, generator, bridge, with_unpaired(captioner, generator), cfg,
                         rng=torch.Generator().manual_seed(SEED))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    return out


def step_after(captioner, generator, bridge, **loss):
    """One SGD step on the batch's total loss: (which models' adapters got a gradient, which moved)."""
    out = backward_once(captioner, generator, bridge, **loss)
    frozen = [p for p in list(captioner.parameters()) + list(generator.parameters()) if not p.requires_grad]
    assert all(p.grad is None for p in frozen), "a frozen base weight received a gradient"
    parts = {"captioner": captioner, "unet": generator.unet, "text_encoder": generator.text_encoder}
    reached = {}
    for name, module in parts.items():
        params = [p for p in module.parameters() if p.requires_grad]
        reached[name] = any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        before = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= 0.1 * p.grad
        moved = any(not torch.equal(b, p) for b, p in zip(before, params))
        assert moved == reached[name]
        with torch.no_grad():  # undo the step: the module-scoped models stay as built
            for b, p in zip(before, params):
                p.copy_(b)
    return reached, sorted(k for k in out if k.startswith("loss_"))


@pytest.mark.parametrize(
    "loss, cycle_grads, expected",
    [
        # image term: the captioner learns; only the soft path reaches the generator, and only with both
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="soft"), "own", (True, False, False)),
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="soft"), "both", (True, True, True)),
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="ranked"), "own", (True, False, False)),
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="ranked"), "both", (True, False, False)),
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="self_train"), "both", (True, False, False)),
        (dict(lambda_img_unpaired=1.0, unpaired_image_mode="oracle"), "both", (True, False, False)),
        # text term: the generator learns (UNet and text encoder); the captioner too with both
        (dict(lambda_txt_unpaired=1.0), "own", (False, True, True)),
        (dict(lambda_txt_unpaired=1.0), "both", (True, True, True)),
        (dict(lambda_txt_unpaired=1.0, unpaired_text_grad_steps=3), "own", (False, True, True)),
    ],
)
def test_unpaired_terms_reach_and_move_exactly_the_right_adapters(pair, bridge, loss, cycle_grads, expected):
    captioner, generator = pair
    reached, terms = step_after(captioner, generator, bridge, cycle_grads=cycle_grads, **loss)
    assert (reached["captioner"], reached["unet"], reached["text_encoder"]) == expected
    assert terms == ["loss_i2t2i_unpaired" if "lambda_img_unpaired" in loss else "loss_t2i2t_unpaired"]


def test_no_unpaired_rows_no_unpaired_terms_and_the_paired_values_unchanged(pair, bridge):
    captioner, generator = pair
    cfg = LossConfig(lambda_img=1.0, lambda_txt=1.0, lambda_img_unpaired=1.0, lambda_txt_unpaired=1.0,
                     unpaired_image_mode="self_train", unpaired_text_sampling_steps=2)
    paired_only = fake_batch(captioner, generator, b=2)
    plain = compute_losses(captioner, generator, bridge, paired_only, LossConfig(lambda_img=1.0, lambda_txt=1.0),
                           rng=torch.Generator().manual_seed(SEED))
    on = compute_losses(captioner, generator, bridge, with_unpaired(captioner, generator), cfg,
                        rng=torch.Generator().manual_seed(SEED))
    for name in ("loss_cap", "loss_gen", "loss_i2t2i", "loss_t2i2t"):
        assert torch.equal(plain[name], on[name])  # the unpaired terms draw after the paired ones
    empty = {**paired_only, "unpaired_images": {"image_cap": paired_only["image_cap"][:0],
                                                "image_gen": paired_only["image_gen"][:0], "id": []}}
    out = compute_losses(captioner, generator, bridge, empty, cfg, rng=torch.Generator().manual_seed(SEED))
    assert "loss_t2i2t_unpaired" not in out  # this batch drew no texts
    # it drew images, all of them bad: a zero that still reaches the captioner (DDP's ranks agree)
    assert out["loss_i2t2i_unpaired"].item() == 0.0 and out["loss_i2t2i_unpaired"].requires_grad
    assert "loss_i2t2i_unpaired" not in compute_losses(captioner, generator, bridge, paired_only, cfg,
                                                       rng=torch.Generator().manual_seed(SEED))


# -- values by hand -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharp_pair():
    torch.manual_seed(0)
    captioner, generator = tiny_pair(prediction_type="v_prediction")
    _randomize_adapters(captioner, generator)
    # a sharper output layer: random-init BLIP's logits hardly depend on the image otherwise
    with torch.no_grad():
        captioner.model.text_decoder.cls.predictions.decoder.weight.mul_(30.0)
    return captioner, generator


def blip_inputs(captioner, captions):
    enc = captioner.tokenizer(["a picture of " + c for c in captions], padding="longest", return_tensors="pt")
    input_ids = enc.input_ids.clone()
    input_ids[:, 0] = captioner.model.config.text_config.bos_token_id  # [DEC]
    return input_ids, enc.attention_mask


def ce_by_hand(captioner, pixels, captions):
    input_ids, mask = blip_inputs(captioner, captions)
    with torch.no_grad():
        logits = captioner.model(pixel_values=pixels, input_ids=input_ids, attention_mask=mask).logits
    return float(smoothed_ce_by_hand(logits, input_ids, mask, 4, 0.0))


def test_denoising_scores_by_hand(sharp_pair):
    captioner, generator = sharp_pair
    images = with_unpaired(captioner, generator)["unpaired_images"]["image_gen"]  # (2, 3, 32, 32)
    candidates = ["a small red circle", "a star", "a large blue square", "a purple triangle"]  # 2 per image
    scores = U.denoising_scores(generator, images, candidates, draws=3, rng=torch.Generator().manual_seed(SEED))

    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        mean, logvar = generator.vae.encode(images).latent_dist.parameters.chunk(2, dim=1)
        cond = generator.text_encoder(input_ids=clip_ids(generator, candidates)).last_hidden_state
        expected = torch.zeros(2, 2)
        alphas = generator.noise_scheduler.alphas_cumprod
        for _ in range(3):  # each draw: latent sample, timesteps, noise, shared by an image's candidates
            z0 = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn(mean.shape, generator=g))
            z0 = z0 * generator.vae.config.scaling_factor
            t = torch.randint(0, 1000, (2,), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            a = alphas[t].float().view(-1, 1, 1, 1)
            zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
            v = a.sqrt() * noise - (1 - a).sqrt() * z0
            for i in range(2):
                for c in range(2):
                    pred = generator.unet(zt[i : i + 1], t[i : i + 1], encoder_hidden_states=cond[2 * i + c][None]).sample
                    expected[i, c] += ((pred - v[i : i + 1]) ** 2).mean() / 3
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


def test_ranked_takes_each_images_own_best_caption(sharp_pair, bridge, monkeypatch):
    captioner, generator = sharp_pair
    batch = with_unpaired(captioner, generator)
    candidates = ["a small red circle", "a star", "a large blue square",  # image 0: beam, sample 1, sample 2
                  "a purple triangle", "a green star", "a small yellow square"]  # image 1
    monkeypatch.setattr(U, "own_captions", lambda *a, **k: list(candidates))
    # image 0's best is its second sample, image 1's its beam caption
    monkeypatch.setattr(U, "denoising_scores", lambda *a, **k: torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.2, 0.9]]))
    cfg = LossConfig(**OFF, lambda_img_unpaired=1.0, unpaired_image_mode="ranked", unpaired_rank_k=2)
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))
    pixels = batch["unpaired_images"]["image_cap"]
    expected = ce_by_hand(captioner, pixels, ["a large blue square", "a purple triangle"])
    swapped = ce_by_hand(captioner, pixels.flip(0), ["a large blue square", "a purple triangle"])
    assert abs(expected - swapped) > 1e-4 * expected  # a caption scored on the wrong image would not pass
    assert out["loss_i2t2i_unpaired"].item() == pytest.approx(expected, rel=1e-5)  # float32 against float64
    assert out["unpaired/ranked_not_beam"].item() == 0.5


def test_self_train_is_the_caption_loss_of_the_beam_caption(sharp_pair, bridge):
    captioner, generator = sharp_pair
    batch = with_unpaired(captioner, generator)
    cfg = LossConfig(**OFF, lambda_img_unpaired=1.0, unpaired_image_mode="self_train")
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))
    pixels = batch["unpaired_images"]["image_cap"]
    prompt = captioner.tokenizer(["a picture of "] * 2, return_tensors="pt").input_ids  # [CLS] a picture of [SEP]
    with torch.no_grad(), eval_mode(captioner):
        # BLIP's generate starts from [DEC] and drops the [SEP]; 20 positions with the prompt's 4
        ids = captioner.model.generate(pixel_values=pixels, input_ids=prompt, num_beams=3, max_new_tokens=16,
                                       min_new_tokens=1, do_sample=False)
    beam = [c.strip() for c in captioner.tokenizer.batch_decode(ids[:, 4:], skip_special_tokens=True)]
    assert all(beam)
    assert out["loss_i2t2i_unpaired"].item() == pytest.approx(ce_by_hand(captioner, pixels, beam), rel=1e-5)


def test_oracle_is_the_caption_loss_of_the_true_captions(sharp_pair, bridge):
    captioner, generator = sharp_pair
    batch = with_unpaired(captioner, generator)
    cfg = LossConfig(**OFF, lambda_img_unpaired=1.0, unpaired_image_mode="oracle")
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))
    pixels = batch["unpaired_images"]["image_cap"]
    assert out["loss_i2t2i_unpaired"].item() == pytest.approx(ce_by_hand(captioner, pixels, list(TRUTHS)), rel=1e-5)


def test_oracle_without_true_captions_says_which_stream_knows_them(pair, bridge):
    captioner, generator = pair
    batch = with_unpaired(captioner, generator)
    del batch["unpaired_images"]["truth"]  # a folder of images: no true captions
    cfg = LossConfig(**OFF, lambda_img_unpaired=1.0, unpaired_image_mode="oracle")
    with pytest.raises(ValueError, match="unpaired_image_mode=oracle.*SyntheticImages"):
        compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))


def test_soft_denoises_the_image_under_its_own_sampled_caption(sharp_pair, bridge, monkeypatch):
    captioner, generator = sharp_pair
    batch = with_unpaired(captioner, generator)
    sampled = ["a small red circle", "a large blue square left of a green star"]
    monkeypatch.setattr(U, "own_captions", lambda *a, **k: list(sampled))
    vocab = captioner.model.config.text_config.vocab_size

    def one_hot(pixels, tokens, critic=False):  # a captioner certain of its own caption
        logits = torch.full((*tokens.input_ids.shape, vocab), -1e4)
        return logits.scatter_(2, torch.roll(tokens.input_ids, -1, dims=1).unsqueeze(-1), 0.0)

    monkeypatch.setattr(captioner, "logits", one_hot)
    cfg = LossConfig(**OFF, lambda_img_unpaired=1.0, unpaired_image_mode="soft")
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))

    g = torch.Generator().manual_seed(SEED)
    images = batch["unpaired_images"]["image_gen"]
    with torch.no_grad():
        mean, logvar = generator.vae.encode(images).latent_dist.parameters.chunk(2, dim=1)
        z0 = (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn(mean.shape, generator=g))
        z0 = z0 * generator.vae.config.scaling_factor
        t = torch.randint(0, 1000, (2,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = generator.noise_scheduler.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = generator.text_encoder(input_ids=clip_ids(generator, sampled)).last_hidden_state
        pred = generator.unet(zt, t, encoder_hidden_states=cond).sample
        expected = ((pred - (a.sqrt() * noise - (1 - a).sqrt() * z0)) ** 2).mean()
    torch.testing.assert_close(out["loss_i2t2i_unpaired"], expected, rtol=1e-5, atol=1e-7)
    assert out["unpaired/soft_entropy"].item() == pytest.approx(0.0, abs=1e-6)  # one-hot: no entropy


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_text_cycle_samples_as_diffusers_ddim_and_captions_the_text(sharp_pair, bridge, guidance):
    from diffusers import DDIMScheduler

    captioner, generator = sharp_pair
    cfg = LossConfig(**OFF, lambda_txt_unpaired=1.0, unpaired_text_sampling_steps=4, unpaired_text_grad_steps=2,
                     unpaired_text_guidance=guidance)
    batch = with_unpaired(captioner, generator)
    out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(SEED))

    sched = DDIMScheduler.from_config(generator.noise_scheduler.config, timestep_spacing="trailing",
                                      set_alpha_to_one=True, clip_sample=False)
    sched.set_timesteps(4)
    with torch.no_grad():
        cond = generator.text_encoder(input_ids=clip_ids(generator, TEXTS)).last_hidden_state
        uncond = generator.text_encoder(input_ids=generator.tokenize(["", ""])).last_hidden_state
        side, channels = generator.unet.config.sample_size, generator.unet.config.in_channels  # 16, 4
        z = torch.randn((2, channels, side, side), generator=torch.Generator().manual_seed(SEED))
        for t in sched.timesteps:
            pred = generator.unet(z, t, encoder_hidden_states=cond).sample
            if guidance != 1:
                pred_u = generator.unet(z, t, encoder_hidden_states=uncond).sample
                pred = pred_u + guidance * (pred - pred_u)
            z = sched.step(pred, t, z).prev_sample
        x = generator.vae.decode(z / generator.vae.config.scaling_factor).sample.clamp(-1, 1)
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        pixels = ((x + 1) / 2 - mean) / std
    expected = ce_by_hand(captioner, pixels, TEXTS)
    assert out["loss_t2i2t_unpaired"].item() == pytest.approx(expected, rel=2e-5)
    # each text captioned on its own image: swapped, the loss moves by more than 10x the tolerance
    assert abs(ce_by_hand(captioner, pixels, TEXTS[::-1]) - expected) > 2e-4 * expected


@pytest.mark.parametrize("captioner_name, generator_name", [("tiny_blip2_opt", "sdxl"), ("tiny_git", "sd2")])
def test_other_families_train_through_the_unpaired_terms(captioner_name, generator_name):
    """BLIP-2 OPT with SDXL (two text encoders, pooled and size conditioning) and GIT with SD 2
    (v-prediction): each unpaired image mode reaches the captioner's adapters, the text cycle the
    generator's."""
    from recon_ft.method.bridge import VocabBridge
    from tests.test_captioner_families import build_captioner
    from tests.test_generator_families import _tiny

    captioner, generator = build_captioner(captioner_name), _tiny(generator_name)
    bridge = VocabBridge.from_tokenizers(captioner.tokenizer, generator.tokenizer)
    for loss, reaches in ((dict(lambda_img_unpaired=1.0, unpaired_image_mode="soft"), "captioner"),
                          (dict(lambda_img_unpaired=1.0, unpaired_image_mode="ranked"), "captioner"),
                          (dict(lambda_img_unpaired=1.0, unpaired_image_mode="self_train"), "captioner"),
                          (dict(lambda_txt_unpaired=1.0), "generator")):
        reached = _reached(captioner, generator, bridge, loss)
        assert reached == {"captioner": reaches == "captioner", "generator": reaches == "generator"}, loss


def _reached(captioner, generator, bridge, loss):
    backward_once(captioner, generator, bridge, **loss)
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
            for name, model in (("captioner", captioner), ("generator", generator))}
