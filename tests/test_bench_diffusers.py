"""The side-by-side harness against diffusers' LoRA example: both programs get the same pipeline
and pairs, and our side trains the generator's LoRA with L_gen alone."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from recon_ft.experiments import bench_diffusers as bd
from recon_ft.training.run import fit
from tests.conftest import compose_config


def test_both_programs_get_the_same_pipeline_pairs_and_settings(tmp_path):
    prep = bd.prepare(tmp_path, n_images=6)
    assert (prep["pipeline"] / "model_index.json").is_file()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (prep["pipeline"] / part).is_dir(), part
    ours = [json.loads(line) for line in prep["jsonl"].read_text().splitlines()]
    theirs = [json.loads(line) for line in (prep["images"] / "metadata.jsonl").read_text().splitlines()]
    assert len(ours) == len(theirs) == 6
    for a, b in zip(ours, theirs):
        assert (prep["jsonl"].parent / a["image"]) == prep["images"] / b["file_name"]
        assert a["caption"] == b["text"] and a["caption"]

    theirs_cmd = bd.diffusers_command(Path("train_text_to_image_lora.py"), prep, 5, 4, tmp_path / "d")
    for flag in ("--train_batch_size=4", "--max_train_steps=5", f"--rank={bd.RANK}", "--lr_scheduler=constant",
                 f"--learning_rate={bd.LEARNING_RATE}", f"--resolution={prep['resolution']}"):
        assert flag in theirs_cmd, flag


class Snapshot(L.Callback):
    """Keeps the trainable parameters as training starts."""

    start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, module):
        Snapshot.start = {k: v.detach().clone() for k, v in module.trainable_named_parameters().items()}


def test_our_side_trains_only_the_unet_adapters_with_l_gen(tmp_path):
    prep = bd.prepare(tmp_path / "prep", n_images=8)
    overrides = bd.ours_command(prep, steps=2, batch_size=4, out=tmp_path / "run")[2:]  # after python train.py
    snapshot = ["+callbacks.snapshot._target_=tests.test_bench_diffusers.Snapshot", "trainer.log_every_n_steps=1"]
    cfg = compose_config("train", *overrides, *snapshot)
    assert cfg.generator.pretrained == str(prep["pipeline"])
    assert cfg.generator.unet_adapter.r == bd.RANK and cfg.generator.unet_adapter.alpha == bd.RANK

    trainer, module = fit(cfg)
    assert trainer.global_step == 2
    assert {k for k in trainer.callback_metrics if k.startswith("train/loss_")} == {"train/loss_gen"}
    start = Snapshot.start
    moved = {k for k, v in module.trainable_named_parameters().items() if not torch.equal(v, start[k])}
    assert moved, "no adapter moved"
    assert all(k.startswith("generator.unet.") for k in moved), sorted(moved)[:3]
