"""What an evaluation writes: metrics.json, samples.jsonl, grids/*.png, report.html, and logger output.

Grids: one PNG per item (the first `grid_items` items). Row 1, I2T2I: the source image, then each
candidate caption's reconstruction with the caption and its CLIP-I under it. Row 2, T2I2T: the
source caption, then each image generated from it with the caption recovered from that image and
its CLIP score under it. The selected candidates are framed: green the best, blue the random one.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from recon_ft.eval.identity import identity, sbert_identity

log = logging.getLogger(__name__)

TILE = 160  # px: images are upscaled (nearest) to at least this, so 32 px tiny outputs stay readable
TEXT_LINES = 5
BACKGROUND = (255, 255, 255)
FRAMES = {"best": (30, 160, 50), "random": (30, 70, 220)}


SELECTIONS = ("first", "best", "random")
SET_METRICS = ("FID", "IS")  # one number per image set (not a mean over items): no "mean" in tables
# The first screen of report.html and the console summary: (label, metrics.json key).
HEADLINE = [("CIDEr", "caption/CIDEr"), ("BLEU-4", "caption/BLEU-4"), ("METEOR", "caption/METEOR"),
            ("SPICE", "caption/SPICE"), ("caption exact", "synthetic/caption_exact"), ("FID", "gen/FID"),
            ("IS", "gen/IS"), ("CLIP score", "gen/clip_score"), ("CLIP-I", "gen/clip_i")]
# Per selection, the few columns the summary shows: (label, key with {how}).
SUMMARY_SELECTIONS = {
    "i2t2i": [("CLIP-I", "i2t2i/clip_i_{how}"), ("CIDEr", "i2t2i/{how}/CIDEr")],
    "t2i2t": [("SBERT", "t2i2t/sbert_{how}"), ("CLIP text", "t2i2t/clip_text_{how}"),
              ("CLIP score", "t2i2t/clip_score_{how}"), ("FID", "t2i2t/FID_{how}"), ("IS", "t2i2t/IS_{how}")],
}
SUMMARY_GRIDS = 2


def extractor_info(clip, fid_feature, is_feature, fid_real: str, sbert: bool = False) -> dict[str, Any]:
    """metrics.json's record of what produced the model-based numbers (extractors/*): per extractor
    used, its description, key and weights' sha256 (recon_ft.eval.identity); `sbert`: SBERT scored
    the T2I2T text similarity."""
    used = {"clip": clip, "fid": fid_feature, "inception_score": is_feature}
    info: dict[str, Any] = {}
    for name, m in used.items():
        if m is not None:
            info[f"extractors/{name}"] = getattr(m, "description", type(m).__name__)
            ident = identity(m)
            info[f"extractors/{name}_key"], info[f"extractors/{name}_sha256"] = ident["key"], ident["sha256"]
    if sbert and (ident := sbert_identity()) is not None:
        info.update({"extractors/sbert": ident["description"], "extractors/sbert_key": ident["key"],
                     "extractors/sbert_sha256": ident["sha256"]})
    info["extractors/random"] = any(getattr(m, "random", False) for m in used.values() if m is not None)
    info["extractors/fid_real"] = fid_real
    return info


def random_warning(metrics: dict[str, Any]) -> str | None:
    """The banner over numbers from random feature extractors (metrics=tiny), else None."""
    if not metrics.get("extractors/random"):
        return None
    names = "; ".join(dict.fromkeys(str(metrics[k]) for k in ("extractors/clip", "extractors/fid",
                                                             "extractors/inception_score") if k in metrics))
    return (f"RANDOM feature extractors ({names}): CLIP score, CLIP-I, FID and IS here mean nothing, however "
            "good they look. Use metrics=real for numbers comparable with the literature.")


def console_summary(metrics: dict[str, Any], out_dir: Path, split: str | None = None) -> str:
    """A few lines for the terminal: the split scored, the warning, the headline numbers, the
    selections."""
    lines = [f"evaluation: {out_dir}"]
    if split:
        lines.append(f"split: {split}")
    warning = random_warning(metrics)
    if warning:
        lines.append("WARNING: " + warning)
    lines.append("  ".join(f"{label} {_text(metrics.get(key))}" for label, key in HEADLINE if key in metrics))
    for analysis, columns in SUMMARY_SELECTIONS.items():
        for label, key in columns:
            if key.format(how="first") in metrics:
                values = " / ".join(_text(metrics.get(key.format(how=how))) for how in SELECTIONS)
                lines.append(f"{analysis} {label} (first / best / random): {values}")
    return "\n".join(lines)


def _text(v) -> str:
    return "skipped" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_metrics(metrics: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def write_samples(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    path = out_dir / "samples.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------ grids


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _tile(image: Image.Image | None, text: str, size: int, frame=None) -> Image.Image:
    font = _font()
    line_h = 14
    tile = Image.new("RGB", (size, size + TEXT_LINES * line_h + 6), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    if image is not None:
        tile.paste(image.convert("RGB").resize((size, size), Image.NEAREST), (0, 0))
        text_top = size + 3
    else:  # a text-only tile (the source caption)
        text_top = 4
    width = max(8, size // 7)
    lines = textwrap.wrap(text, width=width)
    max_lines = TEXT_LINES if image is not None else (size + TEXT_LINES * line_h) // line_h
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][: width - 3] + "..."]
    for n, line in enumerate(lines):
        draw.text((3, text_top + n * line_h), line, fill=(0, 0, 0), font=font)
    if frame is not None:
        draw.rectangle([0, 0, size - 1, size - 1], outline=frame, width=3)
    return tile


def _open(out_dir: Path, rel: str) -> Image.Image:
    with Image.open(out_dir / rel) as im:
        return im.convert("RGB")


def grid_image(row: dict[str, Any], out_dir: Path, size: int = TILE) -> Image.Image:
    """The item's grid (see the module docstring) as one PIL image."""
    source = _open(out_dir, row["source_image"])
    size = max(size, source.width)
    lines = []
    first = [_tile(source, f"source #{row['index']} (id {row['id']})", size)]
    if row.get("i2t2i"):
        sel = row.get("i2t2i_selected", {})
        lines.append(first + [
            _tile(_open(out_dir, c["image"]), f"[{j}{' beam' if c['kind'] == 'beam' else ''}] CLIP-I "
                  f"{c['clip_i']:.3f}: {c['caption']}", size, _frame(sel, j))
            for j, c in enumerate(row["i2t2i"])])
    else:
        lines.append(first + [_tile(_open(out_dir, row["gen"]["image"]), f"caption: {row['caption']}", size)])
    if row.get("t2i2t"):
        sel = row.get("t2i2t_selected", {})
        lines.append([_tile(None, f"source caption: {row['gen']['prompt']}", size)] + [
            _tile(_open(out_dir, c["image"]), f"[{j}] CLIPScore {c['clip_score']:.1f}: {c['caption']}", size,
                  _frame(sel, j))
            for j, c in enumerate(row["t2i2t"])])
    width = max(sum(t.width for t in line) for line in lines) + 4 * max(len(line) for line in lines)
    height = sum(max(t.height for t in line) for line in lines) + 4 * len(lines)
    canvas = Image.new("RGB", (width, height), (200, 200, 200))
    y = 0
    for line in lines:
        x = 0
        for tile in line:
            canvas.paste(tile, (x, y))
            x += tile.width + 4
        y += max(t.height for t in line) + 4
    return canvas


