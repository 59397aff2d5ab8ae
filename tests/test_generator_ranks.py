"""E0's probe: the candidates, the per-object verdicts and the summary, on hand-made scores."""

from __future__ import annotations

import pytest

from recon_ft.data.synthetic import Scene, Shape, parse_caption
from recon_ft.experiments.generator_ranks import _rows, edits, read_rows, report, summarize, write_rows

SCENE = Scene((Shape("triangle", "red", "small"), Shape("circle", "blue", "large")))  # red triangle: held out


def test_every_single_attribute_edit_once():
    out = edits(SCENE)
    assert len(out) == 2 * (3 + 5 + 1)  # per object: 3 other kinds, 5 other colours, the other size
    assert len({caption for _, _, caption in out}) == len(out)
    for position, attribute, caption in out:
        edited = parse_caption(caption)
        changed = [(i, a) for i in range(2) for a in ("kind", "colour", "size")
                   if getattr(edited.objects[i], a) != getattr(SCENE.objects[i], a)]
        assert changed == [(position, attribute)]


def test_rows_judge_each_object_attribute_against_its_own_edits():
    truth = "a small red triangle left of a large blue circle"
    said = "a small red star left of a large blue circle"  # the captioner swaps the held-out kind
    candidates = [truth, said, *(c for _, _, c in edits(SCENE))]
    scores = [1.0, 2.0] + [3.0] * len(edits(SCENE))
    # object 0's kind edits: one of them (the star) scores below the truth
    star = candidates.index(said, 2)
    scores[star] = 0.5
    rows = {(r["object"], r["attribute"]): r for r in _rows("test", 7, SCENE, said, candidates, scores)}
    assert rows[(0, "kind")]["gen_correct"] == 0 and rows[(0, "kind")]["cap_correct"] == 0
    assert rows[(0, "colour")]["gen_correct"] == 1 and rows[(0, "colour")]["cap_correct"] == 1
    assert rows[(1, "kind")]["gen_correct"] == 1 and rows[(1, "kind")]["heldout_object"] == 0
    assert rows[(0, "kind")]["heldout_object"] == 1 and rows[(0, "kind")]["values"] == 4
    first = rows[(0, "kind")]
    assert first["truth_top"] == 0 and first["truth_beats_captioner"] == 1 and first["captioner_exact"] == 0


def test_summary_means_chance_and_intervals(tmp_path):
    truth = "a small red triangle left of a large blue circle"
    candidates = [truth, truth, *(c for _, _, c in edits(SCENE))]
    good = _rows("test", 0, SCENE, truth, candidates, [0.0] + [1.0] * (len(candidates) - 1))
    bad = _rows("test", 1, SCENE, truth, candidates, [2.0] + [1.0] * (len(candidates) - 1))
    write_rows(good + bad, tmp_path / "items.csv")
    summary = summarize(read_rows(tmp_path / "items.csv"))["test"]
    assert summary["items"] == 2
    mean, low, high = summary["kind/all/gen_correct"]
    assert mean == 0.5 and low == 0.0 and high == 1.0
    assert summary["kind/all/cap_correct"][0] == 1.0  # the captioner said the truth
    assert summary["kind/all/chance"] == 0.25 and summary["colour/all/chance"] == pytest.approx(1 / 6)
    assert summary["truth_top"][0] == 0.5 and "truth_beats_captioner" not in summary


def test_the_report_states_the_runs_wall_time_where_run_json_recorded_it():
    run = {"command": "python -m recon_ft.experiments.generator_ranks --items 2", "zoo": "default-x"}
    assert "It took" not in report(run)  # an older run.json: nothing invented
    text = report(run | {"wall_seconds": 754.0, "threads": 2, "machine": {"cpu": "AMD EPYC", "cpu_count": 2}})
    assert "It took 13 min with 2 threads on AMD EPYC (2 CPUs)." in text
