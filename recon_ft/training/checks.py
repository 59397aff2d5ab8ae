"""Checks of a training config that need no model: numeric ranges and the checkpoint to resume
from, run before anything is built (building real models takes seconds to minutes), each failing
with one line naming the option or file and what was expected."""

from __future__ import annotations

import zipfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from recon_ft.method.frozen_cache import CacheConfig
from recon_ft.method.objective import LossConfig
from recon_ft.training.optim import OptimConfig
from recon_ft.utils import expect


def at_least(option: str, value, low, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    expect(isinstance(value, (int, float)) and value >= low, option, f">= {low}", value)


def check_training_config(cfg: DictConfig) -> None:
    """Every setting with a valid range, and `ckpt_path`; ValueError / FileNotFoundError otherwise."""
    loss = LossConfig.coerce(OmegaConf.to_container(cfg.loss, resolve=True))
    check_unpaired(loss, cfg.data.get("unpaired") or {})
    OptimConfig.coerce(OmegaConf.to_container(cfg.optim, resolve=True))
    if cfg.get("frozen_cache"):
        CacheConfig.coerce(OmegaConf.to_container(cfg.frozen_cache, resolve=True))
    at_least("max_nonfinite_steps", cfg.get("max_nonfinite_steps", 10), 1)
    data = cfg.data
    at_least("data.batch_size", data.get("batch_size", 8), 1)
    at_least("data.eval_batch_size", data.get("eval_batch_size"), 1, allow_none=True)
    at_least("data.num_workers", data.get("num_workers", 0), 0)
    at_least("data.max_words", data.get("max_words"), 1, allow_none=True)
    trainer = cfg.trainer
    at_least("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), 1)
    at_least("trainer.log_every_n_steps", trainer.get("log_every_n_steps", 50), 1)
    at_least("trainer.max_steps", trainer.get("max_steps", -1), -1)
    samples = (cfg.get("callbacks") or {}).get("validation_samples")
    if samples:
        at_least("callbacks.validation_samples.num_items", samples.get("num_items", 4), 0)
        steps = (samples.get("generation") or {}).get("num_inference_steps")
        at_least("callbacks.validation_samples.generation.num_inference_steps", steps, 1, allow_none=True)
    if cfg.get("ckpt_path") and cfg.ckpt_path != "auto":  # auto: checked once found (training/run.py)
        check_checkpoint_file(cfg.ckpt_path)


def check_unpaired(loss: LossConfig, unpaired) -> None:
    """An unpaired term needs its stream: without one it would silently never be computed."""
    for term, stream in (("lambda_img_unpaired", "images"), ("lambda_txt_unpaired", "texts")):
        if getattr(loss, term) > 0 and unpaired.get(stream) is None:
            raise ValueError(f"loss.{term}={getattr(loss, term)} needs data.unpaired.{stream} (a "
                             + ("folder, glob or Karpathy json of images)" if stream == "images"
                                else ".txt or .jsonl file of captions)"))
    at_least("data.unpaired.batch_size", unpaired.get("batch_size", 1), 1)
    at_least("data.unpaired.every_n_steps", unpaired.get("every_n_steps", 1), 1)


def check_checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file that exists and is a whole torch.save archive (a zip whose central
    directory, written last, is present): a copy cut short fails here with its name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)")
    return path
