"""The zoo's family variants (BLIP-2 OPT / T5, GIT, SD 2.x, SDXL): recipes and keys, smoke builds in
the standard formats, determinism, the pretraining targets, and a joint training step from them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from recon_ft.experiments.pairs.plan import ZOO_CAPTIONERS, ZOO_GENERATORS
from recon_ft.zoo import RECIPES
from recon_ft.zoo.cache import ensure_family, zoo_part
from recon_ft.zoo.families import FAMILIES, FAMILY_RECIPES, get_family_recipe
from recon_ft.zoo.family_build import build_family, build_model


def test_keys_are_their_own_and_the_default_zoo_key_is_unchanged():
    # the default zoo's key (and so its cached models) does not depend on the families
    assert RECIPES["default"].key == "default-73079c00a443"
    keys = [r.key for recipes in FAMILY_RECIPES.values() for r in recipes.values()]
    assert len(set(keys)) == len(keys) == 2 * len(FAMILIES)
    r = get_family_recipe("git")
    assert r.key.startswith("git-default-") and len(r.key) == len("git-default-") + 12
    assert dataclasses.replace(r, seed=1).key != r.key
    assert dataclasses.replace(r, captioner=dataclasses.replace(r.captioner, steps=1)).key != r.key
    with pytest.raises(ValueError, match="zoo family 'nope' is unknown"):
        get_family_recipe("nope")
    with pytest.raises(ValueError, match="recipe 'big' is unknown"):
        get_family_recipe("sd2", "big")
    with pytest.raises(ValueError, match="needs \\['vae'\\]"):
        dataclasses.replace(get_family_recipe("sd2"), vae=None)


def test_builder_sizes_of_each_family():
    # the default zoo's captioner sizes and generator schedule
    assert get_family_recipe("blip2_opt").tiny() == dict(image_size=64, patch_size=8, hidden_size=96, num_layers=4,
                                                         language_model="opt", num_query_tokens=8)
    assert get_family_recipe("blip2_t5", "smoke").tiny()["language_model"] == "t5"
    assert get_family_recipe("sd2").tiny() == dict(sample_size=32, cross_attention_dim=32,
                                                   prediction_type="v_prediction", zero_terminal_snr=True)
    assert get_family_recipe("sdxl").tiny() == dict(sample_size=32, text_dims=[32, 32], time_embed_dim=8,
                                                    prediction_type="v_prediction", zero_terminal_snr=True)
    assert get_family_recipe("git").captioner == RECIPES["default"].captioner
    assert get_family_recipe("sd2").vae == RECIPES["default"].vae
    assert {f: get_family_recipe(f).part for f in FAMILIES} == {
        "blip2_opt": "captioner", "blip2_t5": "captioner", "git": "captioner", "sd2": "generator",
        "sdxl": "generator"}


@pytest.fixture(scope="module")
def built():
    """Every family's smoke variant, in the tests' private cache (tests/conftest.py)."""
    return {f: ensure_family(f) for f in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_smoke_build_standard_format_and_resolver(family, built):
    directory = built[family]
    recipe = get_family_recipe(family, "smoke")
    assert directory.name == recipe.key
    record = json.loads((directory / "family.json").read_text())
    assert record["recipe"] == recipe.to_dict() and record["part"] == recipe.part
    part = directory / recipe.part
    if recipe.part == "captioner":
        assert (part / "config.json").is_file() and (part / "model.safetensors").is_file()
        assert set(record["curves"]) == {"captioner"} and "caption_exact" in record["competence"]
    else:
        assert (part / "model_index.json").is_file()
        assert set(record["curves"]) == {"vae", "unet"} and "vae_psnr_test" in record["competence"]
    assert len(record["curves"][recipe.part if recipe.part == "captioner" else "unet"]) == 2  # steps 0 and 2
    assert zoo_part(family) == str(part)  # ${zoo:<family>}
    assert OmegaConf.create({"p": f"${{zoo:{family}}}"}).p == str(part)


def test_loaded_variants_keep_their_family_traits(built):
    sd2 = build_model(get_family_recipe("sd2", "smoke"), built["sd2"] / "generator")
    assert sd2.prediction_type == "v_prediction" and sd2.tokenizer.pad_token == "!"
    assert sd2.latent_scale != 0.18215  # the build's own unit-variance scale was saved
    sdxl = build_model(get_family_recipe("sdxl", "smoke"), built["sdxl"] / "generator")
    assert type(sdxl).__name__ == "StableDiffusionXLGenerator" and sdxl.prediction_type == "v_prediction"
    for generator in (sd2, sdxl):  # the zoo SD's schedule and guidance, through save and load
        assert type(generator.scheduler).__name__ == "DDIMScheduler"
        assert generator.scheduler.config.rescale_betas_zero_snr
        assert float(generator.scheduler.alphas_cumprod[-1]) == 0.0
        assert generator.guidance_scale == 2.0
    t5 = build_model(get_family_recipe("blip2_t5", "smoke"), built["blip2_t5"] / "captioner")
    assert not t5.decoder_only and t5.prompt == "a picture of "


def test_the_caption_budgets_hold_the_longest_caption(cfg_train):
    """The family builds' summary and the pairing study caption with 30 positions with the prompt:
    room for the benchmark's longest caption (three shapes) and its end token in every family's
    tokens, where BLIP's 20 cuts the OPT variant's byte-level BPE caption short. Each zoo
    captioner's own length (its config's caption_max_length, what eval.py and the validation
    callback use by default) holds the caption; the BLIP-2 variants' 30 its end token too."""
    from recon_ft.data.synthetic import COLOURS, KINDS, SIZES
    from recon_ft.experiments.pairs.plan import DEFAULT_EVAL
    from recon_ft.models.blip import build_blip
    from recon_ft.zoo.family_build import CAPTION_KWARGS

    assert f"caption.max_length={CAPTION_KWARGS['max_length']}" in DEFAULT_EVAL
    phrases = [f"a {s} {c} {k}" for s in SIZES for c in COLOURS for k in KINDS]
    cut_at_20, own_lengths = set(), {}
    captioners = {family: build_model(get_family_recipe(family, "smoke")) for family in ("blip2_opt", "blip2_t5", "git")}
    captioners["blip"] = build_blip(tiny={"image_size": 32}, adapter={"mode": "frozen"})  # the zoo BLIP's tokens
    for family, captioner in captioners.items():
        # tokens to generate: the caption's and its end token (the prompt's are labelled -100)
        needed = max(int((captioner.tokenize([" left of ".join([p] * 3)]).labels != -100).sum()) for p in phrases)
        assert needed <= captioner.new_token_range(CAPTION_KWARGS["max_length"], 5)["max_new_tokens"], family
        if needed - 1 > captioner.new_token_range(20, 5)["max_new_tokens"]:  # the caption itself does not fit
            cut_at_20.add(family)
        own = own_lengths[family] = int(cfg_train(f"captioner=zoo_{family}").captioner.caption_max_length)
        room = captioner.new_token_range(own, 5)["max_new_tokens"]
        assert needed - 1 <= room, family  # the caption fits in the captioner's own length
        if family.startswith("blip2"):
            assert needed <= room and captioner.caption_max_length == own, family  # and its end; the builder's own
    assert cut_at_20 == {"blip2_opt"}
    assert own_lengths == {"blip2_opt": 30, "blip2_t5": 30, "git": 20, "blip": 20}


