"""The pairing study's report: <docs>/pairs.md (readable on GitHub) with <docs>/pairs/results.csv
(one row per pair), a heatmap PNG per headline metric and report.html (the same page in eval's
report.html format: one self-contained file, images inline)."""

from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path

from recon_ft.experiments.pairs.collect import COVERAGE, CSV_METRICS, HEADLINE, alone, extractors, matrix
from recon_ft.experiments.pairs.intervals import cell_intervals, read_items

ALONE_NOTE = ("A matrix cell mixes the two models' own competence with how well they understand each other; "
              "these are each model's own scores on the same items (captions of the source images; images "
              "of the source captions), the mean over the runs of its pairs.")


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["captioner", "generator", "status", "seconds", *(f"bridge/{k}" for k in COVERAGE), *CSV_METRICS]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            m, cov = r["metrics"] or {}, r["coverage"] or {}
            writer.writerow([r["captioner"], r["generator"], "done" if r["metrics"] else "missing",
                             "" if r["seconds"] is None else round(r["seconds"], 1),
                             *(cov.get(k, "") for k in COVERAGE),
                             *("" if m.get(k) is None else m[k] for k in CSV_METRICS)])


def heatmap(values: list[list], captioners: list[str], generators: list[str], title: str, path: Path) -> None:
    """captioners (rows) x generators (columns), each cell annotated; grey where a pair has no value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(generators), 1.2 + 0.6 * len(captioners)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#cccccc")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(generators)), generators, rotation=20, ha="right")
    ax.set_yticks(range(len(captioners)), captioners)
    ax.set_xlabel("generator")
    ax.set_ylabel("captioner")
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(len(captioners)):
        for j in range(len(generators)):
            v = data[i, j]
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.3f}", ha="center", va="center",
                    color="black" if math.isnan(v) or v > middle else "white", fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown_matrix(values: list[list], captioners: list[str], generators: list[str],
                    intervals: dict | None = None) -> str:
    """The matrix; with `intervals` (intervals.cell_intervals) each cell also gets its 95% interval,
    the best in bold and `=` where the items cannot tell a cell from the best."""
    lines = ["| captioner \\ generator | " + " | ".join(generators) + " |", "|---|" + "---:|" * len(generators)]
    lines += [f"| {c} | " + " | ".join(cell_text(v, (intervals or {}).get((c, g)), "**")
                                       for g, v in zip(generators, row)) + " |"
              for c, row in zip(captioners, values)]
    return "\n".join(lines)


def cell_text(value, interval: dict | None, best_mark: str) -> str:
    """"0.913 [0.901, 0.925]", the best wrapped in `best_mark`, `=` after a cell tied with it."""
    if value is None or interval is None:
        return _f(value)
    text = f"{best_mark}{_f(value)}{best_mark}" if interval["best"] else _f(value) + (" =" if interval["tied"] else "")
    return f"{text} [{_f(interval['ci'][0])}, {_f(interval['ci'][1])}]"


def headline_intervals(rows: list[dict], keys: tuple[str, ...]) -> dict:
    return cell_intervals({(r["captioner"], r["generator"]): read_items(Path(r["dir"]), keys)
                           for r in rows if r["metrics"]})


INTERVALS_NOTE = ("Each cell: the value, then the 95% bootstrap interval of the mean over the items; **bold**: the "
                  "matrix's best; `=`: the items cannot tell the cell from the best (every pair scores the same "
                  "items, so the interval of the mean paired difference from the best holds 0). "
                  "The CIDEr interval is over per-caption CIDEr.")


def coverage_rows(rows: list[dict]) -> list[list]:
    """[captioner, generator, kinds, |V_C|, matched, fallback, unmapped] per pair (shares as fractions)."""
    out = []
    for r in rows:
        cov = r["coverage"]
        if cov is None:
            out.append([r["captioner"], r["generator"], "-", None, None, None, None])
        else:
            out.append([r["captioner"], r["generator"], f"{cov['captioner_style']} -> {cov['generator_style']}",
                        cov["src_size"], cov["matched"], cov["fallback"], cov["unmapped"]])
    return out


def markdown(*, command: str, overrides: list[str], machine: dict, rows: list[dict], captioners: list[str],
             generators: list[str], intervals: dict[str, dict], out_dir: Path) -> str:
    done = sum(r["metrics"] is not None for r in rows)
    lines = [
        "# Which models understand each other: the pairing study",
        "",
        f"Every captioner x generator pair evaluated by `eval.py` (both reconstruction analyses): {done} of "
        f"{len(rows)} pairs finished.",
        "",
        f"- Command: `{command}`",
        f"- Eval overrides (every pair): `{' '.join(overrides)}`",
        f"- Commit: `{machine.get('commit')}`; date {machine.get('date')}",
        f"- Machine: {machine.get('cpu')} ({machine.get('cpu_count')} CPUs)"
        + (f", {machine['gpu']}" if machine.get("gpu") else "") + f"; Python {machine.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()),
        f"- Runs: `{out_dir}/runs/<captioner>__<generator>/` (each with eval's report.html); "
        "this report's numbers: [pairs/results.csv](pairs/results.csv), [pairs/report.html](pairs/report.html)",
        "",
        "## Headline matrices",
        "",
        "I2T2I: k captions per source image (the beam caption and k - 1 nucleus samples), one image generated from "
        "each; the best caption is the one whose image is closest to the source (CLIP-I). T2I2T: k images per "
        "source caption, one caption recovered from each; the best image is the one whose caption is closest to "
        "the source caption. Higher is better everywhere.",
    ]
    if any(intervals.values()):
        lines += ["", INTERVALS_NOTE]
    for name, label, keys in HEADLINE:
        values = matrix(rows, captioners, generators, keys)
        lines += ["", f"### {label} (`{'` or `'.join(keys)}`)", "", f"![{label}](pairs/{name}.png)", "",
                  markdown_matrix(values, captioners, generators, intervals[name])]
    lines += ["", "## Each model alone", "", ALONE_NOTE]
    for part in ("captioner", "generator"):
        keys, table = alone(rows, part)
        lines += ["", f"| {part} | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---|" + "---:|" * len(keys)]
        lines += [f"| {row[0]} | " + " | ".join(_f(v) for v in row[1:]) + " |" for row in table]
    lines += ["", "## Vocabulary bridge coverage per pair", "",
              "Share of the captioner's vocabulary that the bridge maps to a same-text token of the generator's "
              "(matched), to its pieces (fallback), or nowhere (unmapped, special tokens included).", "",
              "| captioner | generator | tokenizers | captioner vocabulary | matched | fallback | unmapped |",
              "|---|---|---|---:|---:|---:|---:|"]
    for c, g, kinds, n, matched, fallback, unmapped in coverage_rows(rows):
        lines.append(f"| {c} | {g} | {kinds} | {n if n is not None else '-'} | {_f(matched)} | {_f(fallback)} | "
                     f"{_f(unmapped)} |")
    lines += ["", "## Feature extractors", "", "From each run's metrics.json (`extractors/*`):", ""]
    for key, values in sorted(extractors(rows).items()):
        lines.append(f"- `{key}`: " + "; ".join(f"`{v}`" for v in values))
    lines += ["", "## Runs", "", "| captioner | generator | items | wall s |", "|---|---|---:|---:|"]
    for r in rows:
        items = (r["metrics"] or {}).get("data/items")
        lines.append(f"| {r['captioner']} | {r['generator']} | {_f(items, 0)} | {_f(r['seconds'], 0)} |")
    return "\n".join(lines) + "\n"


def html_report(*, command: str, overrides: list[str], machine: dict, rows: list[dict], captioners: list[str],
                generators: list[str], intervals: dict[str, dict], images: dict[str, Path]) -> str:
    """The report as one page in eval's report.html format (its tables, inline images and style)."""
    from recon_ft.eval.report import html_img, html_page, html_table

    sections = ["<h1>recon_ft pairing study</h1>",
                html_table(["", "value"], [["command", command], ["eval overrides", " ".join(overrides)],
                                            *([k, json.dumps(v)] for k, v in machine.items())])]
    sections.append("<h2>Pairs</h2>")
    for name, label, keys in HEADLINE:
        values = matrix(rows, captioners, generators, keys)
        cells = [[c, *(cell_text(v, intervals[name].get((c, g)), "*") for g, v in zip(generators, row))]
                 for c, row in zip(captioners, values)]
        sections.append(f"<h3>{html.escape(label)}</h3><div class=\"row\"><div>{html_img(images[name])}</div><div>"
                        + html_table(["captioner \\ generator", *generators], cells) + "</div></div>")
        if intervals[name]:
            sections.append(f"<p>{html.escape(INTERVALS_NOTE.replace('**bold**', '*starred*'))}</p>")
    sections.append(f"<h3>Each model alone</h3><p>{html.escape(ALONE_NOTE)}</p>")
    for part in ("captioner", "generator"):
        keys, table = alone(rows, part)
        sections.append(html_table([part, *keys], table))
    sections.append("<h3>Vocabulary bridge coverage</h3>" + html_table(
        ["captioner", "generator", "tokenizers", "captioner vocabulary", "matched", "fallback", "unmapped"],
        coverage_rows(rows)))
    sections.append("<h3>Feature extractors</h3>" + html_table(
        ["extractor", "values"], [[k, "; ".join(map(str, v))] for k, v in sorted(extractors(rows).items())]))
    sections.append("<h3>Runs</h3>" + html_table(
        ["captioner", "generator", "items", "wall s", "eval report"],
        [[r["captioner"], r["generator"], (r["metrics"] or {}).get("data/items"), r["seconds"],
          str(Path(r["dir"]) / "report.html")] for r in rows]))
    return html_page("recon_ft pairing study", sections)


def write_report(*, command: str, overrides: list[str], machine: dict, rows: list[dict], captioners: list[str],
                 generators: list[str], out_dir: Path, docs: Path) -> Path:
    """docs/pairs.md and docs/pairs/ (results.csv, <metric>.png per headline metric, report.html)."""
    folder = Path(docs) / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(rows, folder / "results.csv")
    images = {}
    for name, label, keys in HEADLINE:
        images[name] = folder / f"{name}.png"
        heatmap(matrix(rows, captioners, generators, keys), captioners, generators, label, images[name])
    # each pair's samples.jsonl read once per headline metric, for both pages
    intervals = {name: headline_intervals(rows, keys) for name, _, keys in HEADLINE}
    common = dict(command=command, overrides=overrides, machine=machine, rows=rows, captioners=captioners,
                  generators=generators, intervals=intervals)
    (folder / "report.html").write_text(html_report(**common, images=images), encoding="utf-8")
    path = Path(docs) / "pairs.md"
    path.write_text(markdown(**common, out_dir=out_dir), encoding="utf-8")
    return path
