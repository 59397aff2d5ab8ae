"""Compose config -> instantiate the parts -> fit. `train.py` at the top level is the Hydra entry."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightning.pytorch.utilities.exceptions import SIGTERMException

from recon_ft.training.callbacks import Preemption
from recon_ft.training.module import ReconModule
from recon_ft.training.checks import check_checkpoint_file, check_training_config
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
        base_dropout=cfg.get("base_dropout", True),
        term_grad_norms_every_n_steps=cfg.get("term_grad_norms_every_n_steps", 0),
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


class Interrupted(SystemExit):
    """A run stopped by a signal (SIGTERM, or a SLURM warning signal) before its last step. Its
    exit status is 128 + the signal's number (143 for SIGTERM, 138 for SIGUSR1, 140 for SIGUSR2), as
    a shell reports a process the signal ended: a scheduler or a sweep sees a run that did not finish."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`, with `auto` read as the run folder's checkpoints/last.ckpt when there is one
    (a requeued or rerun job resumes) and None otherwise (a fresh start)."""
    path = cfg.get("ckpt_path")
    if path != "auto":
        return path or None
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(check_checkpoint_file(last))
    log.info("ckpt_path=auto: no %s, starting from the beginning", last)
    return None


def _interrupted(cfg: DictConfig, trainer: L.Trainer, preemption: Preemption | None) -> Interrupted:
    signum = (preemption.signum if preemption else None) or signal.SIGTERM
    saved = preemption.saved_path if preemption else None
    name = signal.Signals(signum).name
    if saved is not None:
        where = (f"checkpoint of step {preemption.saved_step} in {saved}; resume with the same command and "
                 f"ckpt_path=auto hydra.run.dir={cfg.run_dir}")
    else:
        where = "no checkpoint written at this step (the last periodic one, if any, is in checkpoints/)"
    if is_rank_zero():
        print(f"interrupted by {name} at step {trainer.global_step} of {trainer.max_steps}: {where}",
              file=sys.stderr, flush=True)
    return Interrupted(signum, trainer.global_step, saved)


def fit(cfg: DictConfig) -> tuple[L.Trainer, ReconModule]:
    """Build and fit. A signal (see callbacks.Preemption) ends it with `Interrupted` once a
    resumable checkpoint of the step in progress is written."""
    check_training_config(cfg)  # before any model is built
    _one_line_per_log_message()
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir)
    ckpt_path = resolve_ckpt_path(cfg)
    if is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    module = build_module(cfg)
    datamodule = build_datamodule(cfg, module.captioner, module.generator)
    trainer = build_trainer(cfg)
    module.base_metrics = {}
    preemption = next((cb for cb in trainer.callbacks if isinstance(cb, Preemption)), None)
    if preemption is not None:
        preemption.install()
    try:
        if cfg.get("validate_base", True) and not ckpt_path and trainer.limit_val_batches != 0:
            # The base models' validation (logged at step 0): what the finetuning is measured against.
            trainer.validate(module, datamodule=datamodule, verbose=False)
            module.base_metrics = _floats(trainer.callback_metrics)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        interrupted = _interrupted(cfg, trainer, preemption)
        if preemption is not None and preemption.deferred is not None:
            preemption.deferred()  # e.g. submitit's: requeue the job (it exits)
        raise interrupted from None
    finally:
        if preemption is not None:
            preemption.uninstall()
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
