"""The end of a sweep (`python train.py -m ...`): one table of each run's overrides and final metrics.

Hydra runs each job of a multirun in `multirun/train/<time>/<n>/`, with the job's overrides in
`.hydra/overrides.yaml` and, with the csv logger, its metrics in `logs/metrics.csv`. `SweepSummary`
(a Hydra callback, conf/train.yaml's hydra.callbacks) reads them when the sweep ends and writes
`summary.csv` (full precision) and `summary.md` into the sweep directory, and prints the table.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

NOT_METRICS = ("epoch", "step")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job directories (those holding .hydra/overrides.yaml), in job-number order."""
    dirs = [p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")]
    return sorted(dirs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_overrides(job_dir: Path) -> dict[str, str]:
    """.hydra/overrides.yaml (["key=value", ...]) -> {key: value}, in the command line's order."""
    items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in items)


def final_metrics(csv_path: Path) -> dict[str, float]:
    """The last logged value of every metric column of a Lightning CSVLogger file (its rows are
    sparse: each holds the values logged at one step)."""
    last: dict[str, float] = {}
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in NOT_METRICS and value not in ("", None):
                    last[key] = float(value)
    return last


def _selected(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Metric names matching any pattern, in pattern order, then sorted."""
    out: list[str] = []
    for pattern in patterns:
        out += sorted(n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in out)
    return out


def summarize(sweep_dir: Path, metrics: Sequence[str] = ("val/*", "train/loss")
              ) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows): per job its number, each override key's value, the final value of the
    metrics matching `metrics` (fnmatch patterns), and a note where it left no metrics."""
    jobs = []
    for job_dir in job_dirs(sweep_dir):
        csv_path = job_dir / "logs" / "metrics.csv"
        values = final_metrics(csv_path) if csv_path.is_file() else None
        jobs.append((job_dir.name, read_overrides(job_dir), values))
    keys = list(dict.fromkeys(k for _, overrides, _ in jobs for k in overrides))
    names = _selected(sorted({n for _, _, v in jobs if v for n in v}), metrics)
    columns = ["job", *keys, *names, "note"]
    rows = []
    for name, overrides, values in jobs:
        note = "" if values is not None else "no logs/metrics.csv (the job failed or its logger is not csv)"
        rows.append([name, *(overrides.get(k, "") for k in keys), *((values or {}).get(n) for n in names), note])
    if not any(row[-1] for row in rows):  # no note to show
        columns, rows = columns[:-1], [row[:-1] for row in rows]
    return columns, rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, metrics: Sequence[str] = ("val/*", "train/loss")) -> str:
    """summary.csv and summary.md in `sweep_dir`; returns the markdown table."""
    sweep_dir = Path(sweep_dir)
    columns, rows = summarize(sweep_dir, metrics)
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    table = markdown(columns, rows)
    (sweep_dir / "summary.md").write_text(table)
    return table


class SweepSummary(Callback):
    """Hydra callback: `write_summary` of the sweep directory when a multirun ends, and print it.

    metrics: fnmatch patterns of the metrics.csv columns to show (default: every val/* and the
    final train/loss)."""

    def __init__(self, metrics: Sequence[str] = ("val/*", "train/loss")):
        self.metrics = list(metrics)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = write_summary(sweep_dir, self.metrics)
        print(f"\nsweep summary ({sweep_dir}/summary.csv, summary.md):\n{table}", flush=True)
