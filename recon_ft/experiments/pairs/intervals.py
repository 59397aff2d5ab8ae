"""How sure each cell of a pairing matrix is: per-item values from each pair's samples.jsonl, a 95%
bootstrap interval per cell, and which cells the items cannot tell from the matrix's best.

Every pair evaluates the same source items (same split, limit and seeds), so two cells are compared
item by item: the interval of the mean paired difference from the best cell (bootstrap over items)
either excludes 0 (the cell is below the best) or does not (the items cannot tell them apart).

Per item, for the headline metrics of collect.HEADLINE:
  i2t2i/clip_i_best        the best caption's image: its CLIP-I with the source image
  i2t2i/best/CIDEr         the best caption's CIDEr (per caption; the matrix shows the corpus value)
  t2i2t/<similarity>_best  the best image's caption: its similarity with the source caption
  t2i2t/clip_score_best    the best image's CLIP score
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recon_ft.experiments.study.items import bootstrap_interval

N_RESAMPLES = 2000


def item_value(sample: dict, key: str) -> float | None:
    """One evaluated item's value of a headline metric key (None: the run did not score it)."""
    cycle, _, name = key.partition("/")
    candidates, selected = sample.get(cycle), sample.get(f"{cycle}_selected")
    if not candidates or not selected:
        return None
    best = candidates[selected["best"]]
    field = {"i2t2i/clip_i_best": "clip_i", "i2t2i/best/CIDEr": "cider", "t2i2t/sbert_best": "sbert",
             "t2i2t/clip_text_best": "clip_text", "t2i2t/clip_score_best": "clip_score"}.get(key)
    value = best.get(field) if field else None
    return None if value is None else float(value)


def read_items(run_dir: Path, keys: tuple[str, ...]) -> dict[int, float]:
    """{item index: value} of the first of `keys` the run's samples.jsonl has per item ({} if none)."""
    path = Path(run_dir) / "samples.jsonl"
    if not path.is_file():
        return {}
    samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for key in keys:
        values = {int(s["index"]): item_value(s, key) for s in samples}
        if values and all(v is not None for v in values.values()):
            return values  # type: ignore[return-value]
    return {}


def bootstrap_mean(values: np.ndarray, rng: np.random.Generator, n: int = N_RESAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of (N,) values, resampling items: the study's bootstrap
    with a single seed."""
    return bootstrap_interval(values[None, :], rng, n)


def cell_intervals(per_cell: dict[tuple[str, str], dict[int, float]], seed: int = 0) -> dict[tuple[str, str], dict]:
    """For each cell with items: {"mean", "ci": its 95% interval, "best": whether it is the matrix's
    best (highest mean), "vs_best": the 95% interval of its mean difference from the best cell over
    the items both have, "tied": whether that interval holds 0}."""
    cells = {k: v for k, v in per_cell.items() if v}
    if not cells:
        return {}
    rng = np.random.default_rng(seed)
    means = {k: float(np.mean(list(v.values()))) for k, v in cells.items()}
    best = max(means, key=lambda k: means[k])
    out = {}
    for k in sorted(cells):
        values = cells[k]
        shared = sorted(set(values) & set(cells[best]))
        d = np.array([values[i] - cells[best][i] for i in shared])
        vs_best = (0.0, 0.0) if k == best else bootstrap_mean(d, rng)
        out[k] = {"mean": means[k], "ci": bootstrap_mean(np.array(list(values.values())), rng), "best": k == best,
                  "vs_best": vs_best, "tied": k == best or vs_best[0] <= 0.0 <= vs_best[1], "items": len(values)}
    return out
