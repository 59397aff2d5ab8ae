"""Compose config -> instantiate the parts -> fit. `train.py` at the top level is the Hydra entry."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recon_ft.training.module import ReconModule
from recon_ft.training.checks import check_training_config
from recon_ft.training.summary import write_summary
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


def _one_line_per_log_message() -> None:
    """Under Hydra the root logger prints every record; Lightning's own console handler would print
    each of its messages a second time."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True


def _floats(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def fit(cfg: DictConfig) -> tuple[L.Trainer, ReconModule]:
    check_training_config(cfg)  # before any model is built
    _one_line_per_log_message()
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module.captioner, module.generator)
    trainer = build_trainer(cfg)
    module.base_metrics = {}
    if cfg.get("validate_base", True) and not cfg.get("ckpt_path") and trainer.limit_val_batches != 0:
        # The base models' validation (logged at step 0): what the finetuning is measured against.
        trainer.validate(module, datamodule=datamodule, verbose=False)
        module.base_metrics = _floats(trainer.callback_metrics)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return trainer, module


def _best_checkpoint(trainer: L.Trainer) -> dict | None:
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path:
            return {"path": cb.best_model_path, "monitor": cb.monitor, "score": float(cb.best_model_score)}
    return None


def train(cfg: DictConfig) -> dict:
    """Fit, print the run's summary, and return the final logged metrics (floats) and, when a
    checkpoint callback monitors a value, its best score as "best/<monitor>" (e.g. best/val/cider_bleu4)."""
    trainer, module = fit(cfg)
    final = _floats(trainer.callback_metrics)
    best = _best_checkpoint(trainer)
    if trainer.is_global_zero:
        print("\n" + write_summary(Path(cfg.run_dir), module.base_metrics, final, best), flush=True)
    if best is not None:
        final = {**final, f"best/{best['monitor']}": best["score"]}
    return final


def objective(cfg: DictConfig, metrics: dict | None) -> float | None:
    """The value a Hydra sweeper optimizes (cfg.optimized_metric, e.g. best/val/cider_bleu4, set by
    conf/hparams_search/optuna.yaml), or None when the config names none."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if not metrics or name not in metrics:
        raise ValueError(f"optimized_metric: {name!r} is not among the run's metrics {sorted(metrics or {})}")
    return float(metrics[name])
