"""Samples at every validation: a few fixed items' captions and generated images, to the loggers.

At each validation (the base models' before training included) the first `num_items` items of the
validation set, the same items every time, are captioned by beam search and an image is generated
from each item's reference caption with a fixed seed, so what changes from one validation to the
next is the models. The sampling follows eval.py's conventions (recon_ft.eval.captioning,
recon_ft.eval.generation): the prompt is reference `generation.reference`, the seed is
`item_seed(seed, id, "t2i")`, the image of eval.py's `t2i_0` for that item at the same step count.

What goes where, on rank zero (the other ranks skip it; at step `trainer.global_step`, as the
checkpoints are named):
  - TensorBoard: `samples/generated` (the images, one grid), `samples/source` (the items' images,
    once) and `samples/captions` (a markdown table: item id, caption, references, the prompt in bold);
  - W&B (a logger with `log_image` and `log_table`): the same images and a `samples/captions` table;
  - CSV: `samples.jsonl` in the log folder, one line per item and validation, and
    `samples/step<step>.png` there (the items' images above the generated ones).

The global random streams are left as they were and every module's train/eval mode is restored,
so a run logs the same numbers with and without samples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from recon_ft.eval.captioning import CaptionSettings, beam_captions
from recon_ft.eval.generation import GenerationSettings, generate_images, save_png, to_pil
from recon_ft.eval.seeds import item_seed
from recon_ft.utils import eval_mode

log = logging.getLogger(__name__)


@contextlib.contextmanager
def untouched_rng(device: torch.device):
    """Python's, numpy's and torch's global random states (CPU and `device`) as they were on entry."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


def markdown_table(rows: list[dict]) -> str:
    """Item id, caption and references (the prompt in bold), one row per item."""

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| # | item | caption | references |", "|---|---|---|---|"]
    for i, r in enumerate(rows):
        refs = "; ".join(f"**{cell(x)}**" if x == r["prompt"] else cell(x) for x in r["references"])
        lines.append(f"| {i} | {cell(r['item'])} | {cell(r['caption'])} | {refs} |")
    return "\n".join(lines)


class ValidationSamples(L.Callback):
    """Captions and generated images of the first `num_items` validation items, at every
    validation, to the loggers (see the module docstring); num_items=0 turns it off.

    caption: recon_ft.eval.captioning.CaptionSettings' fields (beam search); generation:
    recon_ft.eval.generation.GenerationSettings' fields (steps, guidance, sampler, reference).
    """

    def __init__(self, num_items: int = 4, caption: dict | None = None, generation: dict | None = None):
        if num_items < 0:
            raise ValueError(f"callbacks.validation_samples.num_items must be >= 0, got {num_items}")
        self.num_items = int(num_items)
        self.caption = CaptionSettings(**(caption or {}))
        self.generation = GenerationSettings(**{"num_inference_steps": 20, **(generation or {})})
        self._items: dict | None = None  # the items' batch, read at the first validation
        self._source_logged = False
        self.seconds: list[float] = []  # the time each validation's samples took

    # -- the items --------------------------------------------------------------------------------
    def _read_items(self, trainer) -> dict | None:
        """The first num_items good items of the validation set, collated as the loader does."""
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            log.warning("validation samples: the validation set cannot be indexed; no samples logged")
            return None
        samples = []
        for index in range(len(dataset)):
            sample = dataset[index]
            if isinstance(sample, dict):  # a bad sample is None (or a BadSample)
                samples.append(sample)
            if len(samples) == self.num_items:
                break
        return loader.collate_fn(samples) if samples else None

    # -- one validation ---------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.num_items == 0 or trainer.sanity_checking or not trainer.is_global_zero or not trainer.loggers:
            return
        start = time.perf_counter()
        with untouched_rng(pl_module.device), eval_mode(pl_module), torch.no_grad():
            if self._items is None:
                self._items = self._read_items(trainer) or {}  # {}: none to read, not tried again
            if not self._items:
                return
            rows, source, generated = self._sample(pl_module, self._items)
        step = trainer.global_step
        for logger in trainer.loggers:
            self._log(logger, step, rows, source, generated)
        self._source_logged = True
        self.seconds.append(time.perf_counter() - start)
        log.info("validation samples of step %d: %.1f s", step, self.seconds[-1])

    def _sample(self, pl_module, items: dict) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
        ids, refs = items["id"], items["references"]
        device = pl_module.device
        captions = beam_captions(pl_module.captioner, items["image_cap"].to(device), self.caption)
        prompts = [r[self.generation.reference % len(r)] for r in refs]
        seed = int(getattr(pl_module, "seed", 0))
        seeds = [item_seed(seed, i, "t2i", 0) for i in ids]
        generator = pl_module.generator
        steps = self.generation.steps(tiny=False)  # null: eval.py's 50
        generated = generate_images(generator, prompts, seeds, self.generation, steps).float().cpu()
        source = ((items["image_gen"].float() + 1) / 2).clamp(0, 1).cpu()  # as eval.py's source images
        rows = [{"item": _plain(i), "caption": c, "references": list(r), "prompt": p, "seed": s}
                for i, c, r, p, s in zip(ids, captions, refs, prompts, seeds)]
        return rows, source, generated

    # -- the loggers ------------------------------------------------------------------------------
    def _log(self, logger, step: int, rows: list[dict], source: torch.Tensor, generated: torch.Tensor) -> None:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment
            if not self._source_logged:
                writer.add_images("samples/source", source, global_step=step)
            writer.add_images("samples/generated", generated, global_step=step)
            writer.add_text("samples/captions", markdown_table(rows), global_step=step)
            writer.flush()
        elif hasattr(logger, "log_image") and hasattr(logger, "log_table"):  # WandbLogger
            labels = [f"{r['item']}: {r['prompt']}" for r in rows]
            if not self._source_logged:
                logger.log_image("samples/source", images=[to_pil(x) for x in source], step=step,
                                 caption=[str(r["item"]) for r in rows])
            logger.log_image("samples/generated", images=[to_pil(x) for x in generated], step=step, caption=labels)
            logger.log_table("samples/captions", columns=["step", "item", "caption", "references", "prompt"],
                             data=[[step, str(r["item"]), r["caption"], "; ".join(r["references"]), r["prompt"]]
                                   for r in rows], step=step)
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir)
            image = f"samples/step{step:06d}.png"
            grid = torch.cat([torch.cat(list(source), dim=2), torch.cat(list(generated), dim=2)], dim=1)
            save_png(grid, folder / image)
            with (folder / "samples.jsonl").open("a") as f:
                for i, r in enumerate(rows):
                    f.write(json.dumps({"step": step, **r, "image": image, "column": i}) + "\n")


def _plain(item_id):
    if isinstance(item_id, torch.Tensor):
        item_id = item_id.item()
    return item_id if isinstance(item_id, (int, str)) else str(item_id)
