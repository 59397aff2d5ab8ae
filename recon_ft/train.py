"""Compose config -> instantiate the parts -> fit. `train.py` at the top level is the Hydra entry."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recon_ft.module import ReconModule
from recon_ft.settings import check_training_config
from recon_ft.utils import is_rank_zero

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig, captioner, generator):
    """The data config, told the two models' image views (size, normalization) by the models."""
    return instantiate(
        cfg.data,
        caption_view={
            "size": captioner.image_size,
            "mean": captioner.mean.flatten().tolist(),
            "std": captioner.std.flatten().tolist(),
        },
        generator_view={"size": generator.image_size},
    )


def build_module(cfg: DictConfig) -> ReconModule:
    captioner = instantiate(cfg.captioner)
    generator = instantiate(cfg.generator)
    return ReconModule(
        captioner,
        generator,
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        seed=cfg.seed,
        max_nonfinite_steps=cfg.get("max_nonfinite_steps", 10),
        frozen_cache=OmegaConf.to_container(cfg.frozen_cache, resolve=True) if cfg.get("frozen_cache") else None,
    )


def build_trainer(cfg: DictConfig, **overrides) -> L.Trainer:
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()] or False
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    return instantiate(cfg.trainer, logger=loggers, callbacks=callbacks, **overrides)


def fit(cfg: DictConfig) -> tuple[L.Trainer, ReconModule]:
    check_training_config(cfg)  # before any model is built
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module.captioner, module.generator)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return trainer, module


def train(cfg: DictConfig) -> dict:
    """Fit and return the final logged metrics (floats)."""
    trainer, _ = fit(cfg)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
