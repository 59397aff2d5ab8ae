"""Per-item results and the pre-registered inference of docs/study/plan.md.

A study config's `primary` block names the split, the primary metric, the comparisons that are
primary (corrected together with Holm's method), the secondary metrics, the controls (on the primary
metric) and the ceilings (on every primary metric), both against the baseline and outside the family:

    primary: {split: val, metric: recall, comparisons: [img_1, ranked], secondary: [precision],
              controls: [mismatch], ceilings: [oracle], exploratory: [[ranked, self_train]]}

A comparison is an arm, against the baseline on the primary metric, or {arm, against, metric} where
the plan compares it with another arm or on another metric (E2: the image cycles against self_train
as well, the text cycle on the generator's metric). A metric is a key of each evaluated item's
caption scores in samples.jsonl (`synthetic`: recall, exact, ...) or, prefixed gen_, of its
generated image's oracle scores (`gen.synthetic`: gen_exact, gen_kind, ...).
`exploratory` pairs (arm, against) are comparisons added after the plan, reported apart from it.

items.csv holds, per configuration, seed and evaluated item, those metrics: enough to recompute
every interval and p-value without the runs' folders (a few hundred kB per experiment).

Inference for arm A against baseline B on metric m: d[s, i] = m(A, s, i) - m(B, s, i) over the seeds
s both have and the items i both scored (same items at every seed: eval's items are fixed).
  - effect: the mean of d;
  - 95% interval: percentile bootstrap that resamples seeds, then items within each resampled seed
    (10,000 resamples), so that both the training noise and the item sample widen it;
  - p: the sign-flip permutation test, each d[s, i] flipped independently (10,000 draws, two-sided,
    (1 + hits) / (1 + draws)). It treats items as the unit: the seeds' spread enters the interval,
    not the p-value, which is why both are reported.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from recon_ft.experiments.study.plan import run_dir

N_RESAMPLES = 10_000
LEVEL = 0.95
ALPHA = 0.05


def primary_spec(cfg) -> dict | None:
    """The study config's primary block, checked (None: the study has none)."""
    spec = cfg.get("primary")
    if spec is None:
        return None
    for key in ("split", "metric", "comparisons"):
        if key not in spec:
            raise ValueError(f"study config primary: missing key {key!r}")
    comparisons = [_comparison(c, str(cfg.baseline), str(spec.metric)) for c in spec.comparisons]
    names = [*(n for c in comparisons for n in (c["arm"], c["against"])), *(spec.get("controls") or []),
             *(spec.get("ceilings") or []),
             *(n for pair in spec.get("exploratory") or [] for n in pair)]
    unknown = sorted({n for n in names if n not in cfg.configs})
    if unknown:
        raise ValueError(f"study config primary: {unknown} are not configs of the study ({list(cfg.configs)})")
    if spec.split not in cfg.eval.splits:
        raise ValueError(f"study config primary.split: {spec.split!r} is not evaluated (eval.splits {list(cfg.eval.splits)})")
    return {"split": str(spec.split), "metric": str(spec.metric), "comparisons": comparisons,
            "secondary": [str(m) for m in spec.get("secondary") or []],
            "controls": [str(c) for c in spec.get("controls") or []],
            "ceilings": [str(c) for c in spec.get("ceilings") or []],
            "exploratory": [[str(a), str(b)] for a, b in spec.get("exploratory") or []]}


def _comparison(entry, baseline: str, metric: str) -> dict:
    """A primary comparison {arm, against, metric} from an arm's name or a mapping that names them."""
    if isinstance(entry, str):
        return {"arm": entry, "against": baseline, "metric": metric}
    unknown = sorted(set(entry) - {"arm", "against", "metric"})
    if "arm" not in entry or unknown:
        raise ValueError(f"study config primary.comparisons: expected an arm's name or {{arm, against, metric}}, "
                         f"got {dict(entry)}")
    return {"arm": str(entry["arm"]), "against": str(entry.get("against", baseline)),
            "metric": str(entry.get("metric", metric))}


def primary_metrics(metric: str, comparisons: list[dict]) -> list[str]:
    """The primary metrics: the block's own, then those its comparisons name, each once."""
    return list(dict.fromkeys([metric, *(c["metric"] for c in comparisons)]))


def item_metrics(spec: dict) -> list[str]:
    """Every metric the inference reads, the primary ones first, each once."""
    return list(dict.fromkeys([*primary_metrics(spec["metric"], spec["comparisons"]), *spec["secondary"]]))


def item_score(sample: dict, metric: str) -> float | None:
    """An evaluated item's score on `metric` (see the module text); None where the metric is not
    defined for the item (kind_large of a scene without large objects). KeyError where the item
    was not scored on it."""
    if metric.startswith("gen_"):
        scores = (sample.get("gen") or {}).get("synthetic")
        metric = metric[len("gen_"):]
    else:
        scores = sample.get("synthetic")
    if scores is None or metric not in scores:
        raise KeyError(metric)
    return None if scores[metric] is None else float(scores[metric])


