"""Logger builders that need more than a class name."""

from __future__ import annotations

import logging
import netrc
import os

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
