"""The I2T2I / T2I2T analyses on fabricated rows with answers known in advance.

The per-caption scores (CIDEr, text similarity) and the corpus caption metrics are replaced by
fixed tables, so every reported number follows from the rows by arithmetic done here: the rows are
built so that Spearman and Pearson correlations differ, and so that the candidate with the best
CLIP-I (the I2T2I selection) is not the one with the best CIDEr.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from recon_ft.eval import analyses
from recon_ft.eval.analyses import AnalysisSettings

# I2T2I: per image, k = 3 candidate captions, each with the CLIP-I of its reconstruction and its CIDEr.
I2T2I = [
    # (main caption, [(candidate caption, clip_i, cider), ...])
    ("a red circle", [("a red circle", 0.1, 3.0), ("a red square", 0.2, 1.0), ("a blue circle", 0.3, 1.5)]),
    ("two green stars", [("two green stars", 0.4, 10.0), ("two stars", 0.5, 20.0), ("green stars", 0.6, 100.0)]),
]
# T2I2T: per caption, k = 3 images, each with its CLIP score and the caption recovered from it,
# with that caption's SBERT similarity and CIDEr to the prompt.
T2I2T = [
    ("a red circle", [("a red ball", 30.0, 0.9, 0.5), ("a red disc", 10.0, 0.2, 2.0),
                      ("a crimson circle", 20.0, 0.5, 1.0)]),
    ("two green stars", [("two big stars", 5.0, 0.1, 4.0), ("three green stars", 25.0, 0.7, 1.0),
                         ("a green star", 15.0, 0.3, 2.0)]),
]
# The fake corpus metric: the mean of a fixed score per caption.
CORPUS_SCORE = {"a red circle": 1.0, "a red square": 2.0, "a blue circle": 4.0, "two green stars": 8.0,
                "two stars": 16.0, "green stars": 32.0}
CIDER = {c: cider for _, cands in I2T2I for c, _, cider in cands}
CIDER.update({c: cider for _, cands in T2I2T for c, _, _, cider in cands})
SBERT = {c: sim for _, cands in T2I2T for c, _, sim, _ in cands}


def fabricated_rows():
    rows = []
    for i, ((caption, cands), (prompt, images)) in enumerate(zip(I2T2I, T2I2T)):
        rows.append({
            "index": i,
            "caption": caption,
            "references": [f"A photo of {caption} drawn on paper."],
            "gen": {"prompt": prompt, "clip_score": 20.0 + i, "clip_i": 0.5 + i / 10, "image": f"gen_{i}.png"},
            "i2t2i": [{"caption": c, "clip_i": clip_i} for c, clip_i, _ in cands],
            "t2i2t": [{"caption": c, "clip_score": cs, "image": f"t2i2t_{i}_{j}.png"}
                      for j, (c, cs, _, _) in enumerate(images)],
        })
    return rows


@pytest.fixture
def analysis(monkeypatch, tmp_path):
    calls = []

    def caption_metrics(predictions, refs, domains, s, notes, prefix):
        calls.append((prefix, dict(predictions)))
        return {f"{prefix}/CIDEr": float(np.mean([CORPUS_SCORE[c] for c in predictions.values()]))}

    monkeypatch.setattr(analyses, "caption_metrics", caption_metrics)
    monkeypatch.setattr(analyses.M, "per_caption_cider", lambda cands, refs, **k: np.array([CIDER[c] for c in cands]))
    monkeypatch.setattr(analyses.M, "text_similarity",
                        lambda a, b, method="sbert", clip=None: __import__("torch").tensor([SBERT[c] for c in a]))
    rows = fabricated_rows()
    s = AnalysisSettings(k=3, text_similarity="sbert", spice="off", meteor=False, select_seed=0)
    metrics = analyses.analyze(rows, tmp_path, s)
    return metrics, rows, calls


def test_i2t2i_known_answers(analysis):
    metrics, rows, calls = analysis
    random = np.random.default_rng(0).integers(0, 3, size=2)  # the "random" selection with seed 0
    clip_i = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    cider = np.array([[3.0, 1.0, 1.5], [10.0, 20.0, 100.0]])
    # best = highest CLIP-I: candidate 2 of both images (the highest CIDEr is candidate 0 of image 0)
    assert [r["i2t2i_selected"] for r in rows] == [
        {"first": 0, "best": 2, "random": int(random[0])}, {"first": 0, "best": 2, "random": int(random[1])}]
    assert metrics["i2t2i/clip_i_first"] == pytest.approx(0.25)
    assert metrics["i2t2i/cider_first"] == pytest.approx(6.5)
    assert metrics["i2t2i/clip_i_best"] == pytest.approx(0.45)
    assert metrics["i2t2i/cider_best"] == pytest.approx(50.75)
    assert metrics["i2t2i/clip_i_random"] == pytest.approx(clip_i[[0, 1], random].mean())
    assert metrics["i2t2i/cider_random"] == pytest.approx(cider[[0, 1], random].mean())
    # the corpus metrics of each selection are those of exactly the selected captions
    assert metrics["i2t2i/best/CIDEr"] == pytest.approx((4.0 + 32.0) / 2)
    assert metrics["i2t2i/first/CIDEr"] == pytest.approx((1.0 + 8.0) / 2)
    chosen = [I2T2I[i][1][j][0] for i, j in enumerate(random)]
    assert metrics["i2t2i/random/CIDEr"] == pytest.approx(np.mean([CORPUS_SCORE[c] for c in chosen]))
    assert {"0": "a blue circle", "1": "green stars"} in [p for _, p in calls]
    # Spearman over the 6 candidates: ranks (1..6) against (3, 1, 2, 4, 5, 6): 1 - 6 * 6 / (6 * 35)
    assert metrics["i2t2i/spearman_cider"] == pytest.approx(29 / 35, abs=1e-12)
    assert abs(np.corrcoef(clip_i.ravel(), cider.ravel())[0, 1] - 29 / 35) > 0.05  # Pearson: 0.762
    # within each image: ranks (1, 2, 3) against (3, 1, 2) -> -0.5, and 1.0; mean 0.25
    assert metrics["i2t2i/spearman_cider_within"] == pytest.approx(0.25, abs=1e-12)
    assert abs(np.corrcoef(clip_i[0], cider[0])[0, 1] - -0.5) > 0.1


def test_t2i2t_known_answers(analysis):
    metrics, rows, _ = analysis
    random = np.random.default_rng(0).integers(0, 3, size=2)
    sim = np.array([[0.9, 0.2, 0.5], [0.1, 0.7, 0.3]])
    cider = np.array([[0.5, 2.0, 1.0], [4.0, 1.0, 2.0]])
    clip_score = np.array([[30.0, 10.0, 20.0], [5.0, 25.0, 15.0]])
    # best = highest text similarity: image 0 of caption 0, image 1 of caption 1 (not the CIDEr best)
    assert [r["t2i2t_selected"] for r in rows] == [
        {"first": 0, "best": 0, "random": int(random[0])}, {"first": 0, "best": 1, "random": int(random[1])}]
    assert metrics["t2i2t/sbert_best"] == pytest.approx(0.8)
    assert metrics["t2i2t/cider_best"] == pytest.approx(0.75)
    assert metrics["t2i2t/clip_score_best"] == pytest.approx(27.5)
    assert metrics["t2i2t/sbert_first"] == pytest.approx(0.5)
    assert metrics["t2i2t/cider_first"] == pytest.approx(2.25)
    assert metrics["t2i2t/clip_score_first"] == pytest.approx(17.5)
    assert metrics["t2i2t/sbert_random"] == pytest.approx(sim[[0, 1], random].mean())
    # CLIP score ranks (6, 2, 4, 1, 5, 3); CIDEr ranks with ties averaged (1, 4.5, 2.5, 6, 2.5, 4.5)
    expected = np.corrcoef([6, 2, 4, 1, 5, 3], [1, 4.5, 2.5, 6, 2.5, 4.5])[0, 1]
    assert metrics["t2i2t/spearman_clip_cider"] == pytest.approx(expected, abs=1e-12)
    assert metrics["t2i2t/spearman_clip_cider"] == pytest.approx(
        scipy.stats.spearmanr(clip_score.ravel(), cider.ravel()).statistic, abs=1e-12)
    assert metrics["t2i2t/spearman_clip_sbert"] == pytest.approx(
        scipy.stats.spearmanr(clip_score.ravel(), sim.ravel()).statistic, abs=1e-12)
    # within each caption, CLIP score and CIDEr rank the 3 images in opposite orders
    assert metrics["t2i2t/spearman_clip_cider_within"] == pytest.approx(-1.0, abs=1e-12)
    assert metrics["t2i2t/spearman_clip_sbert_within"] == pytest.approx(np.mean(
        [scipy.stats.spearmanr(clip_score[i], sim[i]).statistic for i in range(2)]), abs=1e-12)
    # the per-candidate scores are written back into the rows
    assert [c["cider"] for r in rows for c in r["t2i2t"]] == cider.ravel().tolist()
    assert [c["sbert"] for r in rows for c in r["t2i2t"]] == pytest.approx(sim.ravel().tolist())


def test_caption_and_generation_means(analysis):
    metrics, rows, _ = analysis
    assert metrics["caption/CIDEr"] == pytest.approx(4.5)  # the main captions: (1 + 8) / 2
    assert [r["caption_cider"] for r in rows] == [3.0, 10.0]
    assert [c["cider"] for r in rows for c in r["i2t2i"]] == [3.0, 1.0, 1.5, 10.0, 20.0, 100.0]
    assert metrics["gen/clip_score"] == pytest.approx(20.5)
    assert metrics["gen/clip_i"] == pytest.approx(0.55)
    assert metrics["gen/FID"] is None  # no feature extractor given
    assert not any(k.startswith("synthetic/") for k in metrics)  # not shapes-grammar references
