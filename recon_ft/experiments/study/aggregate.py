"""From the runs' metrics.json files to the study's numbers: per-configuration mean and spread,
and each configuration's paired difference from the baseline.

Pairing: seed s fixes the data order, the adapters' initialization and the training noise in every
configuration alike, so configuration c and the baseline at the same seed differ only in the loss.
The difference d_s = value(c, s) - value(baseline, s) is taken per seed; over the n seeds present
in both: mean, std (ddof=1), a paired t-test (scipy.stats.ttest_rel, two-sided) and a 95%
confidence interval mean +- t_{0.975, n-1} std / sqrt(n). With n = 3 the t distribution has 2
degrees of freedom (t = 4.30), so only large effects consistent across seeds reach p < 0.05.
Missing values (null in metrics.json, NaN) are left out, and n says how many remain.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

from recon_ft.experiments.study.plan import BASE, run_dir

METHOD = (
    "mean and std (ddof=1) over seeds; difference from {baseline} paired by seed (same seed: same data "
    "order, adapter initialization and noise), with a two-sided paired t-test (scipy.stats.ttest_rel) and a "
    "95% confidence interval from the t distribution with n-1 degrees of freedom. With few seeds "
    "({seeds} seeds: {dof} degrees of freedom) only large, consistent effects can be called significant (p < 0.05)."
)
ALPHA = 0.05


def _finite(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def collect(cfg) -> list[dict]:
    """Long rows {config, seed, split, metric, value} of every finished evaluation under the study's
    out_dir (the base models' rows have seed None); value None where a metric is null."""
    out = Path(cfg.out_dir)
    sources = [(name, int(seed), run_dir(out, name, int(seed))) for name in cfg.configs for seed in cfg.seeds]
    sources += [(BASE, None, out / BASE)]
    rows = []
    for config, seed, where in sources:
        for split in cfg.eval.splits:
            metrics = _read_json(where / f"eval_{split}" / "metrics.json")
            for metric, value in (metrics or {}).items():
                if isinstance(value, (int, float)) or value is None:
                    rows.append(dict(config=config, seed=seed, split=split, metric=metric, value=_finite(value)))
    return rows


def collect_wall(cfg) -> dict[str, dict[str, float | None]]:
    """Mean wall time (s) per configuration of its train step and of one eval step."""
    out = Path(cfg.out_dir)
    wall: dict[str, dict[str, list[float]]] = {}
    places = [(name, run_dir(out, name, int(seed))) for name in cfg.configs for seed in cfg.seeds]
    places += [(BASE, out / BASE)]
    for config, where in places:
        times = wall.setdefault(config, {"train": [], "eval": []})
        train = _read_json(where / "train" / "wall.json")
        if train:
            times["train"].append(train["seconds"])
        for split in cfg.eval.splits:
            ev = _read_json(where / f"eval_{split}" / "wall.json")
            if ev:
                times["eval"].append(ev["seconds"])
    return {c: {k: (float(np.mean(v)) if v else None) for k, v in t.items()} | {"n_train": len(t["train"])}
            for c, t in wall.items()}


MECHANISM_PREFIXES = ("grad_norm/", "train/unpaired/")


def collect_mechanism(cfg) -> dict[str, dict[str, dict]]:
    """{config: {value: describe() over seeds}} of the mechanism values each run's training logged
    (train/logs/metrics.csv): grad_norm/<model>/<term> (term_grad_norms_every_n_steps) and the
    unpaired terms' train/unpaired/soft_entropy and ranked_not_beam, each run's value the mean over
    the steps that logged it. Configs that logged none are left out."""
    out = Path(cfg.out_dir)
    found: dict[str, dict[str, list[float]]] = {}
    for name in cfg.configs:
        for seed in cfg.seeds:
            path = run_dir(out, name, int(seed)) / "train" / "logs" / "metrics.csv"
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                logged: dict[str, list[float]] = {}
                for row in csv.DictReader(f):
                    for key, value in row.items():
                        if key.startswith(MECHANISM_PREFIXES) and value not in ("", None):
                            logged.setdefault(key, []).append(float(value))
            for key, values in logged.items():
                found.setdefault(str(name), {}).setdefault(key, []).append(float(np.mean(values)))
    return {c: {k: describe(v) for k, v in sorted(values.items())} for c, values in found.items()}


def describe(values: list[float | None]) -> dict:
    """mean, std (ddof=1; None below 2 values) and n of the finite values."""
    xs = [v for v in (_finite(v) for v in values) if v is not None]
    n = len(xs)
    return {"mean": float(np.mean(xs)) if n else None,
            "std": float(np.std(xs, ddof=1)) if n >= 2 else None, "n": n}


def summarize(rows: list[dict]) -> list[dict]:
    """One row per (config, split, metric): describe() over its seeds."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["config"], r["split"], r["metric"]), []).append(r["value"])
    return [dict(config=c, split=s, metric=m, **describe(v)) for (c, s, m), v in groups.items()]


def paired_difference(values: dict[int, float | None], baseline: dict[int, float | None]) -> dict:
    """Difference of two configurations paired by seed ({seed: value} each); see the module text."""
    seeds = sorted(s for s in values if _finite(values[s]) is not None and _finite(baseline.get(s)) is not None)
    a = np.array([values[s] for s in seeds], dtype=float)
    b = np.array([baseline[s] for s in seeds], dtype=float)
    d = a - b
    n = len(seeds)
    out = {"seeds": seeds, "n": n, "mean": float(d.mean()) if n else None,
           "std": float(d.std(ddof=1)) if n >= 2 else None, "p": None, "ci_low": None, "ci_high": None,
           "up": int((d > 0).sum()), "down": int((d < 0).sum()), "same": int((d == 0).sum()), "significant": False}
    if n >= 2:
        half = stats.t.ppf(1 - ALPHA / 2, n - 1) * out["std"] / math.sqrt(n)
        out["ci_low"], out["ci_high"] = out["mean"] - half, out["mean"] + half
        # identical differences at every seed (up to rounding): the t statistic is undefined, and the
        # sign count says what there is to say
        if out["std"] > 1e-9 * max(1.0, abs(out["mean"])):
            out["p"] = float(stats.ttest_rel(a, b).pvalue)
            out["significant"] = out["p"] < ALPHA
    return out


def differences(rows: list[dict], baseline: str) -> list[dict]:
    """Every configuration but the baseline (and the base models) against the baseline, per split and
    metric, paired by seed."""
    table: dict[tuple, dict[int, float | None]] = {}
    for r in rows:
        if r["seed"] is not None:
            table.setdefault((r["config"], r["split"], r["metric"]), {})[r["seed"]] = r["value"]
    out = []
    for (config, split, metric), values in table.items():
        if config == baseline:
            continue
        base = table.get((baseline, split, metric), {})
        out.append(dict(config=config, split=split, metric=metric, **paired_difference(values, base)))
    return out


def sign_count(diff: dict) -> str:
    """"3/3 seeds up", "2 up, 1 down of 3 seeds", ..."""
    n = diff["n"]
    if n == 0:
        return "no seeds"
    for k in ("up", "down", "same"):
        if diff[k] == n:
            return f"{n}/{n} seeds {k}"
    return ", ".join(f"{diff[k]} {k}" for k in ("up", "down", "same") if diff[k]) + f" of {n} seeds"
