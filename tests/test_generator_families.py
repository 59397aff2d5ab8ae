"""Generator families behind one interface: Stable Diffusion 1.x, 2.x (v-prediction, "!" padding) and
SDXL (two text encoders, pooled embeddings, size / crop conditioning). Per family: the real
architecture on the meta device with the configured LoRA targets, one joint training step with both
cycles next to a tiny BLIP, one evaluation image through the family's pipeline, and the
`pretrained=<dir>` round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from recon_ft.method import losses as L
from recon_ft.eval.generation import GenerationSettings, generate_images
from recon_ft.models.archs import generator_arch
from recon_ft.method.bridge import VocabBridge
from recon_ft.models.blip import build_blip
from recon_ft.models.sd import build_stable_diffusion
from recon_ft.models.lora import AdapterSpec, inject_lora, matches_target
from recon_ft.models.sdxl import SDXLCond, StableDiffusionXLGenerator, build_sdxl
from recon_ft.method.objective import LossConfig, compute_losses
from tests.conftest import CAPTIONER_ADAPTER, TEXT_ENCODER_ADAPTER, UNET_ADAPTER, fake_batch

CONF = Path(__file__).resolve().parents[1] / "conf" / "generator"

# config -> (arch, prediction type, resolution, text encoder classes)
# parameter counts of the released checkpoints' parts, per arch
RELEASED = {
    "sd21": {"unet": 865_910_724, "text_encoder": 340_387_840},
    "sdxl_base": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}
REAL = {
    "sd_v1_5": ("sd15", "epsilon", 512, ["CLIPTextModel"]),
    "sd_v2_1": ("sd21", "v_prediction", 768, ["CLIPTextModel"]),
    "sdxl_base": ("sdxl_base", "epsilon", 1024, ["CLIPTextModel", "CLIPTextModelWithProjection"]),
}


@pytest.mark.parametrize("config", sorted(REAL))
def test_real_architecture_on_meta_takes_the_configured_lora(config):
    arch, prediction_type, resolution, encoders = REAL[config]
    cfg = yaml.safe_load((CONF / f"{config}.yaml").read_text())
    targets = cfg["unet_adapter"]["target_modules"]
    with torch.device("meta"):  # no weights allocated: SDXL's UNet alone has 2.6e9 parameters
        parts = generator_arch(arch)
        unet = parts["unet"]
        hits = {t: [n for n, _ in unet.named_modules() if matches_target(n, [t])] for t in targets}
        assert all(hits.values()), {t: len(h) for t, h in hits.items()}
        unet.add_adapter(AdapterSpec.coerce(cfg["unet_adapter"]).lora_config())
        lora_a = [n for n, _ in unet.named_parameters() if "lora_A" in n]
        assert len(lora_a) == sum(len(h) for h in hits.values())
        text_encoders = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
        assert [type(te).__name__ for te in text_encoders] == encoders
        for te in text_encoders:  # the text-encoder LoRA targets the tests and docs use
            inject_lora(te, AdapterSpec.coerce(TEXT_ENCODER_ADAPTER))
            assert sum("lora_A" in n for n, _ in te.named_parameters()) == 2 * te.config.num_hidden_layers
    assert parts["scheduler"].config.prediction_type == prediction_type
    vae_factor = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    assert unet.config.sample_size * vae_factor == resolution
    # cross-attention width = what the text encoder(s) hand the UNet
    assert unet.config.cross_attention_dim == sum(te.config.hidden_size for te in text_encoders)


@pytest.mark.parametrize("arch", sorted(RELEASED))
def test_real_architectures_have_the_released_sizes(arch):
    with torch.device("meta"):
        parts = generator_arch(arch)
    counts = {part: sum(p.numel() for p in parts[part].parameters()) for part in RELEASED[arch]}
    assert counts == RELEASED[arch]


def test_sdxl_added_conditioning_width_matches_its_parts():
    with torch.device("meta"):
        parts = generator_arch("sdxl_base")
    unet = parts["unet"].config
    pooled = parts["text_encoder_2"].config.projection_dim
    assert unet.projection_class_embeddings_input_dim == pooled + 6 * unet.addition_time_embed_dim == 2816


def _tiny(family: str, **kw):
    if family == "sd2":
        return build_stable_diffusion(
            tiny={"sample_size": 32, "prediction_type": "v_prediction"}, pad_token="!", unet_adapter=UNET_ADAPTER, **kw
        )
    return build_sdxl(tiny={"sample_size": 32}, unet_adapter=UNET_ADAPTER, **kw)


@pytest.fixture(scope="module")
def captioner():
    return build_blip(tiny={"image_size": 32}, adapter=CAPTIONER_ADAPTER)


@pytest.fixture(scope="module", params=["sd2", "sdxl"])
def family(request):
    return request.param, _tiny(request.param)


def _bridge(captioner, generator):
    return VocabBridge.from_tokenizers(captioner.tokenizer, generator.tokenizer)


def test_tiny_families_have_their_conventions(family):
    name, gen = family
    if name == "sd2":
        assert gen.prediction_type == "v_prediction" and gen.tokenizer.pad_token == "!" and gen.pad_token_id == 0
        assert gen.tokenize(["a red circle"])[0, :6].tolist() == [49406, 320, 736, 7117, 49407, 0]
    else:
        assert isinstance(gen, StableDiffusionXLGenerator) and gen.prediction_type == "epsilon"
        ids = gen.tokenize(["a red circle"])  # (1, 2, 77): the two tokenizers differ in padding only
        assert ids[0, 0, :6].tolist() == [49406, 320, 736, 7117, 49407, 49407]
        assert ids[0, 1, :6].tolist() == [49406, 320, 736, 7117, 49407, 0]
        cond = gen.encode_text(ids)
        assert isinstance(cond, SDXLCond)
        assert cond.hidden_states.shape == (1, 77, 64) and cond.text_embeds.shape == (1, 32)
        assert cond.time_ids.tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]


def test_sdxl_conditioning_is_the_pipelines():
    """encode_text gives what StableDiffusionXLPipeline.encode_prompt gives (penultimate states of both
    encoders concatenated; pooled, projected embedding of the second)."""
    gen = _tiny("sdxl")
    prompts = ["a small red circle", "a blue star left of a green square"]
    hidden, _, pooled, _ = gen.pipeline().encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    cond = gen.encode_text(gen.tokenize(prompts))
    torch.testing.assert_close(cond.hidden_states, hidden)
    torch.testing.assert_close(cond.text_embeds, pooled)


def test_sdxl_soft_path_with_one_hot_equals_id_path():
    """The soft caption feeds both encoders: their own token embeddings of a caption's ids, laid out by
    encode_soft, give encode_text's conditioning (each tokenizer's padding, the pooled EOS)."""
    gen = _tiny("sdxl")
    ids = gen.tokenize(["a small red circle left of a blue square"])
    n = int((ids[0, 1] != gen.tokenizer_2.pad_token_id).sum()) - 2  # BOS + n tokens + EOS
    caption = ids[:, 0, 1 : 1 + n]
    soft = gen.encode_soft((gen.token_embedding(caption), gen.token_embedding_2(caption)), torch.tensor([n]))
    hard = gen.encode_text(ids)
    for field in ("hidden_states", "text_embeds", "time_ids"):
        torch.testing.assert_close(getattr(soft, field), getattr(hard, field))


def test_one_bridge_serves_both_sdxl_encoders(captioner):
    gen = _tiny("sdxl")
    assert gen.tokenizer.get_vocab() == gen.tokenizer_2.get_vocab()
    b1 = _bridge(captioner, gen)
    b2 = VocabBridge.from_tokenizers(captioner.tokenizer, gen.tokenizer_2)
    # the second tokenizer's pad "!" is special and never a target; every other row agrees
    bang = gen.tokenizer_2.convert_tokens_to_ids("!")
    keep1, keep2 = b1.dst != bang, b2.dst != bang
    assert torch.equal(b1.src[keep1], b2.src[keep2]) and torch.equal(b1.dst[keep1], b2.dst[keep2])


def test_joint_step_trains_each_family(captioner, family):
    """One step with all four terms; the text cycle alone reaches the generator's LoRA (cycle_grads=own),
    and the text cycle's image estimate is the family's x0 formula (v-prediction for SD 2)."""
    name, gen = family
    bridge = _bridge(captioner, gen)
    batch = fake_batch(captioner, gen, b=2)
    lora = {n: p for n, p in gen.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora)

    calls = {}
    denoise, decode = gen.denoise, gen.decode_latents

    def spy_denoise(zt, t, cond, critic=False):
        out = denoise(zt, t, cond, critic=critic)
        calls.setdefault("denoise", (zt.detach(), t, out.detach()))
        return out

    def spy_decode(z):
        calls["decode"] = z.detach()
        return decode(z)

    gen.denoise, gen.decode_latents = spy_denoise, spy_decode
    try:
        cfg = LossConfig(lambda_img=1.0, lambda_txt=1.0)
        out = compute_losses(captioner, gen, bridge, batch, cfg, rng=torch.Generator().manual_seed(0))
        assert set(out) >= {"loss_cap", "loss_gen", "loss_i2t2i", "loss_t2i2t"}
        assert all(torch.isfinite(v) for v in out.values())
        gen.zero_grad(set_to_none=True)
        captioner.zero_grad(set_to_none=True)
        out["loss"].backward()
        # lora_B starts at zero, so lora_A's first gradient is zero: every lora_B gets one
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_B" in n)

        zt, t, pred = calls["denoise"]
        a = gen.alphas_cumprod[t].view(-1, 1, 1, 1)
        if name == "sd2":
            expected = a.sqrt() * zt - (1 - a).sqrt() * pred  # x0 from v
        else:
            expected = (zt - (1 - a).sqrt() * pred) / a.sqrt()  # x0 from epsilon
        torch.testing.assert_close(calls["decode"], expected, rtol=1e-4, atol=1e-4)

        # the text cycle on its own: gradient into the generator's adapters, none into the captioner's
        gen.zero_grad(set_to_none=True)
        captioner.zero_grad(set_to_none=True)
        only_text = LossConfig(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=1.0)
        compute_losses(captioner, gen, bridge, batch, only_text, rng=torch.Generator().manual_seed(0))["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
        assert all(p.grad is None for p in captioner.parameters() if p.requires_grad)

        # the image cycle on its own: through both encoders into the captioner, the generator a critic
        gen.zero_grad(set_to_none=True)
        only_image = LossConfig(w_cap=0.0, w_gen=0.0, lambda_img=1.0, lambda_txt=0.0)
        compute_losses(captioner, gen, bridge, batch, only_image, rng=torch.Generator().manual_seed(0))["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in captioner.parameters() if p.requires_grad)
        assert all(p.grad is None for p in lora.values())
    finally:
        gen.denoise, gen.decode_latents = denoise, decode
        captioner.zero_grad(set_to_none=True)


def test_eval_item_through_the_family_pipeline(family):
    name, gen = family
    assert type(gen.pipeline()).__name__ == ("StableDiffusionXLPipeline" if name == "sdxl" else "StableDiffusionPipeline")
    s = GenerationSettings(guidance_scale=2.0)
    images = generate_images(gen, ["a small red circle", "a blue star"], [3, 4], s, steps=2)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    again = generate_images(gen, ["a small red circle"], [3], s, steps=2)
    # The seed fixes the image. A batch of 1 and a batch of 2 run different kernels, whose float
    # rounding can flip a pixel across a 1/255 quantisation step (seen on some CPUs): allow that
    # much, in a few pixels; another seed's image differs almost everywhere.
    torch.testing.assert_close(again[0], images[0], atol=1 / 255 + 1e-6, rtol=0)
    assert (again[0] != images[0]).float().mean() < 0.01


@pytest.mark.parametrize("name", ["sd2", "sdxl"])
def test_pretrained_dir_round_trip(name, tmp_path):
    gen = _tiny_frozen(name)
    gen.save_base(tmp_path)
    build = build_sdxl if name == "sdxl" else build_stable_diffusion
    loaded = build(pretrained=str(tmp_path))
    assert type(loaded) is type(gen)
    assert loaded.prediction_type == gen.prediction_type and loaded.pad_token_id == gen.pad_token_id
    assert type(loaded.scheduler) is type(gen.scheduler)
    ids = gen.tokenize(["a small red circle", "a blue star"])
    assert torch.equal(loaded.tokenize(["a small red circle", "a blue star"]), ids)
    z, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 700])
    with torch.no_grad():
        torch.testing.assert_close(loaded.denoise(z, t, loaded.encode_text(ids)), gen.denoise(z, t, gen.encode_text(ids)))


def _tiny_frozen(name: str):
    if name == "sd2":
        return build_stable_diffusion(tiny={"sample_size": 32, "prediction_type": "v_prediction"}, pad_token="!")
    return build_sdxl(tiny={"sample_size": 32})


def test_sdxl_lora_file_holds_every_adapted_part(tmp_path):
    from safetensors.torch import load_file

    from recon_ft.models.adapters import save_generator_adapter

    gen = _tiny("sdxl", text_encoder_adapter=TEXT_ENCODER_ADAPTER)
    save_generator_adapter(gen, tmp_path)
    keys = load_file(tmp_path / "pytorch_lora_weights.safetensors").keys()
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    assert gen.pipeline().load_lora_weights(str(tmp_path), adapter_name="again") is None


def test_sdxl_text_states_cache_is_refused():
    from recon_ft.training.module import build_frozen_cache

    with pytest.raises(ValueError, match="frozen_cache.text_states: not supported for StableDiffusionXLGenerator"):
        build_frozen_cache({"text_states": True}, _tiny("sdxl"))


def test_switched_sampler_never_clips_latents(tmp_path):
    """eval's `generation.scheduler`: a DDIM sampler made from an SD 1.x pipeline's config keeps
    Stable Diffusion's clip_sample=false (through save and load); a config without the key gets it
    (DDIM's default would clip unit-variance latents to [-1, 1]); an explicit value is kept."""
    from recon_ft.models.generator import sampler_from_config

    gen = build_stable_diffusion(tiny={"sample_size": 32})
    gen.save_base(tmp_path)
    loaded = build_stable_diffusion(pretrained=str(tmp_path))
    assert type(loaded.scheduler).__name__ == "PNDMScheduler"
    assert sampler_from_config("DDIMScheduler", loaded.scheduler.config).config.clip_sample is False

    without = {k: v for k, v in loaded.scheduler.config.items() if k != "clip_sample"}
    assert sampler_from_config("DDIMScheduler", without).config.clip_sample is False
    assert sampler_from_config("DDIMScheduler", {**without, "clip_sample": True}).config.clip_sample is True
    euler = sampler_from_config("EulerDiscreteScheduler", without)  # no such argument: ignored
    assert type(euler).__name__ == "EulerDiscreteScheduler" and euler.config.beta_schedule == "scaled_linear"

    # a pipeline directory whose own sampler is DDIM without the key loads without clipping too
    import json

    path = tmp_path / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**{k: v for k, v in json.loads(path.read_text()).items() if k != "clip_sample"},
                                "_class_name": "DDIMScheduler"}))
    ddim = build_stable_diffusion(pretrained=str(tmp_path)).scheduler
    assert type(ddim).__name__ == "DDIMScheduler" and ddim.config.clip_sample is False


