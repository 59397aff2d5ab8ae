"""The Hydra configuration: every group composes, the paper experiment is the reference setup."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import CONF


@pytest.mark.parametrize(
    "group", ["paths", "captioner", "generator", "data", "loss", "trainer", "logger", "experiment", "debug"]
)
def test_every_option_of_every_group_composes(group, cfg_train):
    eval_only = {"data": {"nocaps"}}  # NoCaps has no training split
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        if option in eval_only.get(group, ()):
            continue
        cfg = cfg_train(f"{group}={option}")
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_paper_experiment_is_the_reference_setup(cfg_train):
    cfg = cfg_train("experiment=paper")
    assert cfg.captioner.pretrained == "Salesforce/blip-image-captioning-base"
    assert cfg.generator.pretrained == "CompVis/stable-diffusion-v1-4"
    assert cfg.captioner.adapter.mode == cfg.generator.unet_adapter.mode == "full"
    assert "attn2" in cfg.generator.unet_adapter.target_modules
    assert cfg.loss.schedule == "alternate" and cfg.loss.label_smoothing == 0.1
    assert cfg.loss.lambda_img == cfg.loss.lambda_txt == 1.0
    assert cfg.data.batch_size == 1 and cfg.trainer.accumulate_grad_batches == 8
    assert cfg.optim.captioner.lr == cfg.optim.generator.lr == 1e-4
    assert cfg.optim.generator.grad_clip == 1.0 and cfg.optim.captioner.grad_clip is None
    assert cfg.optim.schedule == "constant" and cfg.data.max_words == 30



def test_train_and_eval_read_the_same_paths_and_eval_has_no_optim(cfg_train, cfg_eval):
    """One paths group (a run's data and its evaluation's are found alike); the model groups'
    learning rates stay out of eval.py's config."""
    overrides = ("paths.coco=/data/coco", "paths.nocaps=/data/nocaps")
    assert cfg_train(*overrides).paths == cfg_eval(*overrides).paths
    assert cfg_eval().paths.nocaps_images == "data/nocaps/images"
    assert "optim" not in cfg_eval()

def test_wandb_logger_goes_offline_without_credentials(tmp_path, monkeypatch, cfg_train):
    from hydra.utils import instantiate

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    cfg = cfg_train("logger=wandb")
    logger = instantiate(cfg.logger.wandb)
    assert logger._offline is True


def test_zoo_builds_summary_samples_as_eval_does(cfg_eval):
    """The zoo build's competence summary predicts eval.py's numbers only with eval.py's sampling:
    the zoo generator config's guidance (eval's generation.guidance_scale is null: the model's own)
    and its step count; the family variants' configs and builds share the zoo SD's guidance."""
    from recon_ft.zoo.build import GENERATION_KWARGS
    from recon_ft.zoo.families import GUIDANCE

    cfg = cfg_eval()
    variants = [cfg_eval(f"generator={g}").generator for g in ("zoo_sd2", "zoo_sdxl")]
    assert cfg.generation.guidance_scale is None
    assert cfg.generator.guidance_scale == GENERATION_KWARGS["guidance_scale"] == 2.0
    assert (cfg.generation.num_inference_steps or 50) == GENERATION_KWARGS["num_inference_steps"]
    assert [v.guidance_scale for v in variants] == [GUIDANCE["guidance_scale"]] * 2 == [2.0] * 2
