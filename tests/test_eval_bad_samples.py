"""Evaluation counts each bad item exactly once: those found when loading (missing, corrupt image)
and those left out when indexing (no caption)."""

from __future__ import annotations

from recon_ft.data.fabricate import write_nocaps
from tests.test_eval_pipeline import run_eval


def test_eval_counts_every_kind_of_bad_item_exactly(tmp_path):
    # 1 good image per domain, plus one in-domain entry of each bad kind
    write_nocaps(tmp_path / "nocaps", n_per_domain=1, corrupt=True, missing=True, empty_caption=True)
    metrics = run_eval(tmp_path / "eval", "data=nocaps", f"paths.nocaps={tmp_path / 'nocaps'}", "limit=null",
                       "batch_size=4")
    assert metrics["data/items"] == 3.0
    assert metrics["data/bad_samples"] == 3.0  # corrupt + missing (at loading) + empty caption (at indexing)
