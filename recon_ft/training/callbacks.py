"""Callbacks of a training run."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from recon_ft.models.adapters import save_captioner_adapter, save_generator_adapter

log = logging.getLogger(__name__)


class ExportAdapters(L.Callback):
    """Write the adapters in peft / diffusers formats (once, on the main process) whenever a
    checkpoint is saved and when training ends, so an interrupted run has usable adapters too."""

    def __init__(self, dirpath: str, on_checkpoint: bool = True):
        self.dirpath = Path(dirpath)
        self.on_checkpoint = on_checkpoint
        self._exported_step = None

    def export(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or self._exported_step == trainer.global_step:
            return
        if not weights_finite(pl_module, f"adapters not written to {self.dirpath}"):
            return
        self._exported_step = trainer.global_step
        save_captioner_adapter(pl_module.captioner, self.dirpath / "captioner")
        save_generator_adapter(pl_module.generator, self.dirpath / "generator")
        log.info("adapters written to %s (step %d)", self.dirpath, trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.on_checkpoint:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)


def weights_finite(pl_module, skipped: str) -> bool:
    """False (and an error logged) when a trainable weight holds inf or NaN: such weights are never
    written, so the last finite checkpoint and adapters stay on disk."""
    bad = pl_module.nonfinite_parameters() if hasattr(pl_module, "nonfinite_parameters") else []
    if bad:
        log.error("%d trainable weights are non-finite (e.g. %s): %s", len(bad), bad[0], skipped)
    return not bad


class FiniteCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that does not write a checkpoint holding a non-finite trainable weight."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        if weights_finite(trainer.lightning_module, f"checkpoint {filepath} not written"):
            super()._save_checkpoint(trainer, filepath)
