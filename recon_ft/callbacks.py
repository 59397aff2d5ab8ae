"""Callbacks of a training run."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

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
        self._exported_step = trainer.global_step
        save_captioner_adapter(pl_module.captioner, self.dirpath / "captioner")
        save_generator_adapter(pl_module.generator, self.dirpath / "generator")
        log.info("adapters written to %s (step %d)", self.dirpath, trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.on_checkpoint:
            self.export(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.export(trainer, pl_module)
