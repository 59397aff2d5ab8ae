"""The default zoo built from scratch reaches its competence targets (pytest -m slow; about 20 min
on 2 CPU cores). The summary uses eval.py's scorers and generation settings on val items."""

from __future__ import annotations

import pytest

from recon_ft.zoo import get_recipe
from recon_ft.zoo.build import build_zoo
from recon_ft.zoo.competence import TARGETS, report


@pytest.mark.slow
def test_default_zoo_meets_its_targets(tmp_path):
    record = build_zoo(get_recipe("default"), tmp_path / "zoo")
    summary = record["competence"]
    print(report(summary), "\nseconds:", record["seconds"])
    missed = {name: summary[name] for name, target in TARGETS.items() if summary[name] < target}
    assert not missed, f"targets missed: {missed}\n{report(summary)}"
    assert (tmp_path / "zoo" / "captioner" / "model.safetensors").is_file()
    assert (tmp_path / "zoo" / "generator" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
