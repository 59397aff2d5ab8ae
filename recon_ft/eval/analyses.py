"""Rank 0, after the predictions are gathered: caption metrics, FID, the I2T2I / T2I2T analyses.

Input: the rows of `predict.run_batch` (one per item, sorted by index). Output: the flat metrics
(docs/metrics.md lists every key) and the rows with the text scores added. Everything here is a
function of the rows and the saved PNGs, so one device and many give the same numbers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from recon_ft.data.oracle import scene_match
from recon_ft.data.synthetic import parse_caption, score_caption
from recon_ft.eval import metrics as M
from recon_ft.eval import stats
from recon_ft.eval.generation import load_png

log = logging.getLogger(__name__)

SELECTIONS = ("first", "best", "random")
SYNTHETIC_CAPTION_SCORES = ("parsed", "exact", "count", "kind", "colour", "size", "attributes", "recall", "precision")
GEN_ORACLE_SCORES = ("count", "colour", "exact", "kind", "size", "scene_exact", "kind_large")


@dataclass
class AnalysisSettings:
    k: int = 5
    i2t2i: bool = True
    t2i2t: bool = True
    text_similarity: str = "sbert"  # sbert | clip: the T2I2T text reconstruction similarity
    select_seed: int = 0  # the "random" selection
    spice: str = "auto"  # auto | on | off
    meteor: bool = True
    fid_batch_size: int = 64
    is_splits: int = 10  # Inception Score: mean and std over this many splits (at most one per image)


def analyze(rows: list[dict[str, Any]], out_dir: Path, s: AnalysisSettings, clip=None, fid_feature=None,
            notes: list[str] | None = None, is_feature=None) -> dict[str, float | None]:
    """All metrics of an evaluation; adds per-candidate scores and selections to `rows` in place."""
    notes = notes if notes is not None else []
    metrics: dict[str, float | None] = {}
    if not rows:
        raise ValueError("evaluation: no items were evaluated (every sample bad, or an empty split)")
    keys = [str(r["index"]) for r in rows]
    refs = {key: r["references"] for key, r in zip(keys, rows)}

    # -- captions (and per-caption CIDEr of every candidate, for samples.jsonl and the I2T2I analysis)
    log.info("caption metrics (%d items)", len(rows))
    domains = {key: r["domain"] for key, r in zip(keys, rows) if r.get("domain")}
    domains = domains if len(domains) == len(rows) else None  # NoCaps: every item has one
    metrics.update(caption_metrics({key: r["caption"] for key, r in zip(keys, rows)}, refs, domains, s, notes,
                                   prefix="caption"))
    cands = [r["caption"] for r in rows] + [c["caption"] for r in rows for c in r.get("i2t2i", [])]
    cand_refs = [r["references"] for r in rows] + [r["references"] for r in rows for _ in r.get("i2t2i", [])]
    cider = M.per_caption_cider(cands, cand_refs)
    for i, r in enumerate(rows):
        r["caption_cider"] = float(cider[i])
    rest = iter(cider[len(rows):])
    for r in rows:
        for c in r.get("i2t2i", []):
            c["cider"] = float(next(rest))

    scenes = synthetic_scenes(rows)
    if scenes is not None:
        for r, scene in zip(rows, scenes):
            r["synthetic"] = score_caption(r["caption"], scene)
        for name in SYNTHETIC_CAPTION_SCORES:
            metrics[f"synthetic/caption_{name}"] = _mean(r["synthetic"][name] for r in rows)

    # -- generation
    log.info("generation metrics (FID over %d images)", len(rows))
    metrics["gen/clip_score"] = _mean(r["gen"]["clip_score"] for r in rows)
    metrics["gen/clip_i"] = _mean(r["gen"]["clip_i"] for r in rows)
    if scenes is not None:
        # count / colour / exact as colour_match; kind, size and scene_exact from the shape templates
        oracle = [scene_match(_png_array(out_dir / r["gen"]["image"]), sc) for r, sc in zip(rows, scenes)]
        for r, o in zip(rows, oracle):
            r["gen"]["synthetic"] = {name: o[name] for name in GEN_ORACLE_SCORES}  # per item, for a study's tests
        for name in GEN_ORACLE_SCORES:
            metrics[f"synthetic/gen_{name}"] = _mean(o[name] for o in oracle)

    if s.i2t2i:
        metrics.update(i2t2i(rows, keys, refs, s, scenes, metrics, notes))
    if s.t2i2t:
        metrics.update(t2i2t(rows, s, clip, scenes))
    metrics.update(image_set_metrics(rows, out_dir, s, fid_feature, is_feature, notes))
    return {k: _clean(v) for k, v in metrics.items()}


def caption_metrics(predictions: dict[str, str], refs: dict[str, list[str]], domains: dict[str, str] | None,
                    s: AnalysisSettings, notes: list[str], prefix: str) -> dict[str, float | None]:
    """COCO caption metrics of one caption per item under `prefix/`; with `domains` (NoCaps) also
    per domain (`prefix/<domain>/<metric>`), `prefix/<metric>` being overall."""
    out: dict[str, float | None] = {}
    if domains:
        by_domain = M.caption_scores_by_domain(predictions, refs, domains, spice=s.spice, meteor=s.meteor)
        corpus = by_domain["overall"]
        for domain, scores in by_domain.items():
            for name, value in scores.items():
                out[f"{prefix}/{domain}/{name}"] = value
    else:
        corpus, _ = M.caption_scores(predictions, refs, spice=s.spice, meteor=s.meteor)
    for name, value in corpus.items():
        out[f"{prefix}/{name}"] = value
    if s.spice != "off" and "SPICE" not in corpus:
        out[f"{prefix}/SPICE"] = None  # skipped
        note = "SPICE skipped: Stanford CoreNLP jars for pycocoevalcap's SPICE are not installed (or it failed)"
        if note not in notes:
            notes.append(note)
    if not s.meteor:
        out[f"{prefix}/METEOR"] = None
    return out


def i2t2i(rows, keys, refs, s: AnalysisSettings, scenes, metrics_so_far, notes) -> dict[str, float]:
    """k captions per image -> one image each -> CLIP-I to the source; three selections of a caption."""
    out: dict[str, float] = {}
    clip_i = np.array([[c["clip_i"] for c in r["i2t2i"]] for r in rows])  # (N, k)
    cider = np.array([[c["cider"] for c in r["i2t2i"]] for r in rows])
    values = {"clip_i": clip_i, "cider": cider}
    if scenes is not None:
        values["synthetic_exact"] = np.array(
            [[score_caption(c["caption"], sc)["exact"] for c in r["i2t2i"]] for r, sc in zip(rows, scenes)])
    table = stats.selection_table(values, by="clip_i", seed=s.select_seed)
    chosen = {how: stats.select(clip_i, how, seed=s.select_seed) for how in SELECTIONS}
    for i, r in enumerate(rows):
        r["i2t2i_selected"] = {how: int(chosen[how][i]) for how in SELECTIONS}
    for how in SELECTIONS:
        for name, value in table[how].items():
            out[f"i2t2i/{name}_{how}"] = value
        # the selection's captions scored against the references like the main caption
        if how == "first" and metrics_so_far.get("caption/CIDEr") is not None and all(
                r["i2t2i"][0]["caption"] == r["caption"] for r in rows):
            scores = {k.split("/")[-1]: v for k, v in metrics_so_far.items()
                      if k.startswith("caption/") and k.count("/") == 1}
        else:
            predictions = {key: r["i2t2i"][int(chosen[how][i])]["caption"]
                           for i, (key, r) in enumerate(zip(keys, rows))}
            scores = {k.split("/")[-1]: v for k, v in caption_metrics(
                predictions, refs, None, s, notes, prefix="x").items()}
        for name, value in scores.items():
            out[f"i2t2i/{how}/{name}"] = value
    out["i2t2i/spearman_cider"] = stats.spearman(clip_i.ravel(), cider.ravel()) if clip_i.size > 1 else None
    out["i2t2i/spearman_cider_within"] = _nanmean(stats.rowwise_spearman(clip_i, cider)) if s.k > 1 else None
    return out


def t2i2t(rows, s: AnalysisSettings, clip, scenes) -> dict[str, float]:
    """k images per caption -> one caption each -> similarity to the source caption; three selections
    of an image (by text reconstruction), and how CLIP score and text reconstruction agree."""
    out: dict[str, float] = {}
    if s.text_similarity not in ("sbert", "clip"):
        raise ValueError(f"metrics.text_similarity: expected sbert or clip, got {s.text_similarity!r}")
    sim_name = "sbert" if s.text_similarity == "sbert" else "clip_text"
    recovered = [c["caption"] for r in rows for c in r["t2i2t"]]
    sources = [r["gen"]["prompt"] for r in rows for _ in r["t2i2t"]]
    log.info("T2I2T text similarity (%s, %d captions)", sim_name, len(recovered))
    cider = M.per_caption_cider(recovered, [[src] for src in sources])
    sim = M.text_similarity(recovered, sources, method=s.text_similarity, clip=clip).numpy()
    n, k = len(rows), s.k
    it = iter(range(n * k))
    for r in rows:
        for c in r["t2i2t"]:
            j = next(it)
            c["cider"], c[sim_name] = float(cider[j]), float(sim[j])
    values = {sim_name: sim.reshape(n, k), "cider": cider.reshape(n, k),
              "clip_score": np.array([[c["clip_score"] for c in r["t2i2t"]] for r in rows])}
    if scenes is not None:
        # the captioner's reading of each generated image: the whole scene, and its kinds (a generator
        # trained through this captioner may learn to please it; the pixel oracle is the measure)
        scored = [[score_caption(c["caption"], sc) for c in r["t2i2t"]] for r, sc in zip(rows, scenes)]
        values["synthetic_exact"] = np.array([[x["exact"] for x in row] for row in scored])
        values["synthetic_kind"] = np.array([[x["kind"] for x in row] for row in scored])
    table = stats.selection_table(values, by=sim_name, seed=s.select_seed)
    for how in SELECTIONS:
        for name, value in table[how].items():
            out[f"t2i2t/{name}_{how}"] = value
    chosen = {how: stats.select(values[sim_name], how, seed=s.select_seed) for how in SELECTIONS}
    for i, r in enumerate(rows):
        r["t2i2t_selected"] = {how: int(chosen[how][i]) for how in SELECTIONS}
    clip_scores = values["clip_score"]
    for name in ("cider", sim_name):
        out[f"t2i2t/spearman_clip_{name}"] = stats.spearman(clip_scores.ravel(), values[name].ravel()) \
            if clip_scores.size > 1 else None
        out[f"t2i2t/spearman_clip_{name}_within"] = _nanmean(stats.rowwise_spearman(clip_scores, values[name])) \
            if k > 1 else None
    return out


# ------------------------------------------------------------------------------------ helpers


def synthetic_scenes(rows) -> list | None:
    """The scene of every item when every item's first reference is a shapes-grammar caption
    (the synthetic benchmark and the fixtures made from it), else None."""
    scenes = [parse_caption(r["references"][0]) for r in rows]
    return scenes if all(sc is not None for sc in scenes) else None


def _png_batches(paths: list[Path], batch_size: int, desc: str) -> Iterator[torch.Tensor]:
    for i in tqdm(range(0, len(paths), batch_size), desc=desc, leave=False):
        yield torch.stack([load_png(p) for p in paths[i:i + batch_size]])


def image_sets(rows) -> dict[str, list[str]]:
    """The generated image sets scored by FID and IS, one image per item: "gen/" (the generation
    metric's image) and, after the T2I2T analysis, each selection of k ("t2i2t/..._<selection>"),
    which the paper compares (best of k against a random one)."""
    sets = {"gen/": [r["gen"]["image"] for r in rows]}
    if all("t2i2t_selected" in r for r in rows):
        for how in SELECTIONS:
            sets[f"t2i2t/{how}"] = [r["t2i2t"][r["t2i2t_selected"][how]]["image"] for r in rows]
    return sets


def _key(name: str, metric: str) -> str:
    """("gen/", "FID") -> "gen/FID"; ("t2i2t/best", "FID") -> "t2i2t/FID_best"."""
    prefix, how = name.split("/")
    return f"{prefix}/{metric}" + (f"_{how}" if how else "")


def image_set_metrics(rows, out_dir: Path, s: AnalysisSettings, fid_feature, is_feature,
                      notes: list[str]) -> dict[str, float | None]:
    """FID (against the source images; real features extracted once) and Inception Score of every
    set of `image_sets`; None where no extractor is configured or too few items."""
    sets = image_sets(rows)
    out: dict[str, float | None] = {}
    if fid_feature is None:
        out["gen/FID"] = None
    elif len(rows) < 2:
        notes.append("FID skipped: it needs at least 2 items")
        out.update({_key(name, "FID"): None for name in sets})
    else:
        log.info("FID of %d image sets (%d images each)", len(sets), len(rows))
        real = _png_batches([out_dir / r["source_image"] for r in rows], s.fid_batch_size, "FID real")
        fakes = {name: _png_batches([out_dir / p for p in paths], s.fid_batch_size, f"FID {name}")
                 for name, paths in sets.items()}
        for name, value in M.fid_many(real, fakes, fid_feature, batch_size=s.fid_batch_size).items():
            out[_key(name, "FID")] = value
    if is_feature is not None:
        splits = min(s.is_splits, len(rows))
        for name, paths in sets.items():
            images = _png_batches([out_dir / p for p in paths], s.fid_batch_size, f"IS {name}")
            mean, std = M.inception_score(images, is_feature, splits=splits, batch_size=s.fid_batch_size)
            out[_key(name, "IS")] = mean
            if name == "gen/":
                out["gen/IS_std"] = std
    return out


def _png_array(path: Path) -> np.ndarray:
    return (load_png(path).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _mean(values) -> float:
    values = [float(v) for v in values if v is not None]  # None: not defined for that item (kind_large)
    return float(np.mean(values)) if values else float("nan")


def _nanmean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else None


def _clean(value):
    """JSON-safe: floats, None for NaN / inf / skipped."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
