"""Mixed precision and the non-finite-loss guard, on CPU."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from recon_ft.training.module import ReconModule
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
    with pytest.raises(FloatingPointError, match="2 consecutive non-finite steps"):
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


class InfGradient(L.Callback):
    """Makes one gradient infinite after backward at optimizer step `at` (the loss stays finite),
    as a step with a far too large learning rate does."""

    def __init__(self, at: int):
        self.at = at

    def on_after_backward(self, trainer, module):
        if trainer.global_step == self.at:
            grad = next(p.grad for p in module.trainable_named_parameters().values() if p.grad is not None)
            grad.view(-1)[0] = float("inf")


def test_nonfinite_gradients_with_a_finite_loss_skip_the_step(module, tmp_path):
    from safetensors.torch import load_file

    from recon_ft.training.callbacks import ExportAdapters

    ok = fake_batch(module.captioner, module.generator)
    snaps = Snapshots()
    export = ExportAdapters(tmp_path / "adapters")
    fit_on([ok, ok, ok], module, callbacks=[InfGradient(at=1), snaps, export])
    assert module._nonfinite_total == 1
    before, during, after = snaps.states
    for name in before:
        torch.testing.assert_close(during[name], before[name], rtol=0, atol=0)  # the step moved nothing
    assert any(not torch.equal(after[n], during[n]) for n in before)  # training went on
    assert all(torch.isfinite(v).all() for v in after.values())
    for path in (tmp_path / "adapters").rglob("*.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(path).values()), path


def test_consecutive_nonfinite_gradients_stop_training(module):
    ok = fake_batch(module.captioner, module.generator)

    class Always(InfGradient):
        def on_after_backward(self, trainer, module):
            self.at = trainer.global_step
            super().on_after_backward(trainer, module)

    with pytest.raises(FloatingPointError, match="2 consecutive non-finite steps"):
        fit_on([ok, ok, ok], module, callbacks=[Always(0)])


class PoisonWeights(L.Callback):
    """Writes NaN into a trainable weight after the first step (as an unguarded step would)."""

    def on_train_batch_end(self, trainer, module, *args):
        next(iter(module.trainable_named_parameters().values())).data.view(-1)[0] = float("nan")


def test_nonfinite_weights_are_never_written(module, tmp_path):
    from recon_ft.training.callbacks import ExportAdapters, FiniteCheckpoint

    ok = fake_batch(module.captioner, module.generator)
    saver = FiniteCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    export = ExportAdapters(tmp_path / "adapters")
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[PoisonWeights(), saver, export])
    loader = torch.utils.data.DataLoader([ok], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    assert module.nonfinite_parameters()
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
    assert not (tmp_path / "adapters").exists()


def test_bf16_true_keeps_the_schedule_float32_and_feeds_the_vae_its_dtype():
    """Module.to(bfloat16) (Lightning's bf16-true) casts buffers; a_0 = 0.99915 would become 1.0."""
    _, generator = tiny_pair()
    want = generator.alphas_cumprod.clone()
    generator.to(torch.bfloat16)
    assert generator.alphas_cumprod.dtype == torch.float32
    torch.testing.assert_close(generator.alphas_cumprod, want, rtol=0, atol=0)
    assert generator.vae.dtype == torch.bfloat16 and generator.vae_dtype == torch.bfloat16
    seen = []
    hook = generator.vae.encoder.conv_in.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    images = torch.rand(2, 3, generator.image_size, generator.image_size) * 2 - 1  # float32 from the loader
    moments = generator.encode_moments(images)
    hook.remove()
    assert seen == [torch.bfloat16] and torch.isfinite(moments.float()).all()
    latents = torch.randn(2, 4, *moments.shape[-2:])
    assert generator.decode_latents(latents).dtype == torch.bfloat16


def test_fp16_scale_search_is_not_a_nonfinite_step(module):
    """Under 16-mixed the grad scaler starts high and halves its scale after each overflow, skipping
    that step itself: a normal warm-up of several overflows in a row must neither stop the run nor
    be counted as non-finite steps."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    ok = fake_batch(module.captioner, module.generator)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)  # overflows fp16 gradients at first
    snaps = Snapshots()
    trainer = L.Trainer(
        accelerator="cpu", max_steps=12, plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[snaps],
    )
    loader = torch.utils.data.DataLoader([ok] * 12, batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)  # max_nonfinite_steps=2 would stop it at the 2nd overflow
    assert module._nonfinite_total == 0
    assert module._scaler_skipped_steps > module.max_nonfinite_steps  # the scale search did happen
    assert scaler.get_scale() < 2.0**24
    first, last = snaps.states[0], snaps.states[-1]
    assert any(not torch.equal(last[n], first[n]) for n in first)  # and training went on after it
    assert all(torch.isfinite(v).all() for v in last.values())