def test_zero_terminal_snr_schedule_ends_in_pure_noise(tmp_path):
    """The zoo's schedule: SD v1's betas rescaled so that the training scheduler's last step is pure
    noise (alpha_bar = 0 exactly), the sampler starts there ("trailing"), v-prediction; through
    save and load; epsilon is refused (undefined at alpha_bar = 0)."""
    from recon_ft.models.sd.configs import zero_snr_scheduler_config

    gen = build_stable_diffusion(tiny={"sample_size": 32, "prediction_type": "v_prediction",
                                       "zero_terminal_snr": True})
    gen.save_base(tmp_path)
    loaded = build_stable_diffusion(pretrained=str(tmp_path))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler" and loaded.prediction_type == "v_prediction"
    a = loaded.alphas_cumprod
    assert float(a[-1]) == 0.0 and float(a[-2]) > 0.0
    sd_v1 = build_stable_diffusion(tiny={"sample_size": 32}).alphas_cumprod
    assert float(sd_v1[-1]) == pytest.approx(0.0047, abs=1e-4)  # the leak the rescaling removes
    assert float(a[0]) == pytest.approx(float(sd_v1[0]), rel=1e-3)  # the first step barely moves
    loaded.scheduler.set_timesteps(10)
    assert int(loaded.scheduler.timesteps[0]) == 999
    with pytest.raises(ValueError, match="v_prediction"):
        zero_snr_scheduler_config("epsilon")