@pytest.mark.parametrize("family", ["git", "sd2"])
def test_build_is_deterministic(family, built, tmp_path):
    recipe = get_family_recipe(family, "smoke")
    build_family(recipe, tmp_path / family)
    name = "model.safetensors" if recipe.part == "captioner" else "unet/diffusion_pytorch_model.safetensors"
    first, second = load_file(str(built[family] / recipe.part / name)), load_file(str(tmp_path / family / recipe.part / name))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_unet_pretraining_regresses_the_generators_target(prediction_type, monkeypatch):
    """train_unet's target, recovered from what the UNet saw: n for epsilon, v = sqrt(a) n - sqrt(1 - a) z0."""
    from recon_ft.models.sd import build_stable_diffusion
    from recon_ft.zoo import pretrain
    from recon_ft.zoo.data import render_split
    from recon_ft.zoo.recipe import UnetRecipe

    generator = build_stable_diffusion(tiny={"sample_size": 32, "prediction_type": prediction_type},
                                       unet_adapter={"mode": "frozen"})
    data = render_split("train", 8, 0, 32)
    moments = pretrain.latent_moments(generator.vae, data, 32)
    seen = {}
    sample_latents, denoise = generator.sample_latents, generator.denoise
    generator.sample_latents = lambda m, rng: seen.setdefault("z0", sample_latents(m, rng))
    generator.denoise = lambda zt, t, cond: (seen.update(zt=zt, t=t), denoise(zt, t, cond))[1]
    mse = pretrain.F.mse_loss
    monkeypatch.setattr(pretrain.F, "mse_loss", lambda pred, target: (seen.update(target=target), mse(pred, target))[1])
    pretrain.train_unet(generator, data, moments, UnetRecipe(steps=1, batch_size=4, warmup_steps=1),
                        torch.Generator().manual_seed(0))
    a = generator.alphas_cumprod[seen["t"]].view(-1, 1, 1, 1)
    noise = (seen["zt"] - a.sqrt() * seen["z0"]) / (1 - a).sqrt()
    expected = noise if prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * seen["z0"]
    torch.testing.assert_close(seen["target"], expected, atol=1e-4, rtol=1e-4)


