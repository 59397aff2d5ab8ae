"""Integration: train.py's config with an image folder and a caption file as unpaired streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from recon_ft.training.run import fit
from tests.test_train import RANDOM_INIT, SMALL, SYNTHETIC_SMALL, compose_train, last_logged, metrics_rows, \
    trainable_state
from tests.test_unpaired_data import write_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def unpaired(tmp_path_factory) -> list[str]:
    """6 images and a file that is not one; 5 captions, an empty line and an over-long one. The
    unpaired batch of 2 over 8 steps draws 16 images: the broken file at least twice."""
    root = tmp_path_factory.mktemp("unpaired")
    write_images(root / "images", n=6)
    (root / "captions.txt").write_text("a small red circle\na large blue star\n\na green square\n"
                                       + "a red circle " * 20 + "\na small purple triangle\na star\n")
    return [f"data.unpaired.images={root / 'images'}", f"data.unpaired.texts={root / 'captions.txt'}",
            "data.unpaired.batch_size=2", "loss.lambda_img_unpaired=1", "loss.lambda_txt_unpaired=1",
            "loss.unpaired_rank_k=2", "loss.unpaired_rank_draws=2", "loss.unpaired_text_sampling_steps=2",
            "trainer.max_steps=8"]


@pytest.fixture(scope="module")
def straight(unpaired, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    trainer, module = fit(compose_train(run_dir, *unpaired))
    return run_dir, trainer, module


def test_both_unpaired_terms_are_logged_and_bad_items_counted_once(straight):
    run_dir, trainer, module = straight
    assert trainer.global_step == 8
    rows = [r for r in metrics_rows(run_dir) if r.get("train/loss_i2t2i_unpaired")]
    assert len(rows) == 8  # every step, both terms, finite
    for key in ("train/loss_i2t2i_unpaired", "train/loss_t2i2t_unpaired", "train/unpaired/ranked_not_beam"):
        assert all(torch.isfinite(torch.tensor(float(r[key]))) for r in rows), key
    # the broken image drawn at least twice, counted once; the empty and over-long lines once each
    assert sum(s == "images" for s, _ in module._bad_unpaired) == 1
    assert last_logged(run_dir, "data/bad_unpaired_images") == 1.0
    assert last_logged(run_dir, "data/bad_unpaired_texts") == 2.0
    assert last_logged(run_dir, "data/bad_samples") == 0.0


class KillAt(L.Callback):
    """kill -9 of its own process at the start of optimizer step `step` (1-based): nothing saved."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGKILL)


def test_kill_9_and_resume_from_last_ckpt_equals_the_uninterrupted_run(straight, unpaired, tmp_path):
    """Killed at step 6 (the last checkpoint is step 4's), resumed from last.ckpt: the unpaired streams
    draw the same items, captions and noise, and the adapters end equal to the uninterrupted run's."""
    run_dir = tmp_path / "killed"
    killed = subprocess.run(
        [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *RANDOM_INIT, *SMALL, *SYNTHETIC_SMALL, *unpaired,
         "+callbacks.kill._target_=tests.test_unpaired_train.KillAt", "+callbacks.kill.step=6"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    streams = state["CaptionDataModule"]["unpaired"]
    assert streams == {"images": {"drawn": 8, "size": 7}, "texts": {"drawn": 8, "size": 5}}
    trainer, resumed = fit(compose_train(tmp_path / "resumed", *unpaired,
                                         f"ckpt_path={run_dir / 'checkpoints/last.ckpt'}"))
    assert trainer.global_step == 8
    want, got = trainable_state(straight[2]), trainable_state(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_resume_on_other_unpaired_data_is_refused(straight, unpaired, tmp_path):
    ckpt = straight[0] / "checkpoints/step000004.ckpt"
    fewer = [o for o in unpaired if not o.startswith("data.unpaired.texts")]
    other = tmp_path / "other.txt"
    other.write_text("a star\n")
    with pytest.raises(ValueError, match="unpaired streams of sizes"):
        fit(compose_train(tmp_path / "r", *fewer, f"data.unpaired.texts={other}", f"ckpt_path={ckpt}"))


def test_an_unpaired_weight_without_its_stream_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"loss.lambda_txt_unpaired=1 needs data.unpaired.texts"):
        fit(compose_train(tmp_path, "loss.lambda_txt_unpaired=1"))
