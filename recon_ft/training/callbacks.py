"""Callbacks of a training run."""

from __future__ import annotations

import logging
import os
import signal
import threading
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


class Preemption(L.Callback):
    """Saves a resumable `last.ckpt` at the step where SIGTERM or a SLURM warning signal arrived.

    Lightning's signal connector records a SIGTERM (`trainer.received_sigterm`) and its loops stop
    at the end of the batch in progress by raising SIGTERMException. This callback saves at the end
    of that batch (on_train_batch_end, where the periodic checkpoints are saved, so the resume is
    exact), or, when the signal came during a validation, when the loop stops. `signals` (e.g.
    SIGUSR1, sent by `sbatch --signal`, and SIGUSR2, submitit's) are turned into a SIGTERM; a handler
    one of them had before (submitit's requeue) is kept in `deferred` for the caller to run once
    the checkpoint is written. `signum` is the first signal received (None if none)."""

    def __init__(self, dirpath: str, signals: list[str] | tuple[str, ...] = ("SIGUSR1", "SIGUSR2")):
        self.dirpath = Path(dirpath)
        self.signals = [getattr(signal, name) if isinstance(name, str) else signal.Signals(name) for name in signals]
        self.signum: int | None = None
        self.deferred = None  # the previous handler of the signal received, called by the caller
        self.saved_path: Path | None = None
        self.saved_step: int | None = None
        self._previous: dict = {}

    @property
    def ckpt_path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def install(self) -> None:
        """Turn `signals` into a SIGTERM; before the trainer registers its own handlers (so that
        Lightning's SLURM auto-requeue, which saves in the middle of a step, stays off)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_warning)

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _on_warning(self, signum, frame) -> None:
        log.warning("received %s: stopping after this step", signal.Signals(signum).name)
        if self.signum is None:
            self.signum = signum
            previous = self._previous.get(signum)
            if callable(previous):
                self.deferred = lambda: previous(signum, frame)
        os.kill(os.getpid(), signal.SIGTERM)  # to Lightning's handler: the loops stop after this batch

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.received_sigterm and self.saved_step is None:
            if self.signum is None:
                self.signum = signal.SIGTERM
            self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException):
            if self.signum is None:
                self.signum = signal.SIGTERM
            if self.saved_step is None and trainer.state.fn == "fit" and trainer.global_step > 0:
                self.save(trainer)  # a signal during a validation inside training

    def save(self, trainer) -> None:
        if not weights_finite(trainer.lightning_module, f"checkpoint {self.ckpt_path} not written"):
            return
        trainer.save_checkpoint(self.ckpt_path)
        self.saved_path, self.saved_step = self.ckpt_path, trainer.global_step
        log.warning("interrupted: checkpoint of step %d written to %s", trainer.global_step, self.ckpt_path)
