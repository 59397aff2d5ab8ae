"""The LightningModule's optimizer pieces: LR schedule, per-model parameter groups and clipping."""

from __future__ import annotations

import math

import pytest
import torch

from recon_ft.training.module import ReconModule
from recon_ft.training.optim import OptimConfig, lr_lambda
from tests.conftest import tiny_pair


def test_lr_schedule_warmup_then_cosine_or_constant():
    f = lr_lambda("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway: 0.55
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    g = lr_lambda("constant", warmup_steps=0, total_steps=10)
    assert g(0) == g(9) == 1.0


def test_optim_config_validates():
    with pytest.raises(ValueError, match="optim.schedule"):
        OptimConfig.coerce({"schedule": "linear"})
    with pytest.raises(TypeError):
        OptimConfig.coerce({"captioner": {"learning_rate": 1e-4}})


def test_param_groups_and_per_model_clipping():
    captioner, generator = tiny_pair()
    optim = {"captioner": {"lr": 1e-3, "weight_decay": 0.0, "grad_clip": None},
             "generator": {"lr": 5e-4, "weight_decay": 0.01, "grad_clip": 0.5}}
    module = ReconModule(captioner, generator, optim=optim)
    optimizer = module.configure_optimizers()["optimizer"]
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert (groups["captioner"]["lr"], groups["generator"]["lr"]) == (1e-3, 5e-4)
    assert (groups["captioner"]["weight_decay"], groups["generator"]["weight_decay"]) == (0.0, 0.01)
    assert {id(p) for p in groups["captioner"]["params"]} == {id(p) for p in captioner.parameters() if p.requires_grad}
    assert {id(p) for p in groups["generator"]["params"]} == {id(p) for p in generator.parameters() if p.requires_grad}

    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = torch.full_like(p, 10.0)
    module.configure_gradient_clipping(optimizer)

    def norm(params):
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])).item()

    assert norm(groups["generator"]["params"]) == pytest.approx(0.5, rel=1e-4)  # clipped to its own norm
    n_gen = sum(p.numel() for p in groups["generator"]["params"])  # scaled, not truncated: all equal
    for p in groups["generator"]["params"]:
        torch.testing.assert_close(p.grad, torch.full_like(p, 0.5 / math.sqrt(n_gen)), rtol=1e-4, atol=0)
    # no clip configured: untouched, every entry still 10
    n = sum(p.numel() for p in groups["captioner"]["params"])
    assert norm(groups["captioner"]["params"]) == pytest.approx(10.0 * math.sqrt(n), rel=1e-5)
    assert all(torch.equal(p.grad, torch.full_like(p, 10.0)) for p in groups["captioner"]["params"])


def test_a_checkpoint_restores_the_counters_with_or_without_its_weights():
    """Under FSDP the strategy loads the weights itself and pops "state_dict" before the module's
    hook; elsewhere the hook sees the weights and refuses a checkpoint that lacks adapters."""
    module = ReconModule(*tiny_pair())
    weights = {name: p.detach().clone() for name, p in module.trainable_named_parameters().items()}
    counters = {"bad_items": [3, 1], "nonfinite_steps": 2, "scaler_skipped_steps": 5}
    module.on_load_checkpoint({"counters": counters})  # FSDP's checkpoint, weights already loaded
    assert (module._bad_items, module._nonfinite_total, module._scaler_skipped_steps) == ({1, 3}, 2, 5)
    module.on_load_checkpoint({"state_dict": weights, "counters": {}})
    assert module._nonfinite_total == 0
    dropped = dict(list(weights.items())[1:])
    with pytest.raises(ValueError, match="lacks 1 trainable parameters"):
        module.on_load_checkpoint({"state_dict": dropped, "counters": {}})


@pytest.mark.parametrize("base_dropout", [True, False])
def test_training_modes_are_the_same_for_random_init_and_published_models(tmp_path, base_dropout):
    """from_pretrained gives eval mode, a config build train mode: at fit start both get the same
    modes; with base_dropout the bases train with their dropout, without it only LoRA's dropout runs."""
    from recon_ft.models.blip import build_blip
    from recon_ft.models.sd import build_stable_diffusion
    from recon_ft.training.module import set_training_modes
    from tests.conftest import CAPTIONER_ADAPTER, UNET_ADAPTER

    frozen = {"mode": "frozen"}
    build_blip(tiny={"image_size": 32}, adapter=frozen).save_base(tmp_path / "captioner")
    build_stable_diffusion(tiny={"sample_size": 32}, unet_adapter=frozen).save_base(tmp_path / "generator")
    random_init = (build_blip(tiny={"image_size": 32}, adapter=CAPTIONER_ADAPTER),
                   build_stable_diffusion(tiny={"sample_size": 32}, unet_adapter=UNET_ADAPTER))
    loaded = (build_blip(pretrained=str(tmp_path / "captioner"), adapter=CAPTIONER_ADAPTER),
              build_stable_diffusion(pretrained=str(tmp_path / "generator"), unet_adapter=UNET_ADAPTER))
    assert not loaded[0].model.training and random_init[0].model.training  # as the libraries build them

    def modes(pair):
        return {f"{i}.{name}": m.training for i, model in enumerate(pair) for name, m in model.named_modules()}

    for pair in (random_init, loaded):
        set_training_modes(*pair, base_dropout=base_dropout)
    assert modes(random_init) == modes(loaded)
    got = modes(loaded)
    assert not any(v for k, v in got.items() if k.startswith("1.vae"))  # the frozen VAE: eval
    lora_dropout = [v for k, v in got.items() if "lora_dropout" in k]
    assert lora_dropout and all(lora_dropout)
    bases = [v for k, v in got.items() if "lora" not in k and not k.startswith("1.vae")]
    assert all(bases) if base_dropout else not any(bases)
