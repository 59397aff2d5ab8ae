"""The text cycle's timestep probe (docs/t_max_probe.md) and the default it chose."""

from __future__ import annotations

import math

import pytest

from recon_ft.experiments.t_max_probe import markdown, probe, x0_gain


def test_probe_rows_on_the_zoo():
    rows = probe(items=3, timesteps=(10, 999))
    assert [r["t"] for r in rows] == [10, 999]
    # the zoo's zero-terminal-SNR schedule with v-prediction: a_999 = 0, so d x0 / d v = sqrt(1 - a) = 1
    assert rows[1]["dx0/dpred"] == 1.0 and 0 < rows[0]["dx0/dpred"] < 0.2
    for r in rows:
        assert r["gap"] == pytest.approx(r["loss_other"] - r["loss_right"], abs=1e-5)
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
    table = markdown(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| 10 | 0.")


def test_x0_gain_per_prediction_type():
    # SD v1's schedule: a_999 = 0.00466, so sqrt((1 - a) / a) = 14.61 (the issue's figure)
    assert x0_gain(0.00466, "epsilon") == pytest.approx(14.61, abs=0.01)
    assert x0_gain(0.0, "epsilon") == math.inf and x0_gain(0.0, "v_prediction") == 1.0
    assert x0_gain(0.75, "v_prediction") == pytest.approx(0.5)


@pytest.mark.parametrize("overrides, t_max", [([], 700), (["loss=paper"], None)])
def test_t_max_default(overrides, t_max, cfg_train):
    assert cfg_train(*overrides).loss.t_max == t_max
