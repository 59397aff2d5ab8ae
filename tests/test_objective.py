"""The joint objective: which adapters each term's gradient reaches, weights of zero, sharing."""

from __future__ import annotations

import pytest
import torch

from recon_ft.method.objective import LossConfig, compute_losses
from tests.conftest import TEXT_ENCODER_ADAPTER, fake_batch, tiny_pair


def grads_after(captioner, generator, bridge, **loss):
    """Backpropagate one batch's total loss; return which models' trainable params got a gradient."""
    torch.manual_seed(0)
    for p in list(captioner.parameters()) + list(generator.parameters()):
        p.grad = None
    cfg = LossConfig.coerce(loss)
    out = compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), cfg)
    out["loss"].backward()

    def reached(module):
        params = [p for p in module.parameters() if p.requires_grad]
        assert params, f"{type(module).__name__} has no trainable parameters"
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    frozen_touched = any(
        p.grad is not None for p in list(captioner.parameters()) + list(generator.parameters()) if not p.requires_grad
    )
    assert not frozen_touched, "a frozen base weight received a gradient"
    return {
        "captioner": reached(captioner),
        "unet": reached(generator.unet),
        "text_encoder": reached(generator.text_encoder),
        "terms": sorted(k for k in out if k.startswith("loss_")),
    }


ONLY = {
    "cap": dict(w_cap=1.0, w_gen=0.0, lambda_img=0.0, lambda_txt=0.0),
    "gen": dict(w_cap=0.0, w_gen=1.0, lambda_img=0.0, lambda_txt=0.0),
    "i2t2i": dict(w_cap=0.0, w_gen=0.0, lambda_img=1.0, lambda_txt=0.0),
    "t2i2t": dict(w_cap=0.0, w_gen=0.0, lambda_img=0.0, lambda_txt=1.0),
}


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(text_encoder_adapter=TEXT_ENCODER_ADAPTER)


@pytest.mark.parametrize(
    "term, cycle_grads, expected",
    [
        ("cap", "own", (True, False, False)),
        ("gen", "own", (False, True, True)),
        # Each cycle term updates only the model it regularizes; the other is a fixed critic.
        ("i2t2i", "own", (True, False, False)),
        ("t2i2t", "own", (False, True, True)),
        # The reference's behaviour: both models learn from both cycle terms.
        ("i2t2i", "both", (True, True, True)),
        ("t2i2t", "both", (True, True, True)),
    ],
)
def test_gradients_reach_exactly_the_right_adapters(pair, bridge, term, cycle_grads, expected):
    captioner, generator = pair
    got = grads_after(captioner, generator, bridge, cycle_grads=cycle_grads, **ONLY[term])
    assert (got["captioner"], got["unet"], got["text_encoder"]) == expected
    assert got["terms"] == [f"loss_{term}"]  # a weight of 0 means the term is not computed


def test_zero_weights_compute_nothing(pair, bridge):
    captioner, generator = pair
    calls = {"denoise": 0, "logits": 0}
    orig_denoise, orig_logits = generator.denoise, captioner.logits

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    generator.denoise, captioner.logits = count("denoise", orig_denoise), count("logits", orig_logits)
    try:
        cfg = LossConfig.coerce(ONLY["cap"])
        compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), cfg)
        assert calls == {"denoise": 0, "logits": 1}
        calls.update(denoise=0, logits=0)
        # All four terms: 2 denoiser passes (real + soft caption), 2 captioner passes (real + generated).
        compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), LossConfig(lambda_img=1, lambda_txt=1))
        assert calls == {"denoise": 2, "logits": 2}
    finally:
        del generator.denoise, captioner.logits


def test_total_is_the_weighted_sum(pair, bridge):
    captioner, generator = pair
    cfg = LossConfig(w_cap=0.5, w_gen=2.0, lambda_img=0.3, lambda_txt=0.7)
    torch.manual_seed(3)
    out = compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), cfg)
    expected = 0.5 * out["loss_cap"] + 2.0 * out["loss_gen"] + 0.3 * out["loss_i2t2i"] + 0.7 * out["loss_t2i2t"]
    torch.testing.assert_close(out["loss"], expected)
    # the terms' values and bridge_mass against hand computations: tests/test_cycle_values.py


def test_alternate_schedule_follows_step_parity(pair, bridge):
    captioner, generator = pair
    cfg = LossConfig(schedule="alternate", lambda_img=1.0, lambda_txt=1.0)
    batch = fake_batch(captioner, generator)
    even = compute_losses(captioner, generator, bridge, batch, cfg, batch_idx=0)
    odd = compute_losses(captioner, generator, bridge, batch, cfg, batch_idx=1)
    assert sorted(k for k in even if k.startswith("loss_")) == ["loss_gen", "loss_t2i2t"]
    assert sorted(k for k in odd if k.startswith("loss_")) == ["loss_cap", "loss_i2t2i"]


def test_text_cycle_t_max_restricts_rows(pair, bridge):
    captioner, generator = pair
    cfg = LossConfig(**{**ONLY["t2i2t"], "t_max": 1})  # t < 1 essentially never happens at b = 4
    torch.manual_seed(0)
    out = compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), cfg)
    assert out["loss_t2i2t"].item() == 0.0


def test_soft_path_with_one_hot_equals_id_path(pair):
    """encode_soft with one-hot embeddings of a caption's own ids gives the id path's conditioning."""
    _, generator = pair
    ids = generator.tokenize(["a small red circle left of a blue square"])
    # SD pads with EOS, so the non-pad ids are BOS + the caption's n tokens.
    n = int((ids[0] != generator.pad_token_id).sum()) - 1
    embeds = generator.token_embedding(ids[:, 1 : 1 + n])
    soft = generator.encode_soft(embeds, torch.tensor([n]))
    torch.testing.assert_close(soft, generator.encode_text(ids))


def test_loss_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="lamda_img"):
        LossConfig.coerce({"lamda_img": 1.0})
    with pytest.raises(ValueError, match="schedule"):
        LossConfig.coerce({"schedule": "sometimes"})
