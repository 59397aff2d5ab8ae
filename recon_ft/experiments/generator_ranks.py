"""E0: does the generator know what the captioner gets wrong? (docs/study/plan.md)

    python -m recon_ft.experiments.generator_ranks [--items 512] [--draws 16] [--out docs/study/e0]

Forward passes only, on the zoo's base models. For each item of val (seen compositions: the
captioner is mostly right) and of test (every scene holds a held-out colour-kind pair: it is mostly
wrong there), the candidates are the true caption (its left-to-right reading), the captioner's beam
caption, and every single-attribute edit of the truth (one object's kind, colour or size replaced by
each other value). The generator scores each by its denoising loss on the item's image over `draws`
(t, noise) draws shared by the candidates (recon_ft.method.unpaired.denoising_scores: the generator
as a classifier, arXiv 2303.16203). Per (item, object, attribute):

  gen_correct  the truth scores below every edit of that object's attribute (chance 1 / #values)
  cap_correct  the captioner's caption names that object's attribute rightly (same count, same place)

and per item: `truth_top` (the truth scores lowest of all candidates) and, where the captioner's
caption is not the truth, `truth_beats_captioner`. This bounds what any image cycle can teach: a
generator that cannot tell the truth from an edit has nothing to teach about that attribute.

Writes items.csv (one row per item, object and attribute), summary.json (means with 95%
bootstrap intervals over items) and report.md under --out; `--report-only` recomputes the last two
from items.csv and run.json, byte for byte (no dates, no paths of this machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ATTRIBUTES = ("kind", "colour", "size")
SPLITS = ("val", "test")
BOOTSTRAP = 2000
BATCH = 8  # items scored together


def edits(scene) -> list[tuple[int, str, str]]:
    """Every single-attribute edit of a scene: (object position, attribute, caption), left-to-right
    reading."""
    from dataclasses import replace

    from recon_ft.data.synthetic import COLOURS, KINDS, SIZES, Scene, captions

    values = {"kind": KINDS, "colour": tuple(COLOURS), "size": SIZES}
    out = []
    for i, obj in enumerate(scene.objects):
        for attribute in ATTRIBUTES:
            for value in values[attribute]:
                if value != getattr(obj, attribute):
                    objects = list(scene.objects)
                    objects[i] = replace(obj, **{attribute: value})
                    out.append((i, attribute, captions(Scene(tuple(objects)))[0]))
    return out


def rank_items(split: str, items: int, draws: int, seed: int = 0) -> list[dict]:
    """The rows of one split (see the module docstring)."""
    import torch

    from recon_ft.data.synthetic import captions, generate
    from recon_ft.method.unpaired import denoising_scores
    from recon_ft.models.blip import build_blip
    from recon_ft.models.sd import build_stable_diffusion
    from recon_ft.zoo import zoo_part
    from recon_ft.zoo.data import to_unit_range

    captioner = build_blip(pretrained=zoo_part("captioner"), adapter={"mode": "frozen"}).eval()
    generator = build_stable_diffusion(pretrained=zoo_part("generator"), unet_adapter={"mode": "frozen"}).eval()
    rows = []
    for start in range(0, items, BATCH):
        indices = list(range(start, min(start + BATCH, items)))
        scenes, pixels = zip(*(generate(seed, split, i, 64) for i in indices))
        images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)  # (b, 3, 64, 64) uint8
        with torch.no_grad():
            said = captioner.generate(captioner.preprocess(to_unit_range(images)), num_beams=3)
        scene_edits = [edits(scene) for scene in scenes]
        groups = [[captions(scene)[0], told, *(c for _, _, c in ed)] for scene, told, ed in zip(scenes, said, scene_edits)]
        width = max(len(g) for g in groups)  # padded with the truth: the extra scores are not read
        flat = [c for g in groups for c in g + [g[0]] * (width - len(g))]
        rng = torch.Generator().manual_seed(seed * 1_000_003 + start)
        scores = denoising_scores(generator, to_unit_range(images, generator.image_size), flat, draws, rng)
        for index, scene, told_text, group, ed, row_scores in zip(indices, scenes, said, groups, scene_edits,
                                                                  scores.tolist()):
            rows += _rows(split, index, scene, told_text, group, row_scores[: len(group)], ed)
    return rows


def zoo_key() -> str:
    """The key of the zoo whose models are ranked (recon_ft.zoo's default recipe)."""
    from recon_ft.zoo.recipe import get_recipe

    return get_recipe("default").key


def _rows(split, index, scene, said, candidates, scores, scene_edits=None) -> list[dict]:
    """One item's rows: candidates = [truth, the captioner's caption, *scene_edits' captions] (the
    edits: `edits(scene)`), scores alike."""
    from recon_ft.data.synthetic import HELDOUT_PAIRS, parse_caption

    scene_edits = edits(scene) if scene_edits is None else scene_edits

    told = parse_caption(said)
    same_count = told is not None and len(told) == len(scene)
    truth_top = int(np.argmin(scores) == 0)
    beats = int(scores[0] < scores[1]) if said != candidates[0] else ""
    by_object: dict[tuple[int, str], list[float]] = {}
    for (position, attribute, _), score in zip(scene_edits, scores[2:]):
        by_object.setdefault((position, attribute), []).append(score)
    rows = []
    for (position, attribute), edit_scores in by_object.items():
        obj = scene.objects[position]
        rows.append({
            "split": split, "item": index, "objects": len(scene), "object": position, "attribute": attribute,
            "heldout_object": int((obj.colour, obj.kind) in HELDOUT_PAIRS),
            "values": len(edit_scores) + 1,
            "gen_correct": int(scores[0] < min(edit_scores)),
            "cap_correct": int(same_count and getattr(told.objects[position], attribute) == getattr(obj, attribute)),
            "truth_top": truth_top, "candidates": len(candidates), "truth_beats_captioner": beats,
            "captioner_exact": int(told == scene),
        })
    return rows


def _bootstrap(per_item: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-item values and its 95% percentile interval over items resampled."""
    rng = np.random.default_rng(seed)
    means = per_item[rng.integers(0, len(per_item), (BOOTSTRAP, len(per_item)))].mean(1)
    return float(per_item.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict]) -> dict:
    """Means with 95% bootstrap intervals over items, per split, attribute and subset."""
    out: dict = {}
    for split in sorted({r["split"] for r in rows}):
        of_split = [r for r in rows if r["split"] == split]
        items = sorted({int(r["item"]) for r in of_split})  # ints, read from the CSV or not
        first = {int(r["item"]): r for r in of_split}  # the item-level columns repeat on each row
        block = {"items": len(items),
                 "captioner_exact": _bootstrap(np.array([float(first[i]["captioner_exact"]) for i in items])),
                 "truth_top": _bootstrap(np.array([float(first[i]["truth_top"]) for i in items])),
                 "truth_top_chance": float(np.mean([1 / int(first[i]["candidates"]) for i in items]))}
        wrong = [i for i in items if first[i]["truth_beats_captioner"] != ""]
        if wrong:
            block["truth_beats_captioner"] = _bootstrap(np.array([float(first[i]["truth_beats_captioner"]) for i in wrong]))
            block["captioner_wrong_items"] = len(wrong)
        for attribute in ATTRIBUTES:
            for subset, keep in (("all", lambda r: True), ("heldout_objects", lambda r: int(r["heldout_object"]) == 1)):
                chosen = [r for r in of_split if r["attribute"] == attribute and keep(r)]
                if not chosen:
                    continue
                key = f"{attribute}/{subset}"
                for column in ("gen_correct", "cap_correct"):
                    per_item: dict[int, list[float]] = {}
                    for r in chosen:
                        per_item.setdefault(int(r["item"]), []).append(float(r[column]))
                    block[f"{key}/{column}"] = _bootstrap(np.array([np.mean(v) for v in per_item.values()]))
                block[f"{key}/chance"] = float(np.mean([1 / int(r["values"]) for r in chosen]))
                block[f"{key}/objects"] = len(chosen)
        out[split] = block
    return out


def _cell(values) -> str:
    mean, low, high = values
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def report(summary: dict) -> str:
    """The summary as markdown: per split, the generator's and the captioner's accuracy per attribute."""
    lines = ["# E0: does the generator know what the captioner gets wrong?", "",
             f"`{summary['command']}` on the zoo `{summary['zoo']}` (its base models, forward passes only). "
             "Means over items with 95% bootstrap intervals. The generator's pick: the truth scores below every "
             "edit of that object's attribute, by the mean denoising loss over shared (t, noise) draws; the "
             "captioner's: its beam caption names the attribute rightly. Pre-registered in plan.md (E0); the "
             "primary row is test, held-out objects, kind."
             + (f" It took {summary['wall_seconds'] / 60:.0f} min with {summary['threads']} threads on "
                f"{summary['machine']['cpu']} ({summary['machine']['cpu_count']} CPUs)." if "wall_seconds" in summary
                else ""), ""]
    for split in SPLITS:
        block = summary.get(split)
        if not block:
            continue
        lines += [f"## {split} ({block['items']} items)", "",
                  "| objects | attribute | n | generator picks the truth | captioner names it | chance |",
                  "|---|---|---:|---:|---:|---:|"]
        for subset in ("all", "heldout_objects"):
            for attribute in ATTRIBUTES:
                key = f"{attribute}/{subset}"
                if f"{key}/gen_correct" in block:
                    lines.append(f"| {subset.replace('_', ' ')} | {attribute} | {block[key + '/objects']} | "
                                 f"{_cell(block[key + '/gen_correct'])} | {_cell(block[key + '/cap_correct'])} | "
                                 f"{block[key + '/chance']:.3f} |")
        lines += ["", f"- The captioner's caption is exact on {_cell(block['captioner_exact'])} of the items.",
                  f"- The truth scores lowest of all {block['items']} items' candidates (the truth, the captioner's "
                  f"caption, every single-attribute edit) on {_cell(block['truth_top'])} (chance "
                  f"{block['truth_top_chance']:.3f})."]
        if "truth_beats_captioner" in block:
            lines.append(f"- Where the captioner's caption is not the truth ({block['captioner_wrong_items']} items), "
                         f"the truth scores below it on {_cell(block['truth_beats_captioner'])}.")
        lines.append("")
    return "\n".join(lines)


def write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.generator_ranks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=512, help="items per split")
    parser.add_argument("--draws", type=int, default=16, help="(t, noise) draws shared by an item's candidates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/study/e0")
    parser.add_argument("--report-only", action="store_true", help="recompute summary.json from items.csv")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        rows, run = read_rows(out / "items.csv"), json.loads((out / "run.json").read_text())
    else:
        import torch

        from recon_ft.experiments.machine import machine

        run = {"command": f"python -m recon_ft.experiments.generator_ranks --items {args.items} --draws "
                          f"{args.draws} --seed {args.seed} --out {args.out}", "zoo": zoo_key()}
        start = time.perf_counter()
        rows = [row for split in SPLITS for row in rank_items(split, args.items, args.draws, args.seed)]
        run |= {"wall_seconds": round(time.perf_counter() - start, 1), "threads": torch.get_num_threads(),
                "machine": machine()}
        write_rows(rows, out / "items.csv")
        (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    summary = {**run, **summarize(rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(report(summary))
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
