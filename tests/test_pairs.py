"""The pairing study: planning and resuming, bridge coverage and one evaluation item for every zoo
pair, and the matrix report written from fabricated metrics."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon_ft.experiments.pairs.collect import collect, matrix
from recon_ft.experiments.pairs.coverage import bridge_coverage, pair_coverage
from recon_ft.experiments.pairs.intervals import cell_intervals, item_value
from recon_ft.experiments.pairs.plan import ZOO_CAPTIONERS, ZOO_GENERATORS, check_names, check_settings, pair_dir, plan
from recon_ft.experiments.pairs.report import write_report

ROOT = Path(__file__).resolve().parents[1]
ZOO_PAIRS = [(c, g) for c in ZOO_CAPTIONERS for g in ZOO_GENERATORS]
# One item, two candidates, two diffusion steps, random extractors: the plumbing of every pair.
TINY_EVAL = ["limit=1", "analysis.k=2", "generation.num_inference_steps=2", "metrics=tiny", "metrics.meteor=false",
             "report.grid_items=1", "num_threads=1"]


def test_plan_commands_and_resume(tmp_path):
    chains = plan(["zoo_blip", "zoo_git"], ["zoo_sd", "zoo_sdxl"], tmp_path, ["split=test", "limit=4"],
                  python="py", threads=2)
    assert [c.config for c in chains] == ["zoo_blip__zoo_sd", "zoo_blip__zoo_sdxl", "zoo_git__zoo_sd",
                                          "zoo_git__zoo_sdxl"]
    assert chains[3].steps[0].command == (
        "py", "eval.py", "captioner=zoo_git", "generator=zoo_sdxl", "split=test", "limit=4", "num_threads=2",
        f"hydra.run.dir={tmp_path / 'runs' / 'zoo_git__zoo_sdxl'}")
    # a pair whose metrics.json exists is done: planned again, it has nothing left to run
    (pair_dir(tmp_path, "zoo_blip", "zoo_sdxl")).mkdir(parents=True)
    (pair_dir(tmp_path, "zoo_blip", "zoo_sdxl") / "metrics.json").write_text("{}")
    again = plan(["zoo_blip", "zoo_git"], ["zoo_sd", "zoo_sdxl"], tmp_path, ["split=test", "limit=4"])
    assert [len(c.todo) for c in again] == [1, 0, 1, 1]


def test_settings_of_a_resumed_study_must_match(tmp_path):
    check_settings(tmp_path, ["split=test", "limit=4"])
    check_settings(tmp_path, ["split=test", "limit=4"])  # the same: fine
    with pytest.raises(ValueError, match=r"used the eval overrides \['split=test', 'limit=4'\]"):
        check_settings(tmp_path, ["split=val"])


def test_unknown_config_names_are_named():
    check_names("captioner", list(ZOO_CAPTIONERS))
    check_names("generator", list(ZOO_GENERATORS))
    with pytest.raises(ValueError, match=r"--generators: \['sd9'\] not in conf/generator/"):
        check_names("generator", ["zoo_sd", "sd9"])


def test_bridge_coverage_of_every_zoo_pair(tmp_path):
    from recon_ft.method.bridge import VocabBridge
    from recon_ft.models.tokenizers import blip_tokenizer, clip_tokenizer

    coverage = {(c, g): pair_coverage(c, g, tmp_path / f"{c}__{g}.json") for c, g in ZOO_PAIRS}
    styles = {c: coverage[(c, "zoo_sd")]["captioner_style"] for c in ZOO_CAPTIONERS}
    assert styles == {"zoo_blip": "wordpiece", "zoo_blip2_opt": "bytelevel", "zoo_blip2_t5": "sentencepiece",
                      "zoo_git": "wordpiece"}
    assert {cov["generator_style"] for cov in coverage.values()} == {"bpe"}
    # the zoo's BLIP -> SD pair is the real BLIP -> CLIP bridge
    direct = VocabBridge.from_tokenizers(blip_tokenizer(), clip_tokenizer()).coverage()
    assert coverage[("zoo_blip", "zoo_sd")]["n_matched"] == direct["n_matched"]
    for c in ZOO_CAPTIONERS:
        # SD 2.x and SDXL's first tokenizer are CLIP's vocabulary too: the same coverage
        assert coverage[(c, "zoo_sd2")]["n_matched"] == coverage[(c, "zoo_sdxl")]["n_matched"] \
            == coverage[(c, "zoo_sd")]["n_matched"]
        cov = coverage[(c, "zoo_sd")]
        assert cov["matched"] + cov["fallback"] + cov["unmapped"] == pytest.approx(1.0)
        assert 0.3 < cov["matched"] <= 1.0
    # kept in bridge.json: read back, not recomputed
    assert json.loads((tmp_path / "zoo_git__zoo_sdxl.json").read_text()) == coverage[("zoo_git", "zoo_sdxl")]


@pytest.mark.parametrize("captioner, generator", ZOO_PAIRS)
def test_one_evaluation_item_of_every_zoo_pair(captioner, generator, cfg_eval):
    from recon_ft.eval.pipeline import evaluate

    metrics = evaluate(cfg_eval(f"captioner={captioner}", f"generator={generator}", *TINY_EVAL))
    assert metrics["data/items"] == 1.0
    for key in ("i2t2i/clip_i_best", "i2t2i/best/CIDEr", "t2i2t/sbert_best", "t2i2t/clip_score_best"):
        assert metrics[key] is not None, key


def _fake_metrics(value: float) -> dict:
    return {"i2t2i/clip_i_best": value, "i2t2i/best/CIDEr": 2 * value, "t2i2t/clip_text_best": value / 2,
            "t2i2t/clip_score_best": 10 * value, "caption/CIDEr": 1 + value, "synthetic/gen_colour": value,
            "data/items": 32.0,
            "extractors/clip": "zoo CLIP", "extractors/random": False}


def test_report_from_fabricated_metrics(tmp_path):
    captioners, generators = ["cap_a", "cap_b"], ["gen_x", "gen_y"]
    values = {("cap_a", "gen_x"): 0.5, ("cap_a", "gen_y"): 0.25, ("cap_b", "gen_x"): 0.75}  # (cap_b, gen_y) missing
    for (c, g), v in values.items():
        where = pair_dir(tmp_path / "out", c, g)
        where.mkdir(parents=True)
        (where / "metrics.json").write_text(json.dumps(_fake_metrics(v)))
        (where / "wall.json").write_text(json.dumps({"seconds": 100 * v, "threads": 1}))
        (where / "bridge.json").write_text(json.dumps({"captioner_style": "wordpiece", "generator_style": "bpe",
                                                       "src_size": 100, "matched": v, "fallback": 0.1,
                                                       "unmapped": 0.9 - v}))
    rows = collect(captioners, generators, tmp_path / "out")
    assert matrix(rows, captioners, generators, ("t2i2t/sbert_best", "t2i2t/clip_text_best")) == [[0.25, 0.125],
                                                                                                   [0.375, None]]
    machine = {"cpu": "test cpu", "cpu_count": 2, "python": "3.11", "versions": {"torch": "x"}, "commit": "abc123",
               "date": "2026-01-01"}
    md = write_report(command="python -m recon_ft.experiments.pairs --captioners cap_a cap_b", overrides=["split=test"],
                      machine=machine, rows=rows, captioners=captioners, generators=generators,
                      out_dir=tmp_path / "out", docs=tmp_path / "docs")
    with open(tmp_path / "docs" / "pairs" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["captioner"], r["generator"], r["status"]) for r in table] == [
        ("cap_a", "gen_x", "done"), ("cap_a", "gen_y", "done"), ("cap_b", "gen_x", "done"),
        ("cap_b", "gen_y", "missing")]
    assert float(table[2]["i2t2i/best/CIDEr"]) == 1.5 and table[2]["seconds"] == "75.0"
    assert table[3]["i2t2i/clip_i_best"] == "" and float(table[1]["bridge/matched"]) == 0.25
    for name in ("i2t2i_clip_i_best", "i2t2i_cider_best", "t2i2t_text_similarity_best", "t2i2t_clip_score_best"):
        with Image.open(tmp_path / "docs" / "pairs" / f"{name}.png") as image:
            assert image.size[0] > 200 and image.size[1] > 100
    text = md.read_text()
    assert md == tmp_path / "docs" / "pairs.md"
    assert "`python -m recon_ft.experiments.pairs --captioners cap_a cap_b`" in text and "`abc123`" in text
    assert "| cap_a | 0.500 | 0.250 |" in text  # I2T2I CLIP-I, captioners x generators
    assert "| cap_b | 1.500 | - |" in text  # the best caption's CIDEr; the missing pair is "-"
    assert "| cap_a | 5.000 | 2.500 |" in text  # T2I2T CLIP score
    assert "| cap_b | gen_x | wordpiece -> bpe | 100 | 0.750 | 0.100 | 0.150 |" in text
    # each model alone: the mean over its finished pairs; keys no run has are left out
    assert "| captioner | `caption/CIDEr` |\n|---|---:|\n| cap_a | 1.375 |\n| cap_b | 1.750 |" in text
    assert "| generator | `synthetic/gen_colour` |\n|---|---:|\n| gen_x | 0.625 |\n| gen_y | 0.250 |" in text
    assert "`extractors/clip`: `zoo CLIP`" in text and "![I2T2I best-of-k CLIP-I](pairs/i2t2i_clip_i_best.png)" in text
    page = (tmp_path / "docs" / "pairs" / "report.html").read_text()
    assert "<h1>recon_ft pairing study</h1>" in page and page.count("data:image/png;base64,") == 4


def _sample(index: int, clip_i: float, clip_score: float) -> dict:
    """An evaluated item with two I2T2I and two T2I2T candidates, the second the best."""
    return {"index": index, "i2t2i": [{"clip_i": 0.0, "cider": 0.0}, {"clip_i": clip_i, "cider": 2 * clip_i}],
            "i2t2i_selected": {"first": 0, "best": 1, "random": 0},
            "t2i2t": [{"clip_text": 0.0, "clip_score": 0.0}, {"clip_text": clip_i / 2, "clip_score": clip_score}],
            "t2i2t_selected": {"first": 0, "best": 1, "random": 1}}


def test_item_values_are_the_best_candidate_s():
    sample = _sample(3, 0.8, 90.0)
    assert item_value(sample, "i2t2i/clip_i_best") == 0.8 and item_value(sample, "i2t2i/best/CIDEr") == 1.6
    assert item_value(sample, "t2i2t/clip_text_best") == 0.4 and item_value(sample, "t2i2t/clip_score_best") == 90.0
    assert item_value(sample, "t2i2t/sbert_best") is None  # this run measured text similarity with CLIP
    assert item_value({"index": 0}, "i2t2i/clip_i_best") is None  # the analysis was off


def test_cell_intervals_tell_which_cells_the_items_cannot_separate_from_the_best():
    rng = np.random.default_rng(0)
    best = rng.random(200)
    cells = {("a", "x"): dict(enumerate(best)),
             ("a", "y"): dict(enumerate(best - 0.2)),  # every item 0.2 lower: clearly below
             # as good on average (0.001 lower), but item by item 0.1 above or below: the items cannot tell
             ("b", "x"): dict(enumerate(best - 0.001 + 0.1 * (-1.0) ** np.arange(200))),
             ("b", "y"): {}}  # not evaluated
    out = cell_intervals(cells)
    assert set(out) == {("a", "x"), ("a", "y"), ("b", "x")}
    assert out[("a", "x")]["best"] and out[("a", "x")]["tied"]
    assert out[("a", "y")]["vs_best"] == pytest.approx((-0.2, -0.2)) and not out[("a", "y")]["tied"]
    assert out[("b", "x")]["tied"] and not out[("b", "x")]["best"]
    low, high = out[("a", "x")]["ci"]
    sem = best.std(ddof=1) / np.sqrt(200)  # the bootstrap interval is about the mean +- 1.96 standard errors
    assert low == pytest.approx(best.mean() - 1.96 * sem, abs=0.3 * sem)
    assert high == pytest.approx(best.mean() + 1.96 * sem, abs=0.3 * sem)


def test_the_report_gives_each_cell_its_interval(tmp_path):
    captioners, generators = ["cap_a"], ["gen_x", "gen_y"]
    for g, shift in (("gen_x", 0.0), ("gen_y", -0.3)):
        where = pair_dir(tmp_path / "out", "cap_a", g)
        where.mkdir(parents=True)
        items = [_sample(i, 0.5 + 0.1 * (i % 3) + shift, 80.0 + i % 5) for i in range(30)]
        (where / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in items))
        metrics = {"i2t2i/clip_i_best": float(np.mean([s["i2t2i"][1]["clip_i"] for s in items])), "data/items": 30.0}
        (where / "metrics.json").write_text(json.dumps(metrics))
    rows = collect(captioners, generators, tmp_path / "out")
    machine = {"commit": "abc", "date": "d", "versions": {}}
    text = write_report(command="c", overrides=[], machine=machine, rows=rows, captioners=captioners,
                        generators=generators, out_dir=tmp_path / "out", docs=tmp_path / "docs").read_text()
    assert "95% bootstrap interval" in text
    row = next(line for line in text.splitlines() if line.startswith("| cap_a | **0.600**"))
    x_low, x_high = (float(v) for v in row.split("|")[2].split("[")[1].rstrip("] ").split(","))
    assert x_low < 0.6 < x_high and "0.300 [" in row.split("|")[3] and " =" not in row  # gen_y clearly below


def test_command_runs_a_pair_then_resumes(tmp_path):
    """python -m recon_ft.experiments.pairs end to end on one pair; run again, the finished pair is skipped."""
    args = [sys.executable, "-m", "recon_ft.experiments.pairs", "--captioners", "zoo_git", "--generators", "zoo_sdxl",
            "--out", str(tmp_path / "out"), "--docs", str(tmp_path / "docs"), "--set", *TINY_EVAL[:-1]]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "out" / "runs" / "zoo_git__zoo_sdxl"
    assert (run / "metrics.json").is_file() and (run / "bridge.json").is_file() and (run / "report.html").is_file()
    wall = (run / "wall.json").read_text()
    assert "| zoo_git | zoo_sdxl | wordpiece -> bpe |" in (tmp_path / "docs" / "pairs.md").read_text()
    second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "0 chains to run (1 steps already done, skipped)" in second.stderr
    assert (run / "wall.json").read_text() == wall
