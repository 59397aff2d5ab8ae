"""Writing and reading what a run trained, in formats other tools load.

  adapters/captioner/  peft format (adapter_config.json + adapter_model.safetensors):
                       `PeftModel.from_pretrained(base_blip, dir)`.
  adapters/generator/  diffusers' LoRA format (pytorch_lora_weights.safetensors):
                       `StableDiffusionPipeline.from_pretrained(base).load_lora_weights(dir)`.
With `adapter.mode: full` (the reference's setup) the trained weights themselves are written to
`trainable_weights.safetensors`, named as in the base model, and `load_full_weights` puts them back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FULL_WEIGHTS = "trainable_weights.safetensors"


def _trainable_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def save_captioner_adapter(captioner, directory: str | Path) -> None:
    directory = Path(directory)
    if captioner.peft_model is not None:
        captioner.peft_model.save_pretrained(directory)
    elif state := _trainable_state(captioner.model):
        directory.mkdir(parents=True, exist_ok=True)
        save_file(state, directory / FULL_WEIGHTS)


def save_generator_adapter(generator, directory: str | Path) -> None:
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    directory = Path(directory)
    parts = generator.adapter_parts()  # unet, text_encoder (and text_encoder_2 for SDXL)
    lora = {}
    for name, module in parts.items():
        if getattr(module, "peft_config", None):
            lora[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(get_peft_model_state_dict(module))
            # Rank, alpha and targets travel with the weights: without them loaders assume alpha = r.
            lora[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    if lora:
        generator.pipeline_class.save_lora_weights(directory, safe_serialization=True, **lora)
    full = {}
    for name, module in parts.items():
        if not getattr(module, "peft_config", None):
            full.update(_trainable_state(module, prefix=f"{name}."))
    if full:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(full, directory / FULL_WEIGHTS)


def load_full_weights(module: torch.nn.Module, directory: str | Path) -> bool:
    """Load `trainable_weights.safetensors` from `directory` into `module` if present."""
    path = Path(directory) / FULL_WEIGHTS
    if not path.exists():
        return False
    state = load_file(path)
    unexpected = set(state) - set(dict(module.named_parameters()))
    if unexpected:
        raise ValueError(f"{path}: weights {sorted(unexpected)[:3]} do not belong to {type(module).__name__}")
    module.load_state_dict(state, strict=False)
    return True
