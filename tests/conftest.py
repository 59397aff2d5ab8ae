"""Shared fixtures: tiny random-init models with the real tokenizers, and a fake batch."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from recon_ft.models.captioner import build_blip
from recon_ft.models.generator import build_stable_diffusion

# Composed configs name the synthetic zoo's models (`${zoo:captioner}`): tests use the "smoke" recipe
# (seconds to build, learns nothing) in a private cache, so they neither wait for nor touch a user's
# zoo. Set before anything resolves a config; subprocesses (DDP, train.py) inherit both.
os.environ["RECON_FT_ZOO"] = "smoke"
_CACHE = tempfile.mkdtemp(prefix="recon_ft_cache_")
os.environ["RECON_FT_CACHE"] = _CACHE


def pytest_sessionfinish(session, exitstatus):
    """The private cache (the smoke zoo and its variants, tens of MB) goes with the session."""
    shutil.rmtree(_CACHE, ignore_errors=True)


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
