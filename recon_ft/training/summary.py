"""What a finished training run tells its user: where its outputs are, how the final model compares
with the base models it started from, and what to run next (printed, and saved as summary.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path

# Shown first, in this order, when present; then every other val/* value.
HEADLINE = ("val/loss", "val/loss_cap", "val/loss_gen", "val/loss_i2t2i", "val/loss_t2i2t", "val/caption_exact",
            "val/CIDEr", "val/BLEU-4")


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def summarize_run(run_dir: Path, base: dict[str, float], final: dict[str, float], best: dict | None = None) -> str:
    """A short text table of val metrics (base vs final) and the final training losses."""
    names = [n for n in HEADLINE if n in final or n in base]
    names += sorted(n for n in set(final) | set(base) if n.startswith("val/") and n not in names)
    width = max([len(n) for n in names] + [10])
    lines = [f"run finished: {run_dir}", ""]
    if names:
        lines.append(f"  {'':<{width}}  {'base':>10}  {'final':>10}")
        lines += [f"  {n:<{width}}  {_fmt(base.get(n)):>10}  {_fmt(final.get(n)):>10}" for n in names]
    train = sorted(n for n in final if n.startswith("train/loss"))
    if train:
        lines.append("  last training step: " + ", ".join(f"{n.split('/', 1)[1]} {_fmt(final[n])}" for n in train))
    if best and best.get("path"):
        lines.append(f"  best checkpoint: {best['path']} ({best['monitor']} = {_fmt(best['score'])})")
    lines += ["", f"  adapters: {run_dir / 'adapters'}    logs: {run_dir / 'logs' / 'metrics.csv'}",
              f"  next: python eval.py run_dir={run_dir}"]
    return "\n".join(lines)


def write_summary(run_dir: Path, base: dict[str, float], final: dict[str, float], best: dict | None = None) -> str:
    text = summarize_run(run_dir, base, final, best)
    (run_dir / "summary.json").write_text(json.dumps({"base": base, "final": final, "best": best}, indent=1))
    return text
