"""Logger builders that need more than a class name."""

from __future__ import annotations

import logging
import csv
import netrc
import os

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

log = logging.getLogger(__name__)


def _wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(project: str = "recon_ft", name: str | None = None, save_dir: str = ".", offline=None, **kwargs):
    """A WandbLogger that runs offline when no credentials are configured (sync later with
    `wandb sync <save_dir>/wandb/offline-run-*`) instead of prompting for a key."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = os.environ.get("WANDB_MODE") == "offline" or not _wandb_credentials()
    if offline:
        log.warning("wandb: no credentials found, logging offline to %s", save_dir)
    return WandbLogger(project=project, name=name, save_dir=save_dir, offline=offline, **kwargs)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; this one keeps it and
    appends, so a run resumed into its own folder keeps the history before the checkpoint. A
    resumed run's rows for steps after the checkpoint follow the interrupted run's rows."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        # known keys: a new key rewrites the file with the union of both headers, old rows kept
        self.metrics_keys = sorted(header)


class AppendingCSVLogger(CSVLogger):
    """CSVLogger (logs/metrics.csv) that appends to an existing file instead of deleting it."""

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