def _frame(selected: dict[str, int], j: int):
    for how in ("best", "random"):
        if selected.get(how) == j:
            return FRAMES[how]
    return None


def write_grids(rows: list[dict[str, Any]], out_dir: Path, n: int) -> list[Path]:
    grid_dir = out_dir / "grids"
    grid_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in tqdm(rows[:n], desc="grids", leave=False):
        path = grid_dir / f"{row['index']:06d}.png"
        grid_image(row, out_dir).save(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------ tables


def selection_tables(metrics: dict[str, Any]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """{"i2t2i": (columns, rows), "t2i2t": ...}: one row per selection (first / best / random)."""
    out = {}
    for analysis in ("i2t2i", "t2i2t"):
        columns: list[str] = []
        for key in metrics:
            parts = key.split("/")
            if parts[0] != analysis or len(parts) < 2:
                continue
            if len(parts) == 3 and parts[1] in ("first", "best", "random"):
                name = parts[2]
            elif len(parts) == 2 and parts[1].rsplit("_", 1)[-1] in ("first", "best", "random"):
                base = parts[1].rsplit("_", 1)[0]
                name = base if base in SET_METRICS else "mean " + base
            else:
                continue
            if name not in columns:
                columns.append(name)
        if not columns:
            continue
        columns.sort(key=lambda c: (c in SET_METRICS, not c.startswith("mean"), c))
        rows = []
        for how in ("first", "best", "random"):
            row: list[Any] = [how]
            for c in columns:
                if c.startswith("mean ") or c in SET_METRICS:
                    key = f"{analysis}/{c.removeprefix('mean ')}_{how}"
                else:
                    key = f"{analysis}/{how}/{c}"
                row.append(metrics.get(key))
            rows.append(row)
        out[analysis] = (["selection", *columns], rows)
    return out


def domain_table(metrics: dict[str, Any]) -> tuple[list[str], list[list[Any]]] | None:
    domains = [d for d in ("in-domain", "near-domain", "out-domain", "overall")
               if any(k.startswith(f"caption/{d}/") for k in metrics)]
    if not domains:
        return None
    names = sorted({k.split("/")[2] for k in metrics if k.count("/") == 2 and k.split("/")[1] in domains
                    and k.startswith("caption/")})
    return ["domain", *names], [[d, *(metrics.get(f"caption/{d}/{n}") for n in names)] for d in domains]


def _fmt(v) -> str:
    if v is None:
        return "skipped"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def html_table(columns, rows) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def html_img(path: Path, css: str = "") -> str:
    return f'<img src="data:image/png;base64,{_png_base64(path)}" alt="{path.name}"{css}>'


def summary_html(metrics: dict[str, Any], grids: list[Path]) -> str:
    """The first screen: the random-extractor warning, the headline numbers, the selections of both
    analyses side by side, and the first SUMMARY_GRIDS grids."""
    parts = ["<h2>Summary</h2>"]
    warning = random_warning(metrics)
    if warning:
        parts.append(f'<div class="warning">{html.escape(warning)}</div>')
    head = [(label, key) for label, key in HEADLINE if key in metrics]
    parts.append(html_table([label for label, _ in head], [[metrics[key] for _, key in head]]))
    titles = {"i2t2i": "I2T2I: caption selections", "t2i2t": "T2I2T: image selections"}
    tables = []
    for analysis, columns in SUMMARY_SELECTIONS.items():
        columns = [(label, key) for label, key in columns if key.format(how="first") in metrics]
        if columns:
            rows = [[how, *(metrics.get(key.format(how=how)) for _, key in columns)] for how in SELECTIONS]
            tables.append(f"<div><h3>{titles[analysis]}</h3>"
                          + html_table(["selection", *(label for label, _ in columns)], rows) + "</div>")
    if tables:
        parts.append(f'<div class="row">{"".join(tables)}</div>')
    if grids:
        parts.append('<div class="row">' + "".join(html_img(p, ' class="half"') for p in grids[:SUMMARY_GRIDS])
                     + "</div><p class=\"small\">" + GRID_LEGEND + "</p>")
    return "".join(parts)


GRID_LEGEND = ("I2T2I row: source, then each candidate caption's reconstruction (CLIP-I to the source). T2I2T row: "
               "the source caption, then each generated image with the caption recovered from it. Frames: green = "
               "best, blue = random selection.")


def write_html(metrics: dict[str, Any], out_dir: Path, grids: list[Path], info: dict[str, Any],
               notes: list[str]) -> Path:
    """report.html: one self-contained page (images inline as base64). It opens with one screen of
    summary (summary_html); run info, notes, every table and the remaining grids follow."""
    sections = [f"<h1>recon_ft evaluation</h1><p>{html.escape(str(out_dir))}</p>", summary_html(metrics, grids)]
    sections.append("<h2>Run</h2>" + html_table(["", "value"], [[k, json.dumps(v)] for k, v in info.items()]))
    if notes:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    groups: dict[str, list[list[Any]]] = {}
    for key, value in sorted(metrics.items()):
        groups.setdefault(key.split("/")[0], []).append([key, value])
    titles = {"caption": "Captioning", "gen": "Generation", "i2t2i": "I2T2I (image -> text -> image)",
              "t2i2t": "T2I2T (text -> image -> text)", "synthetic": "Synthetic benchmark (exact scores)",
              "data": "Data", "extractors": "Feature extractors"}
    domains = domain_table(metrics)
    selections = selection_tables(metrics)
    order = ["caption", "synthetic", "gen", "i2t2i", "t2i2t", "data", "extractors"]
    for group, rows in sorted(groups.items(), key=lambda g: order.index(g[0]) if g[0] in order else len(order)):
        sections.append(f"<h2>{html.escape(titles.get(group, group))}</h2>")
        if group == "caption" and domains:
            sections.append("<h3>By NoCaps domain</h3>" + html_table(*domains))
        if group in selections:
            sections.append("<h3>Selections</h3>" + html_table(*selections[group]))
        sections.append(html_table(["metric", "value"], rows))
    if grids[SUMMARY_GRIDS:]:
        sections.append(f"<h2>More samples</h2><p>{GRID_LEGEND}</p>")
        sections += [f"<p>{html_img(p)}</p>" for p in grids[SUMMARY_GRIDS:]]
    path = out_dir / "report.html"
    path.write_text(html_page("recon_ft evaluation", sections), encoding="utf-8")
    return path


STYLE = ("body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
         "img{max-width:100%}.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}"
         "img.half{max-width:48%}.small{font-size:85%;color:#444}h3{margin:.4em 0}"
         ".warning{background:#fde2e1;border:2px solid #c0392b;color:#7b241c;padding:.6em 1em;"
         "font-weight:bold;margin:.5em 0}")


def html_page(title: str, sections: list[str]) -> str:
    """A self-contained page of report.html's style (also the pairing study's report)."""
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}" \
           f"</style></head><body>{''.join(sections)}</body></html>\n"


# ------------------------------------------------------------------------------------ loggers


def log_to_loggers(loggers: list, metrics: dict[str, Any], rows: list[dict[str, Any]], grids: list[Path]) -> None:
    """Numbers to every logger; with wandb also the selection / domain / sample tables and the grids."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for logger in loggers:
        logger.log_metrics(numbers, step=0)
        if hasattr(logger, "log_table") and hasattr(logger, "log_image"):  # WandbLogger
            for name, (columns, data) in selection_tables(metrics).items():
                logger.log_table(f"{name}/selections", columns=columns, data=data)
            domains = domain_table(metrics)
            if domains:
                logger.log_table("caption/by_domain", columns=domains[0], data=domains[1])
            logger.log_table("samples", columns=["index", "id", "caption", "caption_cider", "prompt", "clip_score"],
                             data=[[r["index"], str(r["id"]), r["caption"], r.get("caption_cider"),
                                    r["gen"]["prompt"], r["gen"]["clip_score"]] for r in rows])
            if grids:
                images = []
                for p in grids:
                    with Image.open(p) as im:
                        images.append(im.copy())
                logger.log_image("grids", images=images, caption=[p.stem for p in grids])
        logger.save()
        if hasattr(logger, "finalize"):
            logger.finalize("success")

