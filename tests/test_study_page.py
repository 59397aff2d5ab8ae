"""docs/study.md's page (recon_ft/study.py): per experiment its answer from the experiment's own
summary, and the plan's checks."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from recon_ft.study import load_plan, markdown
from tests.conftest import CONF


def test_the_shipped_plan_names_the_studys_experiments_in_order():
    plan = load_plan(CONF / "study" / "plan.yaml")
    assert [e.name for e in plan.experiments] == ["E0", "E1", "E1, p = 0", "E2", "E3"]
    for e in plan.experiments:
        if e.kind == "study":
            assert (CONF.parent / e.config).is_file() and "primary" in OmegaConf.load(CONF.parent / e.config)


def test_a_plan_with_an_unknown_kind_is_refused(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("title: t\nplan: p.md\ndocs: s.md\nexperiments:\n  - {name: E9, question: q, kind: magic}\n")
    with pytest.raises(ValueError, match="E9.*kind must be one of"):
        load_plan(path)


def test_the_page_answers_from_each_experiments_summary(tmp_path):
    (tmp_path / "docs" / "e0").mkdir(parents=True)
    (tmp_path / "docs" / "e0" / "summary.json").write_text(json.dumps({"test": {
        "kind/heldout_objects/gen_correct": [0.855, 0.812, 0.895],
        "kind/heldout_objects/cap_correct": [0.047, 0.025, 0.072], "kind/heldout_objects/chance": 0.25}}))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "e1.yaml").write_text("docs: docs/e1.md\n")
    (tmp_path / "docs" / "e1").mkdir()
    primary = [{"arm": "img", "against": "cap_only", "metric": "recall", "effect": 0.04, "ci": [0.01, 0.07],
                "p": 0.002, "p_holm": 0.004, "rejected": True},
               {"arm": "ranked", "against": "cap_only", "metric": "recall", "effect": -0.01, "ci": [-0.03, 0.01],
                "p": 0.4, "p_holm": 0.4, "rejected": False},
               {"arm": "ranked", "against": "self_train", "metric": "recall", "effect": 0.02, "ci": [-0.01, 0.05],
                "p": 0.2, "p_holm": 0.4, "rejected": False},
               {"arm": "txt", "against": "cap_only", "metric": "gen_exact", "effect": -0.05, "ci": [-0.08, -0.02],
                "p": 0.001, "p_holm": 0.004, "rejected": True}]
    controls = [{"arm": "mismatch", "effect": 0.0, "ci": [-0.01, 0.01], "p": 0.9}]
    ceilings = [{"arm": "oracle", "metric": "recall", "effect": 0.3, "ci": [0.25, 0.35], "p": 0.0001},
                {"arm": "oracle", "metric": "gen_exact", "effect": 0.0, "ci": [0.0, 0.0], "p": 1.0,
                 "share_differing": 0.0}]
    primary.append({"arm": "soft", "against": "self_train", "metric": "recall", "effect": 0.012, "ci": [-0.003, 0.026],
                    "p": 0.002, "p_holm": 0.006, "rejected": True, "seed_effects": [-0.008, 0.01, 0.027, 0.018]})
    (tmp_path / "docs" / "e1" / "summary.json").write_text(json.dumps({"preregistered": {
        "metric": "recall", "split": "val", "baseline": "cap_only", "primary": primary, "controls": controls,
        "ceilings": ceilings}}))
    plan = OmegaConf.create({"title": "T", "plan": "docs/plan.md", "docs": "docs/study.md", "experiments": [
        {"name": "E0", "question": "Q0?", "kind": "ranks", "args": [], "report": "docs/e0/report.md"},
        {"name": "E1", "question": "Q1?", "kind": "study", "config": "conf/e1.yaml"},
        {"name": "E2", "question": "Q2?", "kind": "pending", "why": "not run yet"}]})
    text = markdown(plan, tmp_path)
    assert "## E0: Q0?" in text and "0.855 [0.812, 0.895]" in text and "0.047 [0.025, 0.072]" in text
    assert "img +0.040 [+0.010, +0.070] (p Holm 0.004); ranked -0.010 [-0.030, +0.010] (p Holm 0.400)" in text
    assert "So img raises it (family-wise 0.05)." in text and "Control mismatch: +0.000" in text
    # one sentence per (metric, baseline) the plan compares on
    assert ("`recall` on val, against self_train: ranked +0.020 [-0.010, +0.050] (p Holm 0.400); soft +0.012 "
            "[-0.003, +0.026] (p Holm 0.006). So soft raises it by the items' permutation test, though its interval "
            "over seeds and items holds 0 (1 of 4 seeds the other way) (family-wise 0.05).") in text
    assert "Ceiling oracle, `gen_exact`: identical to cap_only on every item and seed" in text
    assert "Ceiling oracle, `recall` against cap_only: +0.300 [+0.250, +0.350] (p <0.001)." in text
    assert "`gen_exact` on val, against cap_only: txt -0.050 [-0.080, -0.020] (p Holm 0.004). So txt lowers it" in text
    assert "[the plan](plan.md)" in text  # the plan beside the page, as the config names it
    assert "[e1.md](e1.md)" in text and "[e0/report.md](e0/report.md)" in text
    assert "## E2: Q2?" in text and "Not answered: not run yet" in text


def test_the_page_states_each_experiments_run_time_and_their_total(tmp_path):
    """A study's run time is the sum of its steps' wall times: each config's mean train time times
    its runs, plus its mean eval time times runs x splits (the base model: evaluation only)."""
    (tmp_path / "docs" / "e0").mkdir(parents=True)
    (tmp_path / "docs" / "e0" / "summary.json").write_text(json.dumps({
        "test": {"kind/heldout_objects/gen_correct": [0.8, 0.7, 0.9], "kind/heldout_objects/cap_correct": [0.1, 0.0, 0.2],
                 "kind/heldout_objects/chance": 0.25},
        "wall_seconds": 600.0, "threads": 2, "machine": {"cpu": "AMD EPYC", "cpu_count": 2}}))
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "e1.yaml").write_text("docs: docs/e1.md\n")
    (tmp_path / "docs" / "e1").mkdir()
    wall = {"cap_only": {"train": 60.0, "eval": 30.0, "n_train": 4},   # 4 x 60 + 4 x 2 x 30 = 480 s
            "img": {"train": 120.0, "eval": 30.0, "n_train": 4},       # 4 x 120 + 4 x 2 x 30 = 720 s
            "base": {"train": None, "eval": 60.0, "n_train": 0}}       # 1 x 2 x 60 = 120 s
    (tmp_path / "docs" / "e1" / "summary.json").write_text(json.dumps({
        "preregistered": {"metric": "recall", "split": "val", "baseline": "cap_only", "primary": [], "controls": []},
        "summary": [{"split": "val"}, {"split": "test"}], "wall_seconds": wall,
        "meta": {"runs": {"command": "python -m recon_ft.experiments.study conf/e1.yaml --jobs 2", "elapsed_s": 690.0}}}))
    (tmp_path / "conf" / "e2.yaml").write_text("docs: docs/e2.md\n")
    (tmp_path / "docs" / "e2").mkdir()
    (tmp_path / "docs" / "e2" / "summary.json").write_text(json.dumps({"preregistered": None}))
    plan = OmegaConf.create({"title": "T", "plan": "docs/plan.md", "docs": "docs/study.md", "experiments": [
        {"name": "E0", "question": "Q0?", "kind": "ranks", "args": [], "report": "docs/e0/report.md"},
        {"name": "E1", "question": "Q1?", "kind": "study", "config": "conf/e1.yaml"},
        {"name": "E2", "question": "Q2?", "kind": "study", "config": "conf/e2.yaml"}]})
    text = markdown(plan, tmp_path)
    assert "- Wall time: 10 min, one process with 2 threads (AMD EPYC, 2 CPUs)." in text
    assert ("- Wall time: 8 finetuning runs and their evaluations, 22 min of run time (the sum of each step's wall "
            "time), 12 min elapsed with `python -m recon_ft.experiments.study conf/e1.yaml --jobs 2`.") in text
    assert "- Wall time: not recorded by its run." in text  # E2's summary has none
    assert "## Wall time\n\nThe run time of E0 + E1: 32 min (each experiment's line above says how it was counted); not recorded: E2." in text


def test_metrics_the_plan_reports_beside_the_answer_come_from_the_reports_differences(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "e3.yaml").write_text("docs: docs/e3.md\n")
    (tmp_path / "docs" / "e3").mkdir(parents=True)
    diff = {"config": "txt_1", "split": "val", "metric": "t2i2t/synthetic_kind_first", "mean": -0.08,
            "ci_low": -0.123, "ci_high": -0.037, "p": 0.01}
    (tmp_path / "docs" / "e3" / "summary.json").write_text(json.dumps({
        "preregistered": {"metric": "gen_kind_large", "split": "val", "baseline": "no_cycle", "primary": [],
                          "controls": []},
        "differences": [diff, diff | {"split": "test", "mean": 0.5}, diff | {"metric": "gen/clip_score", "mean": 1.0}]}))
    plan = OmegaConf.create({"title": "T", "plan": "docs/plan.md", "docs": "docs/study.md", "experiments": [
        {"name": "E3", "question": "Q3?", "kind": "study", "config": "conf/e3.yaml",
         "beside": [{"metric": "t2i2t/synthetic_kind_first", "what": "the critic's kind reading"}]}]})
    text = markdown(plan, tmp_path)
    assert ("- Beside it, the critic's kind reading (`t2i2t/synthetic_kind_first`, exploratory: paired t-test over "
            "seeds): txt_1 -0.080 [-0.123, -0.037] (p 0.010).") in text  # the primary split's only


def test_beside_needs_a_metric_and_what_it_is(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("title: t\nplan: p.md\ndocs: s.md\nexperiments:\n  - {name: E3, question: q, kind: study, "
                    "config: c.yaml, beside: [{metric: m}]}\n")
    with pytest.raises(ValueError, match=r"E3.*beside: is a study experiment's list of \{metric, what\}"):
        load_plan(path)
