"""Shared fixtures: the composed train.py / eval.py configs, tiny random-init models with the real
tokenizers, and a fake batch."""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from recon_ft.models.blip import build_blip
from recon_ft.models.sd import build_stable_diffusion

# Composed configs name the synthetic zoo's models (`${zoo:captioner}`): tests use the "smoke" recipe
# (seconds to build, learns nothing) in a private cache, so they neither wait for nor touch a user's
# zoo. Set before anything resolves a config; subprocesses (DDP, train.py) inherit both.
os.environ["RECON_FT_ZOO"] = "smoke"
_CACHE = tempfile.mkdtemp(prefix="recon_ft_cache_")
os.environ["RECON_FT_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    """The private cache (the smoke zoo and its variants, tens of MB) goes with the session."""
    shutil.rmtree(_CACHE, ignore_errors=True)


CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_config(name: str, *overrides: str, return_hydra_config: bool = False):
    """`python <name>.py <overrides>`'s config, composed from conf/ as @hydra.main would, without running
    the app; return_hydra_config adds the hydra: section (sweeper, launcher, callbacks)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_train(run_dir, *overrides: str, return_hydra_config: bool = False):
    """train.py's config. Its run_dir defaults to Hydra's output dir, which exists only inside a Hydra
    run: a test names its own."""
    return compose_config("train", f"run_dir={run_dir}", *overrides, return_hydra_config=return_hydra_config)


def compose_eval(out_dir, *overrides: str):
    """eval.py's config; its out_dir, like train.py's run_dir, is the test's own."""
    return compose_config("eval", f"out_dir={out_dir}", *overrides)


@pytest.fixture
def cfg_train(tmp_path):
    """compose_train writing into the test's tmp_path: cfg_train("data=coco", ...)."""
    return partial(compose_train, tmp_path)


@pytest.fixture
def cfg_eval(tmp_path):
    """compose_eval writing into the test's tmp_path."""
    return partial(compose_eval, tmp_path)


CAPTIONER_ADAPTER = {"mode": "lora", "r": 4, "alpha": 4, "target_modules": r".*text_decoder.*\.(query|value)"}
UNET_ADAPTER = {"mode": "lora", "r": 4, "alpha": 4, "target_modules": ["to_q", "to_v"]}
TEXT_ENCODER_ADAPTER = {"mode": "lora", "r": 4, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}


def tiny_pair(text_encoder_adapter=None, prediction_type="epsilon", **kw):
    captioner = build_blip(tiny={"image_size": 32}, adapter=CAPTIONER_ADAPTER, **kw.get("captioner", {}))
    generator = build_stable_diffusion(
        tiny={"sample_size": 32, "prediction_type": prediction_type},
        unet_adapter=UNET_ADAPTER,
        text_encoder_adapter=text_encoder_adapter,
        **kw.get("generator", {}),
    )
    return captioner, generator


@pytest.fixture(scope="session")
def bridge():
    from recon_ft.method.bridge import VocabBridge
    from recon_ft.models.tokenizers import blip_tokenizer, clip_tokenizer

    return VocabBridge.from_tokenizers(blip_tokenizer(), clip_tokenizer())


def fake_batch(captioner, generator, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
    captions = ["a small red circle", "a large blue square left of a green star", "a purple triangle", "a star"]
    return {
        "image_gen": images,
        "image_cap": captioner.preprocess(images),
        "caption": (captions * b)[:b],
        "references": [[c] for c in (captions * b)[:b]],
        "n_bad": 0,
    }
