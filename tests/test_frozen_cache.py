"""The cache of frozen computations: lookups, its memory bound, and that a cached step or run equals
an uncached one."""

from __future__ import annotations

import pytest
import torch

from recon_ft.method.frozen_cache import CacheConfig, FrozenCache
from recon_ft.training.module import build_frozen_cache
from recon_ft.method.objective import LossConfig, compute_losses
from tests.conftest import TEXT_ENCODER_ADAPTER, fake_batch, tiny_pair
from tests.test_train import compose_train, trainable_state


class Recorder:
    """compute(rows) -> rows of a fixed table, remembering which rows were asked for."""

    def __init__(self, table: torch.Tensor):
        self.table, self.calls = table, []

    def __call__(self, rows: list[int]) -> torch.Tensor:
        self.calls.append(list(rows))
        return self.table[rows]


def test_lookup_computes_only_missing_rows_and_keeps_order():
    cache = FrozenCache({"latents": True})
    values = torch.arange(12.0).view(4, 3)  # the value of key k is row k
    first = Recorder(values[[0, 1]])
    torch.testing.assert_close(cache.lookup("latents", [0, 1], first, "cpu"), values[[0, 1]])
    # keys 1 and 0 are stored, 3 is not: only position 1 of this batch is computed
    second = Recorder(values[[1, 3, 0]])
    got = cache.lookup("latents", [1, 3, 0], second, "cpu")
    torch.testing.assert_close(got, values[[1, 3, 0]])
    assert first.calls == [[0, 1]] and second.calls == [[1]]
    third = Recorder(values)
    torch.testing.assert_close(cache.lookup("latents", [3, 1, 0], third, "cpu"), values[[3, 1, 0]])
    assert third.calls == []
    stats = cache.stats()
    assert (stats["latents_hits"], stats["latents_misses"], stats["latents_entries"]) == (5, 3, 3)
    assert stats["gb"] == pytest.approx(3 * 3 * 4 / 1024**3)


def test_memory_bound_stores_what_fits_and_counts_the_rest():
    row_bytes = 3 * 4  # 3 float32 values
    cache = FrozenCache({"text_states": True, "max_gb": 2.5 * row_bytes / 1024**3})
    values = torch.arange(12.0).view(4, 3)
    cache.lookup("text_states", ["a", "b", "c"], Recorder(values[:3]), "cpu")
    stats = cache.stats()
    assert (stats["text_states_entries"], stats["text_states_not_stored"]) == (2, 1)
    again = Recorder(values[:3])
    torch.testing.assert_close(cache.lookup("text_states", ["a", "b", "c"], again, "cpu"), values[:3])
    assert again.calls == [[2]]  # "c" did not fit: computed again


def test_half_precision_storage_returns_the_computed_dtype():
    cache = FrozenCache({"latents": True, "dtype": "bfloat16"})
    values = torch.tensor([[1.0, 1.0 + 2**-12]])
    cache.lookup("latents", ["x"], Recorder(values), "cpu")
    got = cache.lookup("latents", ["x"], Recorder(values), "cpu")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0]]))  # rounded to bfloat16's 8 bits
    assert cache.stats()["gb"] == pytest.approx(2 * 2 / 1024**3)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"latents": True, "dtype": "float8"}, "frozen_cache.dtype"),
        ({"latents": True, "device": "gpu"}, "frozen_cache.device"),
        ({"latents": True, "size": 3}, "unknown options"),
        ({"latents": True, "max_gb": -1}, "frozen_cache.max_gb"),
    ],
)
def test_config_mistakes_are_named(cfg, message):
    with pytest.raises(ValueError, match=message):
        CacheConfig.coerce(cfg)


def test_text_states_need_a_frozen_text_encoder():
    _, generator = tiny_pair(text_encoder_adapter=TEXT_ENCODER_ADAPTER)
    with pytest.raises(ValueError, match="text_encoder_adapter.mode=frozen"):
        build_frozen_cache({"text_states": True}, generator)
    assert build_frozen_cache({"latents": True}, generator) is not None
    assert build_frozen_cache({}, generator) is None


def test_cached_step_equals_uncached_step(bridge):
    """Losses and gradients of a batch computed fresh, on the call that fills the cache and on the
    call that reads it, are the same: the cache keeps the VAE posterior, not a latent sample."""
    captioner, generator = tiny_pair()
    batch = fake_batch(captioner, generator, b=4) | {"id": [10, 11, 12, 13]}
    cfg = LossConfig(lambda_img=0.5, lambda_txt=0.5)
    cache = FrozenCache({"latents": True, "text_states": True})

    def step(cache):
        params = [p for p in list(captioner.parameters()) + list(generator.parameters()) if p.requires_grad]
        for p in params:
            p.grad = None
        rng = torch.Generator().manual_seed(7)
        out = compute_losses(captioner, generator, bridge, batch, cfg, rng=rng, cache=cache)
        out["loss"].backward()
        return {k: v.detach() for k, v in out.items()}, [p.grad.clone() for p in params]

    fresh, fresh_grads = step(None)
    for expected_hits in (0, 4):  # fill, then read
        out, grads = step(cache)
        assert cache.stats()["latents_hits"] == expected_hits
        assert cache.stats()["text_states_hits"] == expected_hits
        for name in fresh:
            torch.testing.assert_close(out[name], fresh[name], rtol=1e-5, atol=1e-6, msg=name)
        for got, want in zip(grads, fresh_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_latents_cache_needs_sample_ids(bridge):
    captioner, generator = tiny_pair()
    batch = fake_batch(captioner, generator, b=2)  # no "id"
    with pytest.raises(ValueError, match="'id' per sample"):
        compute_losses(captioner, generator, bridge, batch, LossConfig(), cache=FrozenCache({"latents": True}))


def test_cached_run_trains_like_an_uncached_one(tmp_path):
    """Two epochs of 4 batches through the real config: the second epoch reads every VAE posterior
    from the cache, and the adapters end where an uncached run's do."""
    from recon_ft.training.run import fit

    common = ["data.train.size=16", "trainer.max_steps=8", "trainer.val_check_interval=8"]
    _, plain = fit(compose_train(tmp_path / "plain", *common))
    cached = ["frozen_cache.latents=true", "frozen_cache.text_states=true"]
    trainer, module = fit(compose_train(tmp_path / "cached", *common, *cached))
    stats = module.frozen_cache.stats()
    assert stats["latents_misses"] == 16 and stats["latents_hits"] == 16
    assert stats["text_states_hits"] > 0
    assert trainer.callback_metrics["cache/latents_hits"] == 16
    want, got = trainable_state(plain), trainable_state(module)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