def test_switched_sampler_keeps_a_zero_snr_schedule():
    """eval's `generation.scheduler` on a zero-terminal-SNR model: a class that rescales its betas
    samples the trained schedule; PNDM, which would silently drop the rescaling, is refused."""
    from recon_ft.models.generator import sampler_from_config
    from recon_ft.models.sd.configs import zero_snr_scheduler_config

    config = zero_snr_scheduler_config()
    from diffusers import DDPMScheduler

    trained = DDPMScheduler.from_config(config).alphas_cumprod
    for name in ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"):
        a = sampler_from_config(name, config).alphas_cumprod
        # Euler keeps its last sigma finite: alpha_bar 2^-24 instead of 0
        assert torch.equal(a[:-1], trained[:-1]) and float(a[-1]) <= 2.0**-24, name
    with pytest.raises(ValueError, match="PNDMScheduler cannot sample"):
        sampler_from_config("PNDMScheduler", config)


def test_sampling_guidance_is_the_generators_own(monkeypatch):
    """`sample()` without a guidance scale uses the builder's `guidance_scale` (a model config's),
    an explicit one wins."""
    gen = build_stable_diffusion(tiny={"sample_size": 32}, guidance_scale=2.0)
    assert gen.guidance_scale == 2.0 and build_stable_diffusion(tiny={"sample_size": 32}).guidance_scale == 7.5
    seen = []

    class Pipe:
        def __call__(self, prompts, guidance_scale, **kwargs):
            seen.append(guidance_scale)
            return type("Out", (), {"images": torch.zeros(len(prompts), 3, 32, 32)})()

    monkeypatch.setattr(type(gen), "pipeline", lambda self: Pipe())
    gen.sample(["a red circle"], [0], num_inference_steps=1)
    gen.sample(["a red circle"], [0], guidance_scale=5.0, num_inference_steps=1)
    assert seen == [2.0, 5.0]
