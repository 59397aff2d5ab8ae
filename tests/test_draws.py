"""Random draws of a training step come from the step's generator, not from the global RNG, so a
resumed run draws what the uninterrupted run drew."""

from __future__ import annotations

import torch

from recon_ft.method import losses as L


def test_gumbel_softmax_draws_from_the_given_generator():
    logits = torch.randn(2, 3, 50, generator=torch.Generator().manual_seed(0), requires_grad=True)
    state = torch.get_rng_state()
    a = L.soft_tokens(logits, tau=0.5, gumbel=True, rng=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.manual_seed(123)  # and plays no part
    b = L.soft_tokens(logits, tau=0.5, gumbel=True, rng=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    c = L.soft_tokens(logits, tau=0.5, gumbel=True, rng=torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)
    # straight-through: one-hot forward, the relaxed sample's gradient backward
    assert torch.all(a.sum(-1) == 1) and set(a.unique().tolist()) == {0.0, 1.0}
    (a * torch.arange(50.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_gumbel_sample_is_argmax_of_logits_plus_gumbel_noise():
    """The sample is argmax(logits + g), g = -log(E), E ~ Exp(1) drawn from the generator."""
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    exp = torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(3))
    want = (logits - exp.log()).argmax(-1)
    got = L.soft_tokens(logits, tau=2.0, gumbel=True, rng=torch.Generator().manual_seed(3)).argmax(-1)
    assert torch.equal(got, want)


def test_the_objective_passes_the_step_generator_to_the_gumbel_draw():
    from recon_ft.method.bridge import VocabBridge
    from recon_ft.method.objective import LossConfig, compute_losses
    from tests.conftest import fake_batch, tiny_pair

    captioner, generator = tiny_pair()
    bridge = VocabBridge.from_tokenizers(captioner.tokenizer, generator.tokenizer)
    cfg = LossConfig(lambda_img=1.0, lambda_txt=0.0, gumbel=True)
    batch = fake_batch(captioner, generator)
    losses = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # a resumed run's global RNG is elsewhere in its stream
        out = compute_losses(captioner, generator, bridge, batch, cfg, rng=torch.Generator().manual_seed(5))
        losses.append(out["loss_i2t2i"].item())
    assert losses[0] == losses[1]
