"""The benchmark (python -m recon_ft.experiments.bench): a smoke run at tiny size, the same maths in the Lightning
and the plain loop, the real-architecture presets, and the tiny cycle decoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from omegaconf import OmegaConf

from recon_ft.constants import CONF_DIR
from recon_ft.experiments.bench import settings
from recon_ft.experiments.bench.batches import fake_batches
from recon_ft.experiments.bench.loops import run_lightning, run_plain
from recon_ft.experiments.bench.models import build_module
from recon_ft.experiments.bench.phases import run_benchmark
from recon_ft.experiments.bench.report import write
from recon_ft.training.optim import OptimConfig


@pytest.fixture(scope="module")
def module():
    return build_module(settings.size_preset("tiny"))


def _yaml(path: str) -> dict:
    """A config file as written (no composition: independent of how settings.py composes)."""
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / path))


def _departures(ours: dict, theirs: dict) -> dict:
    return {k: v for k, v in ours.items() if theirs.get(k, object()) != v}


def test_settings_are_the_configs_up_to_the_documented_departures(module):
    """The adapters, optimizer, losses and models the bench measures are conf/'s; each departure
    is one settings.py documents, so a change to the YAML (or a hand-copied setting) fails here."""
    m = settings.measured()
    for name in ("blip_base", "blip_base_arch"):  # no dropout: (c) and (d) must draw the same numbers
        assert _departures(m.captioner_adapter, _yaml(f"captioner/{name}.yaml")["adapter"]) == {"dropout": 0.0}
    for name in ("sd_v1_5", "sd15_arch"):
        assert m.unet_adapter == _yaml(f"generator/{name}.yaml")["unet_adapter"]
    # the reference's optimizer: conf/experiment/paper.yaml's block over conf/train.yaml's
    paper = _yaml("experiment/paper.yaml")
    assert m.optim == {**_yaml("train.yaml")["optim"], **paper["optim"]}
    # the joint loss with the text cycle on every row; the reference's schedule and weights on the same terms
    assert _departures(m.joint.__dict__, _yaml("loss/joint.yaml")) == {"t_max": None}
    assert _departures(m.reference.__dict__, _yaml("loss/paper.yaml")) == {"label_smoothing": 0.0, "cycle_grads": "own"}
    assert (m.reference_batch, m.reference_accumulation) == (
        paper["data"]["batch_size"], paper["trainer"]["accumulate_grad_batches"]
    )
    tiny, real = settings.size_preset("tiny"), settings.size_preset("real")
    assert tiny.captioner["tiny"] == _yaml("captioner/tiny_blip.yaml")["tiny"]
    assert tiny.generator["tiny"] == _yaml("generator/tiny_sd.yaml")["tiny"]
    assert real.captioner["arch"] == _yaml("captioner/blip_base_arch.yaml")["arch"]
    assert real.generator["arch"] == _yaml("generator/sd15_arch.yaml")["arch"]
    # and the module is built with them
    assert module.loss_cfg == m.joint and module.optim_cfg == OptimConfig.coerce(m.optim)


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


PHASE_FIELDS = (
    "steps_timed",
    "step_time_s",
    "step_time_median_s",
    "steps_per_s",
    "samples_per_s",
    "peak_memory_bytes",
    "batch_size",
)


def test_smoke_tiny_run_reports_every_field(tmp_path):
    threads = torch.get_num_threads()
    try:  # one thread: robust to other processes on a small machine (see bench.runtime.setup_runtime)
        result = run_benchmark(
            size="tiny", batch_size=2, steps=2, warmup=0, rounds=1, device="cpu", threads=1, log=lambda *_: None
        )
    finally:
        torch.set_num_threads(threads)
    out = write(result, tmp_path)
    result = json.loads((out / "bench.json").read_text())  # what a reader of the file gets
    assert "| phase |" in (out / "bench.md").read_text()

    expected = {
        "gen_step", "cap_step", "joint_plain", "joint_lightning", "reference",
        "joint_no_i2t2i", "joint_no_t2i2t", "joint_plain_tiny_decoder", "joint_no_i2t2i_tiny_decoder",
        "joint_plain_cached",
    }  # fmt: skip
    assert set(result["phases"]) == expected
    for name, phase in result["phases"].items():
        assert "error" not in phase, name
        for key in PHASE_FIELDS:
            assert _positive_finite(phase[key]), (name, key, phase.get(key))
        assert phase["peak_memory_delta_bytes"] >= 0
    for name in ("joint_plain", "joint_lightning", "reference", "joint_plain_tiny_decoder", "joint_plain_cached"):
        assert _positive_finite(result["phases"][name]["complete_samples_per_s"]), name
    # A sample of the reference schedule is complete after two batch-1 steps.
    ref = result["phases"]["reference"]
    assert ref["complete_samples_per_s"] == pytest.approx(ref["steps_per_s"] / 2)
    assert ref["steps_timed"] % settings.measured().reference_accumulation == 0

    assert set(result["ratios"]) == {
        "lightning_overhead", "joint_vs_reference", "joint_cached_vs_reference", "tiny_decoder_speedup",
        "joint_tiny_decoder_vs_reference",
    }  # fmt: skip
    for name, ratio in result["ratios"].items():
        assert _positive_finite(ratio["value"]) and _positive_finite(ratio["value_median"]), name
    # one round: the paired ratio is that round's ratio of medians
    phases = result["phases"]
    c, e = phases["joint_lightning"], phases["reference"]
    assert result["ratios"]["joint_vs_reference"]["value_paired"] == pytest.approx(
        (2 / 0.5) * e["step_time_median_s"] / c["step_time_median_s"]
    )
    assert result["ratios"]["lightning_overhead"]["value_paired"] == pytest.approx(
        c["step_time_median_s"] / phases["joint_plain"]["step_time_median_s"]
    )
    assert result["ratios"]["joint_cached_vs_reference"]["value_paired"] == pytest.approx(
        (2 / 0.5) * e["step_time_median_s"] / phases["joint_plain_cached"]["step_time_median_s"]
    )
    for decoder in ("full_decoder", "tiny_decoder"):
        shares = result["term_shares"][decoder]
        assert set(shares["terms"]) == {"cap", "gen", "i2t2i", "t2i2t", "rest"}
        assert all(math.isfinite(v["seconds"]) for v in shares["terms"].values())
        total = sum(v["seconds"] for v in shares["terms"].values())
        assert total == pytest.approx(shares["joint_step_s"])
    meta = result["meta"]
    assert meta["torch"] == torch.__version__ and meta["cpu"] and meta["date"]
    assert result["memory_check"] is None  # real size only


def _trainable(module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}


def _restore(module, state: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def test_plain_loop_does_the_same_maths_as_lightning(module):
    """Two steps of (c) and of (d) from the same weights, batches and seed: the same update."""
    batches = fake_batches(module.captioner, module.generator, batch_size=2, n=2)
    kw = dict(steps=1, warmup=0, device=torch.device("cpu"), seed=3)  # warmup + steps + 1 = 2 steps
    start = _trainable(module)

    run_lightning(module, batches, **kw)
    after_lightning = _trainable(module)
    _restore(module, start)
    run_plain(module, batches, module.loss_cfg, **kw)
    after_plain = _trainable(module)
    _restore(module, start)

    moved = 0
    for k in start:
        d_lightning, d_plain = after_lightning[k] - start[k], after_plain[k] - start[k]
        # AdamW moves each weight by about lr = 1e-4 a step: agree to 1% of a step
        torch.testing.assert_close(d_plain, d_lightning, rtol=0, atol=1e-6, msg=k)
        moved += int(d_lightning.abs().max() > 1e-5)
    assert moved > len(start) // 2, "most adapter tensors should have moved"


def test_plain_loop_accumulates_then_steps(module):
    """The reference loop steps the optimizer every 8 batch-1 micro-steps, not before."""
    batches = fake_batches(module.captioner, module.generator, batch_size=1, n=2)
    start = _trainable(module)
    reference = settings.measured().reference
    run_plain(module, batches, reference, steps=5, warmup=0, device=torch.device("cpu"), accumulate=8)
    assert all(torch.equal(start[k], v) for k, v in _trainable(module).items())  # 6 micro-steps: no update
    run_plain(module, batches, reference, steps=7, warmup=0, device=torch.device("cpu"), accumulate=8)
    assert any(not torch.equal(start[k], v) for k, v in _trainable(module).items())
    _restore(module, start)


def test_real_architectures_have_the_released_sizes():
    """Built on the meta device (no memory, no init): parameter counts of the released checkpoints."""
    from transformers import BlipForConditionalGeneration

    from recon_ft.models import archs
    from recon_ft.models.blip.configs import blip_base_arch
    from recon_ft.models.sd.configs import sd15_arch

    with torch.device("meta"):
        parts = sd15_arch()
        blip = BlipForConditionalGeneration(blip_base_arch())

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(parts["unet"]) == 859_520_964
    assert count(parts["vae"]) == 83_653_863
    assert count(parts["text_encoder"]) == 123_060_480
    assert count(blip) == 223_971_644  # ViT-B/16 86.1M + BERT-base decoder with cross-attention 137.9M
    assert parts["unet"].config.cross_attention_dim == 768 and parts["unet"].config.sample_size * 8 == 512
    assert blip.config.vision_config.image_size == 384 and blip.config.text_config.vocab_size == 30524
    with pytest.raises(ValueError, match="unknown arch"):
        archs.generator_arch("sdxl")


def test_tiny_cycle_decoder(tmp_path):
    from recon_ft.models.generator import build_cycle_decoder
    from recon_ft.models.sd import build_stable_diffusion

    generator = build_stable_diffusion(tiny={"sample_size": 32}, cycle_decoder="tiny")
    assert generator.cycle_decoder is not None
    assert not any(p.requires_grad for p in generator.cycle_decoder.parameters())
    z = torch.randn(3, 4, 16, 16, requires_grad=True)
    x = generator.decode_latents(z)
    assert x.shape == (3, 3, 32, 32) and torch.isfinite(x).all()
    x.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the text cycle backpropagates through it

    # One row at a time (set by gradient checkpointing) decodes the same images.
    generator.enable_gradient_checkpointing()
    torch.testing.assert_close(generator.decode_latents(z), x, atol=1e-5, rtol=1e-4)

    # A saved TAESD-format decoder loads through `cycle_decoder_pretrained` and decodes the same.
    generator.cycle_decoder.save_pretrained(tmp_path / "taesd")
    loaded = build_stable_diffusion(
        tiny={"sample_size": 32}, cycle_decoder="tiny", cycle_decoder_pretrained=str(tmp_path / "taesd")
    )
    torch.testing.assert_close(loaded.decode_latents(z.detach()), x.detach())

    with pytest.raises(ValueError, match="full or tiny"):
        build_cycle_decoder("taesd", generator.vae)


def test_gradient_checkpointing_changes_no_gradient(module):
    """The real-size runs checkpoint the UNet, the decoder (row by row) and BLIP, also in the critic
    passes (torch.func.functional_call): the gradients must be those of the plain graph."""
    from recon_ft.method.objective import compute_losses

    ckpt = build_module(settings.size_preset("tiny"), gradient_checkpointing=True)
    _restore(ckpt, _trainable(module))  # LoRA A is drawn from the global RNG: same adapters in both
    batch = fake_batches(module.captioner, module.generator, batch_size=2, n=1)[0]
    grads = []
    for m in (module, ckpt):
        m.train()  # transformers checkpoints in train mode only
        m.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        rng = torch.Generator().manual_seed(1)
        out = compute_losses(m.captioner, m.generator, m.bridge, batch, settings.measured().joint, rng=rng)
        out["loss"].backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad and p.grad is not None})
        m.zero_grad(set_to_none=True)
    assert ckpt.generator.decode_chunk == 1 and ckpt.generator.unet.is_gradient_checkpointing
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-7, msg=k)


def test_the_gpu_script_parses_and_its_training_runs_compose():
    """bench_gpu.sh runs where no one watches: its bash parses, and its train.py command lines (FSDP
    and 16-mixed) compose the real architectures with the strategy and precision they are there to
    check (Lightning's FSDP needs a GPU to run)."""
    import re
    import shlex
    import subprocess

    from tests.conftest import compose_config

    script = CONF_DIR.parent / "scripts" / "bench_gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    common = re.search(r"python3 train.py (.*?)\"\$@\"", text, re.S).group(1)
    common = [o for o in shlex.split(common.replace("\\\n", " ")) if o != "\\"]
    fsdp = [o for o in shlex.split(re.search(r"fsdp=\((.*?)\)\n", text, re.S).group(1)) if not o.startswith("hydra.")]
    fp16 = shlex.split(re.search(r'real_run fp16 "\$\(limit \d+\)" (.*?) hydra', text).group(1))

    cfg = compose_config("train", *common, *fsdp, "trainer.max_steps=4")
    assert cfg.trainer.strategy._target_ == "lightning.pytorch.strategies.FSDPStrategy"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    assert cfg.captioner.arch and cfg.generator.arch and not cfg.captioner.get("pretrained")
    assert "caption_validation" not in cfg.callbacks and "validation_samples" not in cfg.callbacks
    cfg = compose_config("train", *common, *fp16)
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.accelerator == "gpu" and cfg.trainer.max_steps == 6
    parts = re.search(r'PARTS=\$\{PARTS:-"(.*?)"\}', text).group(1).split()
    assert sorted(parts) == ["fp16", "fsdp", "real", "syncs", "tiny"]
    for part in parts:
        assert f"    {part})" in text
