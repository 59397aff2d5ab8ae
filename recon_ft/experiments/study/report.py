"""The study's report: docs/study.md (readable on GitHub), results.csv (long), summary.json and
headline.png (mean +- std per configuration, val and test)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from recon_ft.experiments.machine import machine
from recon_ft.experiments.study.aggregate import ALPHA, METHOD, sign_count
from recon_ft.experiments.study.items import ALPHA as FAMILY_ALPHA
from recon_ft.experiments.study.items import item_metrics, primary_metrics, write_items
from recon_ft.experiments.study.plan import BASE

# A generated-image metric is reported only if the oracle reads its attribute from rendered images.
ORACLE_ATTRIBUTE = {"synthetic/gen_count": "count", "synthetic/gen_colour": "colour", "synthetic/gen_exact": "exact",
                    "synthetic/gen_kind": "kind", "synthetic/gen_size": "size",
                    "synthetic/gen_scene_exact": "scene_exact", "synthetic/gen_kind_large": "kind_large"}


def headline_metrics(wanted: list[str], oracle: dict | None) -> tuple[list[str], list[str]]:
    """(reported, left out): gen_* metrics whose attribute the oracle did not validate are left out."""
    if oracle is None:
        return list(wanted), []
    ok = set(oracle["validated"])
    keep = [m for m in wanted if ORACLE_ATTRIBUTE.get(m, None) is None or ORACLE_ATTRIBUTE[m] in ok]
    return keep, [m for m in wanted if m not in keep]


def _f(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value, digits=3) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def _p(value) -> str:
    return "-" if value is None else (f"{value:.3f}" if value >= 0.001 else "<0.001")


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["config", "seed", "split", "metric", "value"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "seed": "" if r["seed"] is None else r["seed"],
                             "value": "" if r["value"] is None else repr(r["value"])})


def read_csv(path: Path) -> list[dict]:
    """results.csv back into collect()'s rows (write_csv's repr keeps every float exact)."""
    with open(path, newline="") as f:
        return [{"config": r["config"], "seed": int(r["seed"]) if r["seed"] else None, "split": r["split"],
                 "metric": r["metric"], "value": float(r["value"]) if r["value"] else None}
                for r in csv.DictReader(f)]


def plot(summary: list[dict], configs: list[str], splits: list[str], metrics: list[str], path: Path) -> None:
    """One panel per metric: a bar per configuration and split, mean with +-std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    index = {(r["config"], r["split"], r["metric"]): r for r in summary}
    cols = 3
    rows = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(configs))
    for ax, metric in zip(axes.flat, metrics):
        for j, split in enumerate(splits):
            stats = [index.get((c, split, metric), {}) for c in configs]
            means = [s.get("mean") if s.get("mean") is not None else np.nan for s in stats]
            errs = [s.get("std") if s.get("std") is not None else 0.0 for s in stats]
            ax.bar(x + (j - (len(splits) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=split)
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(x, configs, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("mean +- std over seeds (base: the zoo's models, one evaluation)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def shows(metric: str, split: str, diffs: list[dict], baseline: str) -> str:
    """One plain sentence: does any configuration differ significantly from the baseline?"""
    mine = [d for d in diffs if d["metric"] == metric and d["split"] == split]
    if not mine:
        return f"`{metric}` ({split}): not measured on this split."
    if all(d["n"] < 2 for d in mine):
        return f"`{metric}` ({split}): too few paired seeds to compare with {baseline}."
    sig = [d for d in mine if d["significant"]]
    if not sig:
        best = max(mine, key=lambda d: abs(d["mean"] or 0.0))
        return (f"`{metric}` ({split}): no configuration differs significantly from {baseline} "
                f"(largest mean difference {_signed(best['mean'])}, {best['config']}, p {_p(best['p'])}).")
    parts = [f"{d['config']} {_signed(d['mean'])} (95% CI {_signed(d['ci_low'])} to {_signed(d['ci_high'])}, "
             f"p {_p(d['p'])}, {sign_count(d)})" for d in sig]
    return f"`{metric}` ({split}): differs significantly from {baseline}: " + "; ".join(parts) + "."


def answer(diffs: list[dict], splits: list[str], metrics: list[str], baseline: str) -> list[str]:
    """The study's answer in plain words, per split: which configurations differ significantly from
    the baseline on which headline metric, up or down; or that none does."""
    lines = []
    for split in splits:
        sig = [d for d in diffs if d["split"] == split and d["metric"] in metrics and d["significant"]]
        if not sig:
            lines.append(f"- {split}: no cycle configuration differs significantly from {baseline} on any "
                         "headline metric; here the cycle terms do not measurably help (or hurt).")
            continue
        parts = [f"{d['config']} {'up' if d['mean'] > 0 else 'down'} on `{d['metric']}` ({_signed(d['mean'])}, "
                 f"p {_p(d['p'])})" for d in sig]
        lines.append(f"- {split}: significant differences from {baseline}: " + "; ".join(parts) + ".")
    return lines


def method(cfg) -> str:
    return METHOD.format(baseline=cfg.baseline, seeds=len(cfg.seeds), dof=len(cfg.seeds) - 1)


def identical_note(diffs: list[dict], metrics: list[str], because: str | None) -> list[str]:
    """The comparisons with no difference at any seed (zero variance: no test is made), and why,
    as the study config explains it (`identical_because`)."""
    same = [d for d in diffs if d["metric"] in metrics and d["n"] >= 2 and d["same"] == d["n"]]
    if not same:
        return []
    pairs: dict[str, list[str]] = {}
    for d in same:
        pairs.setdefault(d["config"], []).append(f"`{d['metric']}` ({d['split']})")
    listed = "; ".join(f"{config}: {', '.join(names)}" for config, names in pairs.items())
    return ["", f"Identical to the baseline at every seed, so not tested and not a finding: {listed}."
            + (f" {because.strip()}" if because else "")]


def _interval(c: dict) -> str:
    return "-" if c["ci"] is None else f"{_signed(c['ci'][0])} to {_signed(c['ci'][1])}"


def metric_key(metric: str) -> str:
    """The metrics.json key of a per-item study metric: recall -> synthetic/caption_recall,
    gen_exact -> synthetic/gen_exact."""
    return f"synthetic/{metric}" if metric.startswith("gen_") else f"synthetic/caption_{metric}"


def preregistered_section(pre: dict, spec: dict, summary: list[dict]) -> list[str]:
    """The plan's comparisons: effect, 95% bootstrap interval, permutation p (Holm for the primary),
    a table per primary metric."""
    index = {(r["config"], r["split"], r["metric"]): r for r in summary}
    metric, split, baseline = pre["metric"], pre["split"], pre["baseline"]
    metrics = primary_metrics(metric, pre["primary"])

    def level(arm: str, m: str) -> str:
        r = index.get((arm, split, metric_key(m)))
        return "-" if r is None or r["mean"] is None else _f(r["mean"])

    named = f"`{metric}`" if len(metrics) == 1 else ", ".join(f"`{m}`" for m in metrics)
    against = (f"each arm against {baseline}" if all(c.get("against", baseline) == baseline for c in pre["primary"])
               else f"each arm against {baseline} unless the table names another")
    out = ["## Pre-registered comparisons", "",
           f"Primary metric{'s' if len(metrics) > 1 else ''}: {named} on {split} ([plan](plan.md)); "
           f"{against}, seed by seed "
           f"on the same items. Effect: mean difference; 95% interval: bootstrap over seeds, then items "
           f"(10,000 resamples); p: sign-flip permutation over seeds x items (10,000), Holm-adjusted over "
           f"the {len(pre['primary'])} primary comparisons. Per-item data: items.csv beside this report.", ""]
    for m in metrics:
        out += [f"| arm | {m} | effect vs {baseline} | 95% interval | p | p (Holm) | per-seed effects |",
                "|---|---:|---:|---|---:|---:|---|"]
        out.append(f"| {baseline} | {level(baseline, m)} | | | | | |")
        for c in (c for c in pre["primary"] if c["metric"] == m):
            flag = (" **" + (" †" if c["ci"][0] <= 0.0 <= c["ci"][1] else "")) if c.get("rejected") else ""
            other = c.get("against", baseline)
            name = c["arm"] if other == baseline else f"{c['arm']} vs {other} ({level(other, m)})"
            out.append(f"| {name} | {level(c['arm'], m)} | {_signed(c['effect'])}{flag} | {_interval(c)} | "
                       f"{_p(c['p'])} | {_p(c.get('p_holm'))} | {', '.join(_signed(x) for x in c['seed_effects'])} |")
        outside = [(c, "control") for c in pre["controls"] if m == metric]  # the controls: the primary metric
        outside += [(c, "ceiling") for c in pre.get("ceilings", []) if c["metric"] == m]
        for c, role in outside:
            out.append(f"| {c['arm']} ({role}) | {level(c['arm'], m)} | {_signed(c['effect'])} | {_interval(c)} | "
                       f"{_p(c['p'])} | | {', '.join(_signed(x) for x in c['seed_effects'])} |")
        if m != metrics[-1]:
            out.append("")
    outside = "Controls and ceilings are" if pre.get("ceilings") else "Controls are"
    legend = f"`**`: rejected at family-wise {FAMILY_ALPHA:g} (Holm). {outside} not part of the family."
    if any(c.get("rejected") and c["ci"][0] <= 0.0 <= c["ci"][1] for c in pre["primary"]):
        legend += (" `†`: rejected by the permutation test, which treats items as the unit, while the 95% "
                   "interval, which also resamples seeds, holds 0: the effect is not consistent across seeds.")
    out += ["", legend, ""]
    if pre["secondary"]:
        out += ["Secondary metrics (not corrected):", "",
                "| arm | metric | effect | 95% interval | p |", "|---|---|---:|---|---:|"]
        out += [f"| {c['arm']} | `{c['metric']}` | {_signed(c['effect'])} | {_interval(c)} | {_p(c['p'])} |"
                for c in pre["secondary"]]
        out.append("")
    if pre.get("exploratory"):
        out += ["Exploratory, added after the plan (not part of it; the study config says why):", "",
                "| arm | against | metric | effect | 95% interval | p |", "|---|---|---|---:|---|---:|"]
        out += [f"| {c['arm']} | {c['against']} | `{c['metric']}` | {_signed(c['effect'])} | {_interval(c)} | "
                f"{_p(c['p'])} |" for c in pre["exploratory"]]
        out.append("")
    return out


def mechanism_section(mechanism: dict, configs: list[str]) -> list[str]:
    """What the training logged about how each term works, per config: mean over seeds (and their
    spread) of each run's mean over its logged steps."""
    keys = sorted({k for values in mechanism.values() for k in values})
    out = ["## Mechanism logs (training)", "",
           "Per run, the mean over the steps that logged it; here the mean ± std over seeds (n). "
           "`grad_norm/<model>/<term>`: the gradient norm the weighted term sends into the model's adapters; "
           "`train/unpaired/soft_entropy`: the soft caption's entropy per token (nats); "
           "`train/unpaired/ranked_not_beam`: the share of unpaired images whose chosen caption is not the "
           "beam caption.", "",
           "| value | " + " | ".join(c for c in configs if c in mechanism) + " |",
           "|---|" + "---:|" * sum(c in mechanism for c in configs)]
    for key in keys:
        cells = []
        for c in (c for c in configs if c in mechanism):
            d = mechanism[c].get(key)
            cells.append("-" if d is None or d["mean"] is None else
                         _f(d["mean"]) + (f" ± {_f(d['std'])}" if d["std"] is not None else "") + f" ({d['n']})")
        out.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return out


def _elapsed(runs: dict) -> str:
    """', finished <date>, 85 min elapsed' where the runner recorded it (runs.json)."""
    if "elapsed_s" not in runs:
        return ""
    return f", finished {runs['finished']}, {runs['elapsed_s'] / 60:.0f} min elapsed"


def markdown(*, cfg, command: str, summary: list[dict], diffs: list[dict], wall: dict, oracle: list[dict],
             metrics: list[str], left_out: list[str], meta: dict, figure: str, data_dir: str,
             preregistered: dict | None = None, spec: dict | None = None, mechanism: dict | None = None) -> str:
    configs = list(cfg.configs)
    splits = list(cfg.eval.splits)
    baseline = str(cfg.baseline)
    index = {(r["config"], r["split"], r["metric"]): r for r in summary}
    dindex = {(d["config"], d["split"], d["metric"]): d for d in diffs}
    out = [f"# {cfg.get('title', 'Does the cycle help? The study')}", "",
           f"Generated by `{command}` at commit `{meta['commit']}` on {meta['date']}."
           + (f" The runs: `{meta['runs']['command']}` at commit `{meta['runs']['commit']}`, started "
              f"{meta['runs']['started']}{_elapsed(meta['runs'])}." if meta.get("runs") else ""), "",
           f"Setting: {cfg.get('setting', '').strip()}", "",
           f"Machine: {meta['cpu']}, {meta['cpu_count']} CPUs; Python {meta['python']}; "
           + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
           f"Seeds: {', '.join(str(s) for s in cfg.seeds)}. Data: [{data_dir}/results.csv]({data_dir}/results.csv) "
           f"(one row per config, seed, split, metric), [{data_dir}/summary.json]({data_dir}/summary.json).", "",
           *(preregistered_section(preregistered, spec, summary) if preregistered else []),
           "## Every headline metric, seed by seed (exploratory)" if preregistered else "## Answer", "",
           *answer(diffs, splits, metrics, baseline), "",
           "## What it shows", ""]
    for split in splits:
        out += [f"- {shows(m, split, diffs, baseline)}" for m in metrics]
    tested = sum(1 for d in diffs if d["metric"] in metrics and d["p"] is not None)
    out += ["", f"How: {method(cfg)} This report makes {tested} such tests: at p < {ALPHA:g} "
            f"about {tested * ALPHA:.1f} would come out significant by chance alone, so a lone significant "
            "difference is a lead to rerun with more seeds, not a finding."]
    out += identical_note(diffs, metrics, cfg.get("identical_because"))
    out += ["", f"![headline metrics]({figure})", ""]
    for split in splits:
        out += [f"## {split}: mean ± std over seeds (n)", "",
                "| config | " + " | ".join(f"`{m}`" for m in metrics) + " |",
                "|---|" + "---:|" * len(metrics)]
        for c in [BASE, *configs]:
            cells = []
            for m in metrics:
                r = index.get((c, split, m))
                if r is None or r["mean"] is None:
                    cells.append("-")
                else:
                    cells.append(_f(r["mean"]) + (f" ± {_f(r['std'])}" if r["std"] is not None else "")
                                 + f" ({r['n']})")
            out.append(f"| {c} | " + " | ".join(cells) + " |")
        out += ["", f"### {split}: difference from {baseline}, paired by seed", "",
                "| config | metric | mean diff | std | 95% CI | p | seeds |", "|---|---|---:|---:|---|---:|---|"]
        for c in configs:
            if c == baseline:
                continue
            for m in metrics:
                d = dindex.get((c, split, m))
                if d is None or d["n"] == 0:
                    continue
                star = " *" if d["significant"] else ""
                ci = "-" if d["ci_low"] is None else f"{_signed(d['ci_low'])} to {_signed(d['ci_high'])}"
                out.append(f"| {c} | `{m}` | {_signed(d['mean'])}{star} | {_f(d['std'])} | {ci} | {_p(d['p'])} | "
                           f"{sign_count(d)} |")
        out += ["", f"`*`: p < {ALPHA}.", ""]
    out += ["## Wall time per run (mean over seeds)", "", "| config | train (s) | one evaluation (s) |",
            "|---|---:|---:|"]
    for c in [*configs, BASE]:
        w = wall.get(c, {})
        out.append(f"| {c} | {_f(w.get('train'), 0)} | {_f(w.get('eval'), 0)} |")
    if mechanism:
        out += ["", *mechanism_section(mechanism, configs)]
    out += ["", "## The pixel oracle on rendered ground truth", "",
            "Accuracy of `recon_ft.data.oracle.scene_match` on the benchmark's own renderings (the answer is "
            "known), drawn at the size read or drawn larger and resized as the generator's training "
            "images are. A `synthetic/gen_*` metric is reported above only if its attribute reaches "
            "0.95 in every view at the generator's resolution.", "",
            "| split | drawn at | read at | n | " + " | ".join(oracle[0]["accuracy"]) + " |" if oracle else "",
            "|---|---:|---:|---:|" + "---:|" * (len(oracle[0]["accuracy"]) if oracle else 0)]
    for o in oracle:
        out.append(f"| {o['split']} | {o.get('render_size', o['image_size'])} | {o['image_size']} | {o['n']} | "
                   + " | ".join(_f(v) for v in o["accuracy"].values()) + " |")
    if left_out:
        out += ["", "Not reported (the oracle does not read their attribute reliably at this resolution): "
                + ", ".join(f"`{m}`" for m in left_out) + "."]
    return "\n".join(out) + "\n"


def oracle_gate(oracle: list[dict], image_size: int) -> dict | None:
    """The attributes validated in every view read at `image_size` (None: no validation given)."""
    views = [o for o in oracle or [] if o["image_size"] == image_size]
    if not views:
        return None
    return {"validated": [a for a in views[0]["validated"] if all(a in o["validated"] for o in views)]}


def write_report(*, cfg, command: str, rows, summary, diffs, wall, oracle: list[dict], docs: Path,
                 meta: dict | None = None, items: list[dict] | None = None, spec: dict | None = None,
                 preregistered: dict | None = None, mechanism: dict | None = None) -> dict:
    """docs (the markdown) and, beside it in <stem>/, results.csv, summary.json and headline.png
    (and with a pre-registered primary block, items.csv)."""
    meta = meta or machine()
    runs = Path(cfg.out_dir) / "runs.json"
    if "runs" not in meta and runs.is_file():
        meta = {**meta, "runs": json.loads(runs.read_text())}
    docs = Path(docs)
    data = docs.parent / docs.stem
    gate = oracle_gate(oracle, int(cfg.oracle.image_size))
    metrics, left_out = headline_metrics(list(cfg.headline), gate)
    write_csv(rows, data / "results.csv")
    if items is not None and spec is not None:
        write_items(items, item_metrics(spec), data / "items.csv")
    configs = [BASE, *cfg.configs]
    plot(summary, configs, list(cfg.eval.splits), metrics, data / "headline.png")
    payload = {"command": command, "method": method(cfg), "meta": meta,
               "headline": metrics, "left_out": left_out, "summary": summary, "differences": diffs,
               "wall_seconds": wall, "oracle": oracle, "preregistered": preregistered}
    if mechanism:
        payload["mechanism"] = mechanism
    (data / "summary.json").write_text(json.dumps(payload, indent=1))
    text = markdown(cfg=cfg, command=command, summary=summary, diffs=diffs, wall=wall, oracle=oracle,
                    metrics=metrics, left_out=left_out, meta=meta, figure=f"{data.name}/headline.png",
                    data_dir=data.name, preregistered=preregistered, spec=spec, mechanism=mechanism)
    docs.write_text(text)
    return payload