def test_captioner_pretraining_full_softmax_is_the_caption_loss():
    """BLIP-2 (a few hundred tokens) trains on the full softmax: the loss of the first step equals the
    teacher-forced cross-entropy of the captioner interface's logits on the same batch."""
    from recon_ft.zoo import pretrain
    from recon_ft.zoo.data import render_split

    recipe = get_family_recipe("blip2_opt", "smoke")
    captioner = build_model(recipe)
    assert pretrain.lm_head(captioner) is None
    data = render_split("train", 8, 0, 64)
    x, texts, _ = data.batch(torch.Generator().manual_seed(5), 4, canonical=True)
    tokens = captioner.tokenize(texts)
    with torch.no_grad():
        logits = captioner.logits(captioner.preprocess(x), tokens)
    labels = tokens.labels[:, 1:]
    keep = labels != -100
    expected = -logits[:, :-1][keep].log_softmax(-1).gather(1, labels[keep].unsqueeze(1)).mean()
    r = dataclasses.replace(recipe.captioner, steps=1, batch_size=4)
    curve = pretrain.train_captioner(captioner, data, r, torch.Generator().manual_seed(5))
    assert curve[0][0] == 0 and curve[0][1] == pytest.approx(float(expected), rel=1e-5)


# One joint step (both cycles) from the loaded variants, for every pair of the zoo's matrix but BLIP x
# SD (the default run of test_zoo.py): a few seconds each with the smoke recipes.
TRAIN_PAIRS = [(c, g) for c in ZOO_CAPTIONERS for g in ZOO_GENERATORS if (c, g) != ("zoo_blip", "zoo_sd")]


@pytest.mark.parametrize("captioner, generator", TRAIN_PAIRS)
def test_one_joint_training_step_from_the_zoo_variants(captioner, generator, built, tmp_path, cfg_train):
    from recon_ft.training.run import fit

    trainer, module = fit(cfg_train(
        f"captioner={captioner}", f"generator={generator}", "trainer.max_steps=1",
        "data.train.size=8", "data.val.size=4", "data.batch_size=4", "data.eval_batch_size=4",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "loss.lambda_img=0.5",
        "loss.lambda_txt=0.5", "trainer.log_every_n_steps=1"))
    assert trainer.global_step == 1
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in ("train/loss_cap", "train/loss_gen", "train/loss_i2t2i", "train/loss_t2i2t", "bridge/matched"):
        assert key in header
    assert (tmp_path / "adapters" / "captioner" / "adapter_config.json").is_file()