def collect_items(cfg, spec: dict) -> list[dict]:
    """{config, seed, index, <metric>...} of every evaluated item of the primary split, from the
    runs' samples.jsonl; sorted by config (the study's order), seed and item."""
    out, rows = Path(cfg.out_dir), []
    metrics = item_metrics(spec)
    for config in cfg.configs:
        for seed in cfg.seeds:
            path = run_dir(out, config, int(seed)) / f"eval_{spec['split']}" / "samples.jsonl"
            if not path.is_file():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                sample = json.loads(line)
                try:
                    scores = {m: item_score(sample, m) for m in metrics}
                except KeyError as missing:
                    raise ValueError(f"{path}: item {sample.get('index')} has no score for {missing} (the study's "
                                     "metrics need the synthetic benchmark, gen_ ones its generated images)") from None
                rows.append({"config": str(config), "seed": int(seed), "index": int(sample["index"]), **scores})
    return rows


def write_items(rows: list[dict], metrics: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["config", "seed", "index", *metrics])
        for r in rows:
            writer.writerow([r["config"], r["seed"], r["index"], *("" if r[m] is None else repr(r[m]) for m in metrics)])


def read_items(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{"config": r["config"], "seed": int(r["seed"]), "index": int(r["index"]),
                 **{k: None if v == "" else float(v) for k, v in r.items() if k not in ("config", "seed", "index")}}
                for r in csv.DictReader(f)]


def paired_matrix(items: list[dict], arm: str, baseline: str, metric: str) -> tuple[np.ndarray, list[int]]:
    """d (S, N): arm minus baseline per seed and item, over the seeds and items both have (an item
    on which the metric is not defined, None, is left out)."""
    table: dict[tuple[str, int], dict[int, float]] = {}
    for r in items:
        if r[metric] is not None:
            table.setdefault((r["config"], r["seed"]), {})[r["index"]] = r[metric]
    seeds = sorted(s for (c, s) in table if c == arm and (baseline, s) in table)
    if not seeds:
        return np.zeros((0, 0)), []
    shared = set.intersection(*(set(table[(arm, s)]) & set(table[(baseline, s)]) for s in seeds))
    index = sorted(shared)
    d = np.array([[table[(arm, s)][i] - table[(baseline, s)][i] for i in index] for s in seeds])
    return d, seeds


def bootstrap_interval(d: np.ndarray, rng: np.random.Generator, n: int = N_RESAMPLES) -> tuple[float, float]:
    """Percentile interval of mean(d) resampling seeds, then items within each resampled seed."""
    s, m = d.shape
    means = []
    for start in range(0, n, 1000):  # in chunks: 1000 x S x N indices at a time
        k = min(1000, n - start)
        seeds = rng.integers(0, s, size=(k, s))  # (k, S)
        items = rng.integers(0, m, size=(k, s, m))  # (k, S, N)
        means.append(d[seeds[..., None], items].mean(axis=(1, 2)))  # (k,)
    means = np.concatenate(means)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def sign_flip_p(d: np.ndarray, rng: np.random.Generator, n: int = N_RESAMPLES) -> float:
    """Two-sided p of mean(d) = 0, flipping the sign of each difference independently."""
    flat = d.ravel()
    observed = abs(flat.mean())
    hits = 0
    for start in range(0, n, 1000):  # in chunks: 1000 x S*N signs at a time
        k = min(1000, n - start)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, flat.size))
        hits += int((np.abs(signs @ flat / flat.size) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def compare(items: list[dict], arm: str, baseline: str, metric: str, seed: int = 0) -> dict:
    """The pre-registered comparison of `arm` with `baseline` on `metric` (see the module text)."""
    d, seeds = paired_matrix(items, arm, baseline, metric)
    if d.size == 0:
        return {"arm": arm, "against": baseline, "metric": metric, "seeds": [], "items": 0, "effect": None,
                "ci": None, "p": None, "seed_effects": []}
    rng = np.random.default_rng(seed)
    return {"arm": arm, "against": baseline, "metric": metric, "seeds": seeds, "items": int(d.shape[1]),
            "effect": float(d.mean()),
            "ci": bootstrap_interval(d, rng), "p": sign_flip_p(d, rng),
            "seed_effects": [float(x) for x in d.mean(axis=1)],
            "share_differing": float((d != 0).mean())}


def preregistered(items: list[dict], spec: dict, baseline: str) -> dict:
    """Primary comparisons (Holm-adjusted together), the secondary metrics, the controls and the ceilings."""
    primary = [compare(items, c["arm"], c["against"], c["metric"]) for c in spec["comparisons"]]
    ps = [c["p"] for c in primary]
    if all(p is not None for p in ps):
        for c, adjusted in zip(primary, holm(ps)):
            c["p_holm"] = adjusted
            c["rejected"] = adjusted < ALPHA
    ceilings = spec.get("ceilings", [])
    arms = [*dict.fromkeys(c["arm"] for c in spec["comparisons"]), *spec["controls"], *ceilings]
    secondary = [compare(items, arm, baseline, m) for m in spec["secondary"] for arm in arms]
    controls = [compare(items, arm, baseline, spec["metric"]) for arm in spec["controls"]]
    exploratory = [compare(items, arm, against, m) for arm, against in spec.get("exploratory", [])
                   for m in item_metrics(spec)]
    return {"baseline": baseline, "split": spec["split"], "metric": spec["metric"], "primary": primary,
            "secondary": secondary, "controls": controls, "exploratory": exploratory,
            **({"ceilings": [compare(items, arm, baseline, m) for arm in ceilings
                             for m in primary_metrics(spec["metric"], spec["comparisons"])]}
               if ceilings else {})}
