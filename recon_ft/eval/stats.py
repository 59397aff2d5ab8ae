"""Statistics of the reconstruction analyses (pure numpy): rank correlations and candidate selection.

The I2T2I / T2I2T study (docs/design.md, "What it is for") scores k candidates per item (k captions of an image,
or k images of a caption) with several measures, then asks (a) how well two measures agree
(``spearman`` / ``pearson``, over all candidates or within each item with ``rowwise_spearman``) and
(b) what choosing one candidate per item by a measure buys (``select`` / ``selection_table``): e.g.
``selection_table({"clip_i": ..., "cider": ...}, by="clip_i")`` says whether the caption whose
reconstruction is most like the image (best CLIP-I) also has a higher CIDEr than the beam caption.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

SELECTIONS = ("first", "best", "random")


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rankdata(x) -> np.ndarray:
    """Ranks 1..n of a 1-d array, ties given the average of their ranks (scipy's method="average")."""
    a = _np(x).ravel()
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(a.size, dtype=np.intp)
    inv[sorter] = np.arange(a.size)
    s = a[sorter]
    obs = np.r_[True, s[1:] != s[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], a.size]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def pearson(x, y) -> float:
    """Pearson correlation of two equally long sequences; nan if either is constant."""
    a, b = _np(x).ravel(), _np(y).ravel()
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson: need two sequences of equal length >= 2, got {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0:
        return float("nan")
    return float(np.clip((a * b).sum() / denom, -1.0, 1.0))


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks, as scipy.stats.spearmanr)."""
    a, b = _np(x).ravel(), _np(y).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman: shapes differ: {a.shape} vs {b.shape}")
    return pearson(rankdata(a), rankdata(b))


def rowwise_spearman(x, y) -> np.ndarray:
    """Spearman correlation within each row of two (N, k) tables -> (N,); nan for constant rows.
    (How well two measures rank the k candidates of one item; average with ``np.nanmean``.)"""
    a, b = _np(x), _np(y)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"rowwise_spearman: need two (N, k) arrays of one shape, got {a.shape} and {b.shape}")
    return np.array([spearman(r, s) for r, s in zip(a, b)])


def select(scores, how: str = "best", seed: int = 0) -> np.ndarray:
    """One candidate index per row of an (N, k) score table.

    "first": index 0 (the beam-search caption / first sample); "best": argmax (nan counts as the
    worst score, first index wins ties); "worst": argmin; "random": uniform, from ``seed``.
    """
    s = _np(scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"select: scores must be (N, k) with k >= 1, got shape {s.shape}")
    n, k = s.shape
    if how == "first":
        return np.zeros(n, dtype=np.int64)
    if how == "best":
        return np.where(np.isnan(s), -np.inf, s).argmax(axis=1)
    if how == "worst":
        return np.where(np.isnan(s), np.inf, s).argmin(axis=1)
    if how == "random":
        return np.random.default_rng(seed).integers(0, k, size=n)
    raise ValueError(f"select: how must be one of first/best/worst/random, got {how!r}")


def selection_table(values: Mapping[str, np.ndarray], by: str, seed: int = 0,
                    methods: Sequence[str] = SELECTIONS) -> dict[str, dict[str, float]]:
    """For each selection method, the mean of every value table at the chosen candidates.

    values: name -> (N, k) table (all the same shape); by: the name whose scores choose.
    Returns {method: {name: mean over the N items of values[name][i, chosen_i]}}.
    """
    if by not in values:
        raise KeyError(f"selection_table: by={by!r} is not one of {list(values)}")
    tables = {name: _np(v) for name, v in values.items()}
    shape = tables[by].shape
    for name, v in tables.items():
        if v.shape != shape:
            raise ValueError(f"selection_table: {name!r} has shape {v.shape}, {by!r} has {shape}")
    rows = np.arange(shape[0])
    out = {}
    for how in methods:
        idx = select(tables[by], how, seed=seed)
        out[how] = {name: float(np.nanmean(v[rows, idx])) for name, v in tables.items()}
    return out
