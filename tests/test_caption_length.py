"""Caption length belongs to the captioner, as guidance belongs to the generator: eval.py's
caption.max_length and the caption-validation callback's max_length say null, meaning the
captioner's own `caption_max_length` (its config's: BLIP's 20, BLIP-2's 30); a number still wins.
The default run keeps 20, so its train and eval numbers stay as they were."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf

from recon_ft.eval.pipeline import settings_from
from recon_ft.models.blip import build_blip
from recon_ft.training.validation import CaptionValidation
from tests.conftest import CONF

FAMILY_LENGTH = {"build_blip": 20, "build_git": 20, "build_blip2": 30}


def pair_with(caption_max_length: int):
    return SimpleNamespace(captioner=SimpleNamespace(caption_max_length=caption_max_length),
                           generator=SimpleNamespace(guidance_scale=2.0), tiny_generator=False)


def test_eval_null_is_the_captioners_own_and_a_number_wins(cfg_eval):
    assert cfg_eval().caption.max_length is None
    own, _ = settings_from(cfg_eval(), pair_with(30))
    given, _ = settings_from(cfg_eval("caption.max_length=25"), pair_with(30))
    assert own.caption.max_length == 30 and given.caption.max_length == 25
    assert own.caption.min_length == given.caption.min_length == 5  # min_length stays eval's


def _caption_tokens(captioner) -> int:
    return captioner.last_ids.shape[1]  # the caption's positions of the last generate


def test_generate_and_the_validation_callback_use_the_captioners_own_length():
    """min_length = max_length forces the sequence to exactly that length, so the caption's token
    count shows which length was used: the captioner's own where none is given."""
    captioner = build_blip(tiny={"image_size": 32}, adapter={"mode": "frozen"}, caption_max_length=7)
    p = captioner.prompt_length  # [DEC] a picture of
    assert p == 4 and captioner.caption_max_length == 7
    images = captioner.preprocess(torch.zeros(2, 3, 32, 32))
    captioner.generate(images, num_beams=1, min_length=7)
    assert _caption_tokens(captioner) == 7 - p
    captioner.generate(images, num_beams=1, max_length=9, min_length=9)
    assert _caption_tokens(captioner) == 9 - p

    batch = {"caption": ["a red circle"] * 2, "image_cap": images, "references": [["a red circle"]] * 2}
    trainer, module = SimpleNamespace(sanity_checking=False), SimpleNamespace(captioner=captioner)
    for callback, expected in ((CaptionValidation(num_beams=1, min_length=7), 7),
                               (CaptionValidation(num_beams=1, max_length=9, min_length=9), 9)):
        callback.on_validation_batch_end(trainer, module, None, batch, 0)
        assert _caption_tokens(captioner) == expected - p and len(callback._captions) == 2


def test_a_caption_length_within_the_prompt_fails_at_build():
    with pytest.raises(ValueError, match=r"captioner.caption_max_length=4 counts the prompt's 4 positions"):
        build_blip(tiny={"image_size": 32}, adapter={"mode": "frozen"}, caption_max_length=4)


def test_every_captioner_config_names_its_own_length():
    """Each conf/captioner/*.yaml sets caption_max_length, its family's (BLIP's and GIT's 20, BLIP-2's
    30), which its builder takes; a run saved before the setting existed gets the same default."""
    for path in sorted((CONF / "captioner").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        builder = cfg["_target_"].rsplit(".", 1)[1]
        assert cfg.caption_max_length == FAMILY_LENGTH[builder], path.name
        default = inspect.signature(get_method(cfg["_target_"])).parameters["caption_max_length"].default
        assert default == FAMILY_LENGTH[builder], builder


def test_the_default_run_resolves_blips_20(cfg_train, cfg_eval):
    """The default train and eval configs (zoo BLIP): the callback and eval say null, the zoo BLIP
    loaded from its config says 20, so captions are cut where they were before the setting."""
    train = cfg_train()
    assert train.callbacks.caption_validation.max_length is None
    captioner = instantiate(train.captioner)
    assert captioner.caption_max_length == 20
    settings, _ = settings_from(cfg_eval(), SimpleNamespace(captioner=captioner, generator=SimpleNamespace(
        guidance_scale=2.0), tiny_generator=False))
    assert settings.caption.max_length == 20
    assert instantiate(train.callbacks.caption_validation).generate_kwargs == {
        "num_beams": 3, "max_length": None, "min_length": 5}
