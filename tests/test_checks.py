"""Settings checked before anything is built, checkpoints that cannot be read, and where the
learning rate comes from."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import recon_ft.training.run
from recon_ft.training.checks import check_training_config

@pytest.mark.parametrize("override, message", [
    ("optim.captioner.lr=-1", "optim.captioner.lr: expected >= 0, got -1"),
    ("optim.generator.weight_decay=-0.01", "optim.generator.weight_decay: expected >= 0, got -0.01"),
    ("optim.generator.grad_clip=0", "optim.generator.grad_clip: expected > 0 or null, got 0"),
    ("+optim.betas=[0.9,1.0]", "optim.betas: expected two values in [0, 1), got [0.9, 1.0]"),
    ("+optim.eps=0", "optim.eps: expected > 0, got 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps: expected >= 0, got -1"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio: expected in [0, 1], got 1.5"),
    ("loss.lambda_img=-0.1", "loss.lambda_img: expected >= 0, got -0.1"),
    ("loss.label_smoothing=1.0", "loss.label_smoothing: expected in [0, 1), got 1.0"),
    ("loss.tau=0", "loss.tau: expected > 0, got 0"),
    ("loss.min_snr_gamma=0", "loss.min_snr_gamma: expected > 0 or null, got 0"),
    ("loss.t_max=0", "loss.t_max: expected > 0 or null, got 0"),
    ("max_nonfinite_steps=0", "max_nonfinite_steps: expected >= 1, got 0"),
    ("data.batch_size=0", "data.batch_size: expected >= 1, got 0"),
    ("data.num_workers=-1", "data.num_workers: expected >= 0, got -1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches: expected >= 1, got 0"),
    ("frozen_cache.max_gb=-1", "frozen_cache.max_gb: expected >= 0, got -1"),
])
def test_numeric_settings_are_checked_before_any_model_is_built(override, message, monkeypatch, cfg_train):
    def never(*args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr(recon_ft.training.run, "build_module", never)
    with pytest.raises(ValueError) as err:
        recon_ft.training.run.fit(cfg_train(override))
    assert str(err.value) == message


def test_the_default_settings_pass(cfg_train):
    check_training_config(cfg_train())
    check_training_config(cfg_train("experiment=paper"))


def test_a_truncated_checkpoint_is_one_error_naming_the_file(tmp_path, monkeypatch, cfg_train):
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 4}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(recon_ft.training.run, "build_module", lambda cfg: pytest.fail("built before the check"))
    with pytest.raises(ValueError) as err:
        recon_ft.training.run.fit(cfg_train(f"ckpt_path={path}"))
    assert str(err.value) == f"{path}: not a readable checkpoint (truncated, or not written by torch.save)"
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt: checkpoint file not found"):
        recon_ft.training.run.fit(cfg_train(f"ckpt_path={tmp_path}/nowhere.ckpt"))

    from recon_ft.eval.load import load_checkpoint

    with pytest.raises(ValueError, match="last.ckpt: not a readable checkpoint"):
        load_checkpoint(path)


class _RunsCode:
    """A pickled object whose unpickling would create `marker` (stands for arbitrary code)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_evaluation_loads_checkpoints_with_weights_only(tmp_path):
    from recon_ft.eval.load import load_checkpoint

    marker = tmp_path / "code_ran"
    path = tmp_path / "untrusted.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(ValueError, match=r"untrusted.ckpt: refused: it holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # what weights_only=True refuses, for the record
        torch.load(path, weights_only=True)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "global_step": 3, "counters": {"bad_items": [1, 5]}}, plain)
    assert load_checkpoint(plain)["counters"] == {"bad_items": [1, 5]}


@pytest.mark.parametrize("overrides, lrs", [
    ([], (1e-3, 1e-3)),  # LoRA on the synthetic zoo's pretrained models (the default run)
    (["captioner=tiny_blip", "generator=tiny_sd"], (2e-3, 2e-3)),  # random-init tiny models
    (["captioner=blip_base", "generator=sd_v1_5"], (1e-4, 1e-4)),  # real-size LoRA
    (["captioner=blip_base_arch", "generator=sd15_arch"], (1e-4, 1e-4)),
    (["generator=sd_v1_4"], (1e-3, 1e-4)),  # each model its family's rate
    (["experiment=paper"], (1e-4, 1e-4)),
    (["captioner=blip_base", "optim.captioner.lr=3e-5"], (3e-5, 1e-3)),  # the command line wins
])
def test_the_learning_rate_goes_with_the_model_family(overrides, lrs, cfg_train):
    cfg = cfg_train(*overrides)
    assert (cfg.optim.captioner.lr, cfg.optim.generator.lr) == lrs
    assert "lr" not in cfg.captioner and "lr" not in cfg.generator  # not handed to the model builders
