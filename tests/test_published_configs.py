"""The published checkpoints' config quirks, reproduced on tiny models saved here and loaded back
through the builders (no hub access): a config.json that names float16 (SDXL's text encoders)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recon_ft.models.blip import build_blip
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


@pytest.mark.parametrize("path", ["recon_ft/models/captioner.py", "recon_ft/models/generator.py"])
def test_every_from_pretrained_of_a_model_states_its_dtype(path):
    import re

    source = (ROOT / path).read_text()
    calls = re.findall(r"(\w+)\.from_pretrained\(([^)]*)\)", source)
    models = [(cls, args) for cls, args in calls if "Tokenizer" not in cls and cls != "processor_class"]
    assert models
    for cls, args in models:
        assert "dtype=LOAD_DTYPE" in args, f"{cls}.from_pretrained({args})"
