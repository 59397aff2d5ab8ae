"""Samples at every validation (recon_ft/eval/live_samples.py): a tiny run with the TensorBoard and CSV
loggers and a W&B-like logger, read back from what each one received."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image

from recon_ft.eval.generation import quantize
from recon_ft.eval.seeds import item_seed
from recon_ft.training.run import fit
from tests import conftest

ITEMS = 2
STEPS = 2  # sampling steps
LOGGERS = ["logger=[csv,tensorboard]", "+logger.wandb_like._target_=tests.test_validation_samples.WandbLike"]
COMMON = [
    "captioner=tiny_blip", "generator=tiny_sd", "data.train.size=16", "data.val.size=8", "data.batch_size=4", "data.eval_batch_size=8",
    "trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1", "callbacks.model_checkpoint.every_n_train_steps=100",
    f"callbacks.validation_samples.generation.num_inference_steps={STEPS}",
]
VALIDATED_AT = [0, 2, 4]  # the base models', then after steps 2 and 4


class WandbLike(Logger):
    """Records the calls WandbLogger would get (its log_image / log_table signatures), no network."""

    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.tables: list[dict] = []

    name = "wandb_like"
    version = "0"

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs) -> None:
        self.images.append({"key": key, "images": images, "step": step, **kwargs})

    def log_table(self, key: str, columns=None, data=None, dataframe=None, step=None) -> None:
        self.tables.append({"key": key, "columns": columns, "data": data, "step": step})


def train(run_dir: Path, *overrides: str, loggers=tuple(LOGGERS)):
    return fit(conftest.compose_train(run_dir, *COMMON, *loggers, *overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("samples")
    trainer, module = train(run_dir, f"callbacks.validation_samples.num_items={ITEMS}")
    return run_dir, trainer, module


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def expected(trainer, module) -> tuple[list[dict], torch.Tensor, list[str]]:
    """The first ITEMS validation items, and what the trained models make of them now."""
    dataset = trainer.val_dataloaders.dataset
    items = [dataset[i] for i in range(ITEMS)]
    seeds = [item_seed(module.seed, it["id"], "t2i") for it in items]
    with torch.no_grad():
        captions = module.captioner.eval().generate(torch.stack([it["image_cap"] for it in items]),
                                                    num_beams=3, max_length=20, min_length=5)
        images = module.generator.eval().sample([it["references"][0] for it in items], seeds,
                                                num_inference_steps=STEPS)
    return items, quantize(images.float()), captions


def test_tensorboard_gets_the_same_items_images_and_captions_at_every_validation(run):
    run_dir, trainer, module = run
    acc = events(run_dir)
    size = module.generator.image_size
    generated = acc.Images("samples/generated")
    assert [e.step for e in generated] == VALIDATED_AT
    assert all((e.width, e.height) == (ITEMS * size, size) for e in generated)  # one row of ITEMS images
    source = acc.Images("samples/source")
    assert [e.step for e in source] == [0] and (source[0].width, source[0].height) == (ITEMS * size, size)

    texts = acc.Tensors("samples/captions/text_summary")
    assert [e.step for e in texts] == VALIDATED_AT
    tables = [table_rows(e.tensor_proto.string_val[0].decode()) for e in texts]
    items, images, captions = expected(trainer, module)
    for rows in tables:  # the same items, in the same order, every time
        assert [r[1] for r in rows] == [str(it["id"]) for it in items]
        for row, it in zip(rows, items):
            refs = row[3].split("; ")
            assert refs[0] == f"**{it['references'][0]}**"  # the prompt, in bold
            assert [r.strip("*") for r in refs] == it["references"]
    # the last validation's captions and images are the final models' (the same seeds)
    assert [r[2] for r in tables[-1]] == captions
    logged = np.asarray(Image.open(io.BytesIO(generated[-1].encoded_image_string)).convert("RGB"))
    strip = torch.cat(list(images), dim=2).permute(1, 2, 0).numpy() * 255
    assert np.abs(logged.astype(np.float32) - strip).max() <= 1.0  # 8-bit PNG of the same pixels
    # the images changed with the models: the base's differ from the last
    first = np.asarray(Image.open(io.BytesIO(generated[0].encoded_image_string)).convert("RGB"))
    assert not np.array_equal(first, logged)


def test_wandb_like_logger_gets_images_and_a_table(run):
    _, trainer, module = run
    logger = next(lg for lg in trainer.loggers if isinstance(lg, WandbLike))
    items, _, captions = expected(trainer, module)
    ids = [str(it["id"]) for it in items]
    assert [(c["key"], c["step"]) for c in logger.images] == [("samples/source", 0)] + [
        ("samples/generated", s) for s in VALIDATED_AT]
    size = module.generator.image_size
    for call in logger.images:
        assert [im.size for im in call["images"]] == [(size, size)] * ITEMS
        assert len(call["caption"]) == ITEMS
    assert logger.images[-1]["caption"] == [f"{i}: {it['references'][0]}" for i, it in zip(ids, items)]
    assert [(t["key"], t["step"]) for t in logger.tables] == [("samples/captions", s) for s in VALIDATED_AT]
    assert logger.tables[0]["columns"] == ["step", "item", "caption", "references", "prompt"]
    for table, step in zip(logger.tables, VALIDATED_AT):
        assert [row[:2] for row in table["data"]] == [[step, i] for i in ids]
        assert [row[3:] for row in table["data"]] == [["; ".join(it["references"]), it["references"][0]]
                                                      for it in items]
    assert [row[2] for row in logger.tables[-1]["data"]] == captions


def test_csv_run_folder_gets_a_jsonl_and_images(run):
    run_dir, trainer, module = run
    lines = [json.loads(x) for x in (run_dir / "logs/samples.jsonl").read_text().splitlines()]
    items, _, captions = expected(trainer, module)
    assert [(x["step"], x["item"]) for x in lines] == [(s, it["id"]) for s in VALIDATED_AT for it in items]
    assert [x["caption"] for x in lines[-ITEMS:]] == captions
    assert lines[0]["references"] == items[0]["references"] and lines[0]["seed"] == item_seed(0, items[0]["id"], "t2i")
    size = module.generator.image_size
    for step in VALIDATED_AT:
        with Image.open(run_dir / "logs" / f"samples/step{step:06d}.png") as im:
            assert im.size == (ITEMS * size, 2 * size)  # the items' images above the generated ones


def test_no_items_logs_nothing_and_the_numbers_are_the_same(run, tmp_path):
    run_dir, trainer, _ = run
    off_trainer, _ = train(tmp_path, "callbacks.validation_samples.num_items=0")
    acc, off = events(run_dir), events(tmp_path)
    assert not [t for kind in off.Tags().values() if isinstance(kind, list) for t in kind if t.startswith("samples")]
    assert not (tmp_path / "logs/samples.jsonl").exists()
    wandb_like = next(lg for lg in off_trainer.loggers if isinstance(lg, WandbLike))
    assert wandb_like.images == wandb_like.tables == []
    # every number the run logged is the same with samples as without
    tags = acc.Tags()["scalars"]
    assert "val/loss" in tags and "train/loss" in tags and "val/CIDEr" in tags
    assert sorted(off.Tags()["scalars"]) == sorted(tags)
    for tag in tags:
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(e.step, e.value) for e in off.Scalars(tag)], tag
    assert (run_dir / "logs/metrics.csv").read_text() == (tmp_path / "logs/metrics.csv").read_text()


def test_settings_out_of_range_fail_before_any_model_is_built(tmp_path):
    from recon_ft.training.checks import check_training_config

    for override, message in [
        ("num_items=-1", "callbacks.validation_samples.num_items: expected >= 0, got -1"),
        ("generation.num_inference_steps=0",
         "callbacks.validation_samples.generation.num_inference_steps: expected >= 1, got 0"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            check_training_config(conftest.compose_train(tmp_path, f"callbacks.validation_samples.{override}"))


def test_wandb_offline_run_holds_the_images_and_the_table(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trainer, _ = train(tmp_path, "trainer.max_steps=2", f"callbacks.validation_samples.num_items={ITEMS}",
                       loggers=["logger=wandb"])
    # the run's own files folder: where wandb put it depends on the process's earlier wandb runs
    files = [Path(logger.experiment.dir) for logger in trainer.loggers if hasattr(logger.experiment, "dir")]
    for logger in trainer.loggers:
        logger.experiment.finish()
    assert len(files) == 1 and files[0].name == "files"
    media = files[0] / "media"
    assert len(list((media / "images" / "samples").glob("generated_*.png"))) == 2 * ITEMS  # steps 0 and 2
    tables = [json.loads(p.read_text()) for p in (media / "table" / "samples").glob("captions_*.table.json")]
    assert all(t["columns"] == ["step", "item", "caption", "references", "prompt"] for t in tables)
    assert sorted([row[:2] for row in t["data"]] for t in tables) == [[[s, "val-0"], [s, "val-1"]] for s in (0, 2)]
