"""Images for evaluation: the generator's pipeline in batches, one seed per image, and PNG files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


@dataclass
class GenerationSettings:
    guidance_scale: float | None = None  # None: the generator's own (its config's guidance_scale)
    num_inference_steps: int | None = None  # None: 50, or 10 for a tiny random-init generator
    scheduler: str | None = None  # a diffusers scheduler class name; None: the pipeline's own
    batch_size: int = 16  # images per pipeline call
    reference: int = 0  # which reference caption of an item is its generation prompt

    def steps(self, tiny: bool) -> int:
        if self.num_inference_steps is not None:
            return int(self.num_inference_steps)
        return 10 if tiny else 50


def generate_images(generator, prompts: list[str], seeds: list[int], s: GenerationSettings, steps: int) -> torch.Tensor:
    """One image per (prompt, seed), generated `s.batch_size` at a time -> (N, 3, H, W) in [0, 1],
    quantized to 8 bits (what is scored is exactly what is saved as PNG)."""
    if not prompts:
        size = generator.image_size
        return torch.empty(0, 3, size, size)
    out = []
    for i in range(0, len(prompts), s.batch_size):
        images = generator.sample(
            prompts[i:i + s.batch_size], seeds[i:i + s.batch_size], guidance_scale=s.guidance_scale,
            num_inference_steps=steps, scheduler=s.scheduler,
        )
        out.append(quantize(images.float()))
    return torch.cat(out)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats rounded to the 256 levels of an 8-bit PNG."""
    return (images.clamp(0, 1) * 255).round() / 255


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> PIL RGB."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def save_png(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)


def load_png(path: str | Path) -> torch.Tensor:
    """PNG -> (3, H, W) float in [0, 1]."""
    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
