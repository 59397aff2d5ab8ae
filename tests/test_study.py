"""The cycle-term study: planning and resuming, aggregation of a fabricated multirun, the report,
and the Optuna sweeper's config with train.py's objective."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from omegaconf import OmegaConf

from recon_ft.experiments.study.aggregate import collect, collect_wall, describe, differences, paired_difference, sign_count, summarize
from recon_ft.experiments.study.plan import BASE, load_study, plan, run_dir
from recon_ft.experiments.study.report import answer, headline_metrics, oracle_gate, shows, write_report
from recon_ft.experiments.runner import record_elapsed, record_runs, threads_per_job
from tests.conftest import CONF

# Fabricated values: metric "m" per config and seed (val split); test split adds 1.0 everywhere.
VALUES = {
    "no_cycle": [0.50, 0.60, 0.70],
    "img": [0.60, 0.70, 0.80],   # +0.1 at every seed: zero spread of the differences
    "txt": [0.55, 0.58, 0.90],   # differences +0.05, -0.02, +0.20
}


def study_cfg(out_dir: Path, **extra):
    cfg = OmegaConf.load(CONF / "study" / "cycle.yaml")
    cfg.out_dir = str(out_dir)
    cfg.configs = {"no_cycle": ["loss.lambda_img=0", "loss.lambda_txt=0"], "img": ["loss.lambda_img=1"],
                   "txt": ["loss.lambda_txt=1"]}
    cfg.headline = ["m", "synthetic/gen_colour", "synthetic/gen_kind"]
    cfg.oracle.image_size = 32
    cfg.eval.split_overrides = {"val": ["analysis.i2t2i=false"]}
    return OmegaConf.merge(cfg, extra)


def fabricate(out_dir: Path, skip: tuple = ()) -> None:
    """metrics.json (and wall.json) of every run as the study would have written them."""
    for config, values in VALUES.items():
        for seed, value in enumerate(values):
            if (config, seed) in skip:
                continue
            where = run_dir(out_dir, config, seed)
            (where / "train").mkdir(parents=True)
            (where / "train" / "summary.json").write_text("{}")
            (where / "train" / "wall.json").write_text(json.dumps({"seconds": 10.0 + seed}))
            for split, shift in (("val", 0.0), ("test", 1.0)):
                (where / f"eval_{split}").mkdir()
                metrics = {"m": value + shift, "synthetic/gen_colour": 0.3, "synthetic/gen_kind": 0.2,
                           "i2t2i/spearman_cider": None}
                (where / f"eval_{split}" / "metrics.json").write_text(json.dumps(metrics))
                (where / f"eval_{split}" / "wall.json").write_text(json.dumps({"seconds": 4.0}))
    for split in ("val", "test"):
        base = out_dir / BASE / f"eval_{split}"
        base.mkdir(parents=True)
        (base / "metrics.json").write_text(json.dumps({"m": 0.4, "synthetic/gen_colour": 0.25,
                                                       "synthetic/gen_kind": 0.1, "i2t2i/spearman_cider": None}))


# ------------------------------------------------------------------------------------ planning


def test_the_shipped_study_config_has_the_issue_configurations(cfg_train):
    cfg = load_study(CONF / "study" / "cycle.yaml")
    assert list(cfg.seeds) == [0, 1, 2] and cfg.baseline == "no_cycle"
    assert set(cfg.configs) == {"no_cycle", "img_0.1", "img_1", "txt_0.1", "txt_1", "both", "both_grads_both"}
    assert list(cfg.configs.no_cycle) == ["loss.lambda_img=0", "loss.lambda_txt=0"]
    assert "loss.cycle_grads=both" in cfg.configs.both_grads_both
    assert list(cfg.eval.splits) == ["val", "test"]
    # every configuration's overrides compose with train.py's config
    for overrides in cfg.configs.values():
        composed = cfg_train(*cfg.train_overrides, *overrides)
        assert composed.loss.lambda_img >= 0


def test_plan_commands_and_resume(tmp_path):
    cfg = study_cfg(tmp_path)
    chains = plan(cfg, python="py", threads=1)
    # 3 configs x 3 seeds, plus the base models' chain per split
    assert len(chains) == 9 + 2
    first = chains[0]
    assert (first.config, first.seed) == ("no_cycle", 0)
    train, ev_val, ev_test = first.steps
    assert train.command[:2] == ("py", "train.py") and "seed=0" in train.command
    assert "loss.lambda_img=0" in train.command
    assert f"hydra.run.dir={tmp_path}/runs/no_cycle/seed0/train" in train.command
    assert ev_val.command[:3] == ("py", "eval.py", f"run_dir={tmp_path}/runs/no_cycle/seed0/train")
    assert "split=val" in ev_val.command and "num_threads=1" in ev_val.command
    assert "split=test" in ev_test.command
    # the split's own overrides follow the common ones, on that split only
    assert "analysis.i2t2i=false" in ev_val.command and "analysis.i2t2i=false" not in ev_test.command
    base = [c for c in chains if c.config == BASE]
    assert [c.seed for c in base] == [None, None]
    assert not any(a.startswith("run_dir=") for a in base[0].steps[0].command)
    # everything to do; then a finished run (its metrics.json present) is skipped
    assert all(len(c.todo) == len(c.steps) for c in chains)
    fabricate(tmp_path, skip=(("txt", 2),))
    todo = {(c.config, c.seed): [s.name for s in c.todo] for c in plan(cfg, python="py") if c.todo}
    assert todo == {("txt", 2): ["txt/seed2/train", "txt/seed2/eval_val", "txt/seed2/eval_test"]}
    # an interrupted run: trained, one evaluation written -> only the other evaluation is left
    where = run_dir(tmp_path, "txt", 2)
    (where / "train").mkdir(parents=True)
    (where / "train" / "summary.json").write_text("{}")
    (where / "eval_val").mkdir()
    (where / "eval_val" / "metrics.json").write_text("{}")
    todo = [s.name for c in plan(cfg, python="py") for s in c.todo]
    assert todo == ["txt/seed2/eval_test"]


def test_load_study_names_what_is_wrong(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("out_dir: x\nseeds: [0]\nconfigs: {a: []}\nbaseline: nope\neval: {splits: [val]}\nheadline: []\n")
    with pytest.raises(ValueError, match="baseline 'nope' is not one of the configs"):
        load_study(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_study(tmp_path / "missing.yaml")


def test_threads_are_shared_out():
    assert threads_per_job(1, cores=2) == 2
    assert threads_per_job(2, cores=2) == 1
    assert threads_per_job(3, cores=2) == 1


# ------------------------------------------------------------------------------------ aggregation


def test_describe_ignores_missing_values():
    assert describe([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "std": pytest.approx(math.sqrt(7 / 3)), "n": 3}
    assert describe([1.0, None, float("nan")]) == {"mean": 1.0, "std": None, "n": 1}
    assert describe([None]) == {"mean": None, "std": None, "n": 0}


def test_aggregation_of_a_fabricated_multirun(tmp_path):
    fabricate(tmp_path)
    cfg = study_cfg(tmp_path)
    rows = collect(cfg)
    assert len(rows) == (9 + 1) * 2 * 4
    assert {"config": "txt", "seed": 2, "split": "test", "metric": "m", "value": pytest.approx(1.9)} in rows
    assert {"config": BASE, "seed": None, "split": "val", "metric": "m", "value": 0.4} in rows

    summary = {(r["config"], r["split"], r["metric"]): r for r in summarize(rows)}
    s = summary[("no_cycle", "val", "m")]
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    s = summary[("txt", "test", "m")]
    assert s["mean"] == pytest.approx(1.0 + 2.03 / 3) and s["std"] == pytest.approx(np.std([0.55, 0.58, 0.9], ddof=1))
    assert summary[(BASE, "val", "m")] == {"config": BASE, "split": "val", "metric": "m", "mean": 0.4, "std": None, "n": 1}
    assert summary[("img", "val", "i2t2i/spearman_cider")]["n"] == 0  # null everywhere: said, not hidden

    diffs = {(d["config"], d["split"], d["metric"]): d for d in differences(rows, "no_cycle")}
    assert ("no_cycle", "val", "m") not in diffs and (BASE, "val", "m") not in diffs
    img = diffs[("img", "val", "m")]
    # the same +0.1 at every seed: no spread, so no t-test, a zero-width interval, 3/3 up
    assert img["mean"] == pytest.approx(0.1) and img["std"] == pytest.approx(0.0, abs=1e-12)
    assert img["p"] is None and img["ci_low"] == pytest.approx(0.1) and sign_count(img) == "3/3 seeds up"
    txt = diffs[("txt", "val", "m")]
    d = np.array([0.05, -0.02, 0.20])
    assert txt["mean"] == pytest.approx(0.23 / 3) and txt["std"] == pytest.approx(d.std(ddof=1))
    assert txt["p"] == pytest.approx(scipy.stats.ttest_rel([0.55, 0.58, 0.90], [0.5, 0.6, 0.7]).pvalue)
    half = 4.302652729911275 * d.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert (txt["ci_low"], txt["ci_high"]) == (pytest.approx(d.mean() - half), pytest.approx(d.mean() + half))
    assert txt["significant"] is False and sign_count(txt) == "2 up, 1 down of 3 seeds"

    wall = collect_wall(cfg)
    assert wall["img"] == {"train": pytest.approx(11.0), "eval": 4.0, "n_train": 3}


def test_paired_difference_uses_only_seeds_present_in_both():
    d = paired_difference({0: 2.0, 1: 3.0, 2: None, 3: 5.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert d["seeds"] == [0, 1] and d["n"] == 2 and d["mean"] == pytest.approx(1.5)
    assert d["p"] == pytest.approx(scipy.stats.ttest_rel([2.0, 3.0], [1.0, 1.0]).pvalue)
    big = paired_difference({0: 1.0, 1: 1.1, 2: 1.2}, {0: 0.0, 1: 0.05, 2: 0.1})
    assert big["significant"] is True and big["p"] < 0.05 and big["ci_low"] > 0


# ------------------------------------------------------------------------------------ report


def test_report_writes_markdown_csv_json_and_plot(tmp_path):
    fabricate(tmp_path / "out")
    cfg = study_cfg(tmp_path / "out")
    rows = collect(cfg)
    oracle = [{"split": "val", "image_size": 32, "n": 8, "validated": ["count", "colour", "size", "exact"],
               "accuracy": {"count": 1.0, "colour": 1.0, "kind": 0.9, "size": 1.0, "exact": 1.0, "scene_exact": 0.8}}]
    meta = {"cpu": "Test CPU", "cpu_count": 2, "python": "3.x", "versions": {"torch": "9"}, "commit": "abc1234",
            "date": "2026-01-01"}
    docs = tmp_path / "docs" / "study.md"
    payload = write_report(cfg=cfg, command="python -m recon_ft.experiments.study", rows=rows, summary=summarize(rows),
                           diffs=differences(rows, "no_cycle"), wall=collect_wall(cfg), oracle=oracle, docs=docs,
                           meta=meta)
    # gen_kind is left out: the oracle reads kinds at 32 px right only 0.9 of the time
    assert payload["headline"] == ["m", "synthetic/gen_colour"] and payload["left_out"] == ["synthetic/gen_kind"]
    text = docs.read_text()
    assert "`python -m recon_ft.experiments.study` at commit `abc1234`" in text and "Test CPU, 2 CPUs" in text
    assert "| no_cycle | 0.600 ± 0.100 (3) |" in text
    assert "| base | 0.400 (1) |" in text
    assert "`m` (val): no configuration differs significantly from no_cycle" in text
    assert "| txt | `m` | +0.077 | 0.112 | -0.203 to +0.356 | 0.359 |" in text and "2 up, 1 down of 3 seeds" in text
    assert "| img | 11 | 4 |" in text
    assert "Not reported" in text and "`synthetic/gen_kind`" in text
    data = docs.parent / "study"
    with open(data / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and table[0].keys() == {"config", "seed", "split", "metric", "value"}
    assert any(r["metric"] == "i2t2i/spearman_cider" and r["value"] == "" for r in table)
    saved = json.loads((data / "summary.json").read_text())
    assert saved["meta"]["commit"] == "abc1234" and "paired t-test" in saved["method"]
    png = (data / "headline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_headline_metrics_without_validation_keep_everything():
    assert headline_metrics(["a", "synthetic/gen_kind"], None) == (["a", "synthetic/gen_kind"], [])


# ------------------------------------------------------------------------------------ Optuna


def test_optuna_search_composes_and_train_returns_its_objective(cfg_train):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from recon_ft.training.run import objective

    cfg = cfg_train("hparams_search=optuna", return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"loss.lambda_img", "loss.lambda_txt"}
    assert "log" in cfg.hydra.sweeper.params["loss.lambda_img"]
    assert cfg.optimized_metric == "best/val/cider_bleu4"
    assert objective(cfg, {"best/val/cider_bleu4": 1.25, "val/loss": 3.0}) == 1.25
    with pytest.raises(ValueError, match="optimized_metric: 'best/val/cider_bleu4' is not among"):
        objective(cfg, {"val/loss": 3.0})
    OmegaConf.set_struct(cfg, False)
    cfg.optimized_metric = None
    assert objective(cfg, {"val/loss": 3.0}) is None


def test_oracle_gate_keeps_attributes_validated_in_every_view_at_the_generator_size():
    acc = dict.fromkeys(["count", "colour"], 1.0)
    views = [{"image_size": 32, "render_size": 32, "validated": ["count", "colour", "size"], "accuracy": acc},
             {"image_size": 32, "render_size": 64, "validated": ["count", "colour"], "accuracy": acc},
             {"image_size": 64, "render_size": 64, "validated": ["count", "colour", "size", "kind"], "accuracy": acc}]
    assert oracle_gate(views, 32) == {"validated": ["count", "colour"]}
    assert oracle_gate(views, 64) == {"validated": ["count", "colour", "size", "kind"]}
    assert oracle_gate(views, 16) is None and oracle_gate([], 32) is None


def test_shows_names_an_unmeasured_metric_and_the_report_counts_its_tests(tmp_path):
    assert shows("t2i2t/spearman_clip_cider", "val", [], "no_cycle") == \
        "`t2i2t/spearman_clip_cider` (val): not measured on this split."
    one_seed = [{"metric": "m", "split": "val", "config": "txt", "n": 1, "mean": 0.1, "significant": False}]
    assert "too few paired seeds" in shows("m", "val", one_seed, "no_cycle")
    fabricate(tmp_path / "out")
    cfg = study_cfg(tmp_path / "out")
    rows = collect(cfg)
    diffs = differences(rows, "no_cycle")
    write_report(cfg=cfg, command="c", rows=rows, summary=summarize(rows), diffs=diffs, wall=collect_wall(cfg),
                 oracle=[], docs=tmp_path / "study.md", meta={"cpu": "x", "cpu_count": 2, "python": "3", "versions": {},
                                                              "commit": "c", "date": "d"})
    tested = sum(1 for d in diffs if d["metric"] in cfg.headline and d["p"] is not None)
    assert tested > 0
    assert f"This report makes {tested} such tests" in (tmp_path / "study.md").read_text()


def test_answer_says_plainly_whether_any_configuration_differs():
    diffs = [{"metric": "m", "split": "test", "config": "txt", "n": 3, "mean": 0.2, "p": 0.01, "significant": True},
             {"metric": "m", "split": "val", "config": "txt", "n": 3, "mean": 0.01, "p": 0.6, "significant": False},
             {"metric": "other", "split": "val", "config": "img", "n": 3, "mean": -0.3, "p": 0.01, "significant": True}]
    val, test = answer(diffs, ["val", "test"], ["m"], "no_cycle")
    assert val == ("- val: no cycle configuration differs significantly from no_cycle on any headline metric; "
                   "here the cycle terms do not measurably help (or hurt).")
    assert test == "- test: significant differences from no_cycle: txt up on `m` (+0.200, p 0.010)."


def test_the_runs_command_and_commit_are_recorded_once_and_reported(tmp_path):
    first = record_runs(tmp_path, "python -m recon_ft.experiments.study --jobs 2")
    assert record_runs(tmp_path, "python -m recon_ft.experiments.study --report-only") == first
    assert first["command"] == "python -m recon_ft.experiments.study --jobs 2"
    fabricate(tmp_path)
    cfg = study_cfg(tmp_path)
    rows = collect(cfg)
    write_report(cfg=cfg, command="python -m recon_ft.experiments.study --report-only", rows=rows, summary=summarize(rows),
                 diffs=differences(rows, "no_cycle"), wall=collect_wall(cfg), oracle=[], docs=tmp_path / "s.md",
                 meta={"cpu": "x", "cpu_count": 2, "python": "3", "versions": {}, "commit": "new", "date": "d"})
    text = (tmp_path / "s.md").read_text()
    assert f"The runs: `python -m recon_ft.experiments.study --jobs 2` at commit `{first['commit']}`" in text
    assert "## Answer" in text


def test_a_resumed_studys_elapsed_time_is_the_sum_of_its_invocations(tmp_path):
    started = record_runs(tmp_path, "python -m recon_ft.experiments.study --jobs 2")
    record_elapsed(tmp_path, 1800.0)  # interrupted after 30 min
    again = record_elapsed(tmp_path, 1500.04)  # resumed hours later: the gap does not count
    assert again["elapsed_s"] == 3300.0 and again["started"] == started["started"] and "finished" in again
    fabricate(tmp_path)
    cfg = study_cfg(tmp_path)
    rows = collect(cfg)
    write_report(cfg=cfg, command="c", rows=rows, summary=summarize(rows), diffs=differences(rows, "no_cycle"),
                 wall=collect_wall(cfg), oracle=[], docs=tmp_path / "s.md",
                 meta={"cpu": "x", "cpu_count": 2, "python": "3", "versions": {}, "commit": "new", "date": "d"})
    assert f"started {started['started']}, finished {again['finished']}, 55 min elapsed." in (tmp_path / "s.md").read_text()
