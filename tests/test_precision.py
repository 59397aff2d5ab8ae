"""Mixed precision and the non-finite-loss guard, on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from recon_ft.module import ReconModule
from tests.conftest import fake_batch, tiny_pair


class Snapshots(L.Callback):
    """Trainable parameters after every optimizer step."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, module, *args):
        self.states.append({k: v.detach().clone() for k, v in module.trainable_named_parameters().items()})


def nan_batch(batch):
    bad = dict(batch)
    bad["image_gen"] = torch.full_like(batch["image_gen"], float("nan"))
    return bad


def fit_on(batches, module, precision="32-true", callbacks=()):
    trainer = L.Trainer(
        accelerator="cpu", max_steps=len(batches), precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=list(callbacks),
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


@pytest.fixture
def module():
    captioner, generator = tiny_pair()
    return ReconModule(captioner, generator, loss={"lambda_img": 0.5, "lambda_txt": 0.5}, max_nonfinite_steps=2)


def test_nonfinite_loss_skips_the_step_and_is_counted(module):
    ok = fake_batch(module.captioner, module.generator)
    snaps = Snapshots()
    fit_on([ok, nan_batch(ok), ok], module, callbacks=[snaps])
    assert module._nonfinite_total == 1
    before, during, after = snaps.states
    for name in before:
        torch.testing.assert_close(during[name], before[name], rtol=0, atol=0)  # the NaN step moved nothing
    assert any(not torch.equal(after[n], during[n]) for n in before)  # training went on
    assert all(torch.isfinite(v).all() for v in after.values())


def test_consecutive_nonfinite_losses_stop_training(module):
    ok = fake_batch(module.captioner, module.generator)
    with pytest.raises(FloatingPointError, match="2 consecutive non-finite losses"):
        fit_on([ok, nan_batch(ok), nan_batch(ok), ok], module)


def test_bf16_mixed_keeps_adapters_fp32_and_trains(module):
    ok = fake_batch(module.captioner, module.generator)
    snaps = Snapshots()
    fit_on([ok, ok], module, precision="bf16-mixed", callbacks=[snaps])
    assert all(p.dtype == torch.float32 for p in module.trainable_named_parameters().values())
    assert module.generator.vae.dtype == torch.float32
    assert module._nonfinite_total == 0
    first, second = snaps.states
    assert any(not torch.equal(first[n], second[n]) for n in first)
