"""grad_norm/<model>/<term>: each weighted term's gradient norm into each model, against one
backward per term by hand; and the terms that cannot reach a model under cycle_grads=own."""

from __future__ import annotations

import pytest
import torch

from recon_ft.method.bridge import VocabBridge
from recon_ft.method.objective import LossConfig, compute_losses
from recon_ft.training.module import ReconModule
from recon_ft.training.term_grads import term_grad_norms
from tests.conftest import fake_batch, tiny_pair


def _losses(captioner, generator, cfg):
    bridge = VocabBridge.from_tokenizers(captioner.tokenizer, generator.tokenizer)
    return compute_losses(captioner, generator, bridge, fake_batch(captioner, generator), cfg,
                          rng=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cycle_grads", ["own", "both"])
def test_term_grad_norms_match_one_backward_per_term(cycle_grads):
    captioner, generator = tiny_pair()
    cfg = LossConfig(w_cap=1.0, w_gen=0.5, lambda_img=2.0, lambda_txt=0.3, cycle_grads=cycle_grads)
    weights = cfg.weights(0)
    groups = {"captioner": [p for p in captioner.parameters() if p.requires_grad],
              "generator": [p for p in generator.parameters() if p.requires_grad]}
    out = _losses(captioner, generator, cfg)
    norms = term_grad_norms(out, weights, groups)
    assert sorted(norms) == sorted(f"{m}/{t}" for m in groups for t in ("cap", "gen", "i2t2i", "t2i2t"))

    for term in ("cap", "gen", "i2t2i", "t2i2t"):
        out = _losses(captioner, generator, cfg)  # a fresh graph per term
        for p in captioner.parameters():
            p.grad = None
        for p in generator.parameters():
            p.grad = None
        (weights[term] * out[f"loss_{term}"]).backward()
        for model, group in groups.items():
            by_hand = torch.sqrt(sum(((p.grad.double() ** 2).sum() for p in group if p.grad is not None),
                                     torch.zeros((), dtype=torch.float64)))
            torch.testing.assert_close(norms[f"{model}/{term}"].double(), by_hand, rtol=1e-4, atol=1e-10)

    # what each term can reach: own model only under "own", both under "both"
    assert norms["generator/cap"] == 0 and norms["captioner/gen"] == 0
    assert norms["captioner/cap"] > 0 and norms["generator/gen"] > 0
    assert norms["captioner/i2t2i"] > 0 and norms["generator/t2i2t"] > 0
    if cycle_grads == "own":
        assert norms["generator/i2t2i"] == 0 and norms["captioner/t2i2t"] == 0
    else:
        assert norms["generator/i2t2i"] > 0 and norms["captioner/t2i2t"] > 0


def test_a_zero_weight_term_is_not_measured():
    captioner, generator = tiny_pair()
    cfg = LossConfig(lambda_img=0.0, lambda_txt=0.0)
    out = _losses(captioner, generator, cfg)
    norms = term_grad_norms(out, cfg.weights(0), {"captioner": [p for p in captioner.parameters() if p.requires_grad]})
    assert sorted(norms) == ["captioner/cap", "captioner/gen"]


def test_the_module_logs_them_every_n_steps(monkeypatch):
    module = ReconModule(*tiny_pair(), term_grad_norms_every_n_steps=4)
    logged = []
    monkeypatch.setattr(module, "_guard_nonfinite", lambda out: out["loss"])
    writes = {0, 3, 6, 9}  # the steps the loggers write at (log_every_n_steps 3)
    step = {"now": 0}
    monkeypatch.setattr(type(module), "global_step", property(lambda self: step["now"]))
    monkeypatch.setattr(module, "_logs_this_step", lambda: step["now"] in writes)
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.append((step["now"], name)))
    batch = fake_batch(module.captioner, module.generator)
    for step["now"] in range(10):
        module.training_step(batch, step["now"])
    measured = sorted({s for s, name in logged if name.startswith("grad_norm/")})
    assert measured == [0, 6]  # 4 steps on, at the next step the loggers write (a value logged between is lost)
    assert sorted(n for s, n in logged if s == 0 and n.startswith("grad_norm/")) == sorted(
        f"grad_norm/{m}/{t}" for m in ("captioner", "generator") for t in ("cap", "gen", "i2t2i", "t2i2t"))
