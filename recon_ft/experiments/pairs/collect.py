"""Read what each pair's run left: metrics.json, wall.json and bridge.json -> one row per pair."""

from __future__ import annotations

import json
from pathlib import Path

from recon_ft.experiments.pairs.plan import pair_dir

# The matrix report's headline metrics: (file name, label, metrics.json keys in order of preference).
# T2I2T's text similarity is SBERT or the CLIP text tower (metrics.text_similarity): whichever the run wrote.
HEADLINE = [
    ("i2t2i_clip_i_best", "I2T2I best-of-k CLIP-I", ("i2t2i/clip_i_best",)),
    ("i2t2i_cider_best", "I2T2I best caption's CIDEr", ("i2t2i/best/CIDEr",)),
    ("t2i2t_text_similarity_best", "T2I2T best-of-k text similarity", ("t2i2t/sbert_best", "t2i2t/clip_text_best")),
    ("t2i2t_clip_score_best", "T2I2T best image's CLIP score", ("t2i2t/clip_score_best",)),
]
# More columns of results.csv (absent keys stay empty).
CSV_METRICS = [
    "i2t2i/clip_i_best", "i2t2i/clip_i_first", "i2t2i/clip_i_random", "i2t2i/best/CIDEr", "i2t2i/first/CIDEr",
    "i2t2i/random/CIDEr", "i2t2i/spearman_cider",
    "t2i2t/sbert_best", "t2i2t/sbert_first", "t2i2t/sbert_random", "t2i2t/clip_text_best", "t2i2t/clip_text_first",
    "t2i2t/clip_text_random", "t2i2t/clip_score_best", "t2i2t/clip_score_first", "t2i2t/clip_score_random",
    "t2i2t/spearman_clip_sbert", "t2i2t/spearman_clip_clip_text", "t2i2t/spearman_clip_cider",
    "caption/CIDEr", "caption/BLEU-4", "synthetic/caption_exact", "gen/clip_score", "gen/clip_i", "gen/FID",
    "synthetic/gen_exact", "data/items",
]
# Each model's own scores, besides the pairs': a matrix cell mixes the two models' competence with how
# well they understand each other. Keys absent from every run (real data: no synthetic/*) are left out.
ALONE = {
    "captioner": ["caption/CIDEr", "synthetic/caption_exact", "synthetic/caption_colour", "synthetic/caption_kind",
                  "synthetic/caption_count"],
    "generator": ["gen/clip_score", "gen/clip_i", "synthetic/gen_colour", "synthetic/gen_count",
                  "synthetic/gen_exact"],
}
COVERAGE = ["captioner_style", "generator_style", "src_size", "matched", "fallback", "unmapped"]


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def headline_value(metrics: dict | None, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if metrics and metrics.get(key) is not None:
            return float(metrics[key])
    return None


def collect(captioners: list[str], generators: list[str], out_dir: Path) -> list[dict]:
    rows = []
    for c in captioners:
        for g in generators:
            where = pair_dir(out_dir, c, g)
            wall = _read(where / "wall.json")
            rows.append({"captioner": c, "generator": g, "dir": str(where), "metrics": _read(where / "metrics.json"),
                         "coverage": _read(where / "bridge.json"), "seconds": wall["seconds"] if wall else None})
    return rows


def matrix(rows: list[dict], captioners: list[str], generators: list[str], keys: tuple[str, ...]) -> list[list]:
    """(captioners x generators) values of a headline metric, None where a pair has none."""
    by_pair = {(r["captioner"], r["generator"]): headline_value(r["metrics"], keys) for r in rows}
    return [[by_pair.get((c, g)) for g in generators] for c in captioners]


def extractors(rows: list[dict]) -> dict[str, list]:
    """metrics.json's extractors/* values over the finished pairs (each distinct value once)."""
    out: dict[str, list] = {}
    for r in rows:
        for key, value in (r["metrics"] or {}).items():
            if key.startswith("extractors/") and value not in out.setdefault(key, []):
                out[key].append(value)
    return out


def alone(rows: list[dict], part: str) -> tuple[list[str], list[list]]:
    """(metric keys, [name, value per key] per model) of one part ("captioner" or "generator"): its own
    scores, the mean over the finished runs it is in (every run evaluates the same items and seeds,
    so its own scores repeat across its pairs)."""
    names = list(dict.fromkeys(r[part] for r in rows))
    done = [r for r in rows if r["metrics"]]
    keys = [k for k in ALONE[part] if any(r["metrics"].get(k) is not None for r in done)]
    table = []
    for name in names:
        row = [name]
        for key in keys:
            values = [float(r["metrics"][key]) for r in done if r[part] == name and r["metrics"].get(key) is not None]
            row.append(sum(values) / len(values) if values else None)
        table.append(row)
    return keys, table
