"""The training noise is a function of (seed, global step, rank), and of nothing else.

Exact resume and DDP compare a run with itself, so they pass whatever the noise depends on; these
tests pin the dependence itself: different steps and ranks draw different timesteps and noise, the
same (seed, step, rank) draws the same, and the step is the count of batches over the whole run,
not the position within an epoch.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

import recon_ft.training.module as module_mod
from recon_ft.training.module import ReconModule
from tests.conftest import tiny_pair


def draws(rng: torch.Generator) -> torch.Tensor:
    """Timesteps and noise as the objective draws them, flattened into one vector."""
    t = torch.randint(0, 1000, (4,), generator=rng)
    noise = torch.randn(4, 4, 8, 8, generator=rng)
    return torch.cat([t.float(), noise.flatten()])


def copy_of(rng: torch.Generator) -> torch.Generator:
    g = torch.Generator(rng.device)
    g.set_state(rng.get_state())
    return g


def all_distinct(vectors) -> bool:
    return all(not torch.equal(a, b) for i, a in enumerate(vectors) for b in vectors[i + 1:])


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture
def make_module(pair, bridge, monkeypatch):
    monkeypatch.setattr(module_mod.VocabBridge, "from_tokenizers", classmethod(lambda cls, *a, **k: bridge))
    return lambda seed: ReconModule(*pair, seed=seed)


def with_rank(monkeypatch, rank: int) -> None:
    monkeypatch.setattr(ReconModule, "global_rank", property(lambda self: rank))


def test_noise_depends_on_step_rank_and_seed(make_module, monkeypatch):
    module = make_module(seed=3)
    steps = range(6)
    rank0 = [draws(module.step_rng(s)) for s in steps]
    assert all_distinct(rank0)  # step s and step s' differ
    # the same (seed, step, rank) draws the same, also in another module object
    for s in steps:
        assert torch.equal(draws(module.step_rng(s)), rank0[s])
        assert torch.equal(draws(make_module(seed=3).step_rng(s)), rank0[s])
    # another seed, another stream
    assert all_distinct(rank0 + [draws(make_module(seed=4).step_rng(s)) for s in steps])

    with_rank(monkeypatch, 1)
    rank1 = [draws(module.step_rng(s)) for s in steps]
    with_rank(monkeypatch, 2)
    rank2 = [draws(module.step_rng(s)) for s in steps]
    # rank r' draws differently from rank r, at the same step and at any other step
    assert all_distinct(rank0 + rank1 + rank2)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"caption": [f"caption {i}"], "image_gen": torch.zeros(1), "n_bad": 0}


def test_training_draws_from_the_global_step_across_epochs(make_module, monkeypatch, tmp_path):
    """2 epochs of 3 batches: training step k (k = 0..5) draws what step_rng(k) draws, and the 6 differ."""
    module = make_module(seed=5)
    expected = [draws(module.step_rng(k)) for k in range(6)]
    seen = []

    def fake_losses(captioner, generator, bridge, batch, cfg, batch_idx=0, rng=None, cache=None):
        seen.append((batch_idx, draws(copy_of(rng))))
        loss = sum(p.sum() for p in module.trainable_named_parameters().values()) * 0.0
        return {"loss": loss}

    monkeypatch.setattr(module_mod, "compute_losses", fake_losses)
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    loader = torch.utils.data.DataLoader(_Batches(3), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 6
    assert [i for i, _ in seen] == [0, 1, 2, 0, 1, 2]  # batch index within the epoch restarts...
    for k, (_, got) in enumerate(seen):  # ...the noise does not
        assert torch.equal(got, expected[k]), f"training step {k}"
    assert all_distinct([d for _, d in seen])
