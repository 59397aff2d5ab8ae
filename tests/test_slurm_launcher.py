"""The SLURM launcher config composes into a multirun and takes its resources from the trainer config
(nothing is submitted)."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf

from tests.conftest import CONF

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def compose_multirun(*overrides):
    # what `train.py -m ...` composes before handing the sweep to the launcher (not conftest's
    # compose_train: compose() composes one run and refuses a sweep's `a,b` values)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return GlobalHydra.instance().config_loader().load_configuration(
            "train",
            overrides=["run_dir=/tmp/recon_ft_cfg", "hydra/launcher=slurm", *overrides],
            run_mode=RunMode.MULTIRUN,
        )


def test_slurm_launcher_composes_with_the_trainer_resources():
    cfg = compose_multirun(
        "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "hydra.launcher.partition=gpu",
        "hydra.launcher.timeout_min=90", "loss.lambda_img=0,0.1",
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.tasks_per_node") == 4
    assert OmegaConf.select(cfg, "hydra.launcher.nodes") == 2
    assert launcher.partition == "gpu" and launcher.timeout_min == 90
    # the sweep's values are left to the sweeper, one job each
    assert "loss.lambda_img=0,0.1" in cfg.hydra.overrides.task


def test_slurm_launcher_defaults_follow_a_one_gpu_trainer():
    cfg = compose_multirun("trainer=gpu")
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 1
    assert OmegaConf.select(cfg, "hydra.launcher.nodes") == 1
    assert cfg.hydra.launcher.partition is None and cfg.hydra.launcher.timeout_min == 240


def test_slurm_launcher_requeues_after_a_time_limit_and_resumes_with_ckpt_path_auto():
    cfg = compose_multirun("trainer=gpu", "ckpt_path=auto")
    assert cfg.ckpt_path == "auto"  # a requeued job resumes from its run folder's last.ckpt
    assert cfg.hydra.launcher.max_num_timeout > 0 and cfg.hydra.launcher.signal_delay_s >= 60
