"""The benchmark's train split rendered once into tensors: pretraining samples from memory, so a
step costs no rendering (20,000 items at 64 px: about 10 s and 250 MB)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.data.synthetic import captions, generate


@dataclass
class RenderedSplit:
    images: torch.Tensor  # (N, 3, S, S) uint8
    references: list[list[str]]  # every grammar reading of item i

    def __len__(self) -> int:
        return len(self.references)

    def batch(self, rng: torch.Generator, batch_size: int, size: int | None = None, canonical: bool = False,
              images: bool = True):
        """A random batch: images (B, 3, size, size) in [-1, 1] (None without `images`), one random
        reading per item (the left-to-right one with `canonical`), and the indices drawn (with
        replacement)."""
        index = torch.randint(len(self), (batch_size,), generator=rng)
        choice = torch.randint(2, (batch_size,), generator=rng)  # which reading (scenes have 1 or 2)
        if canonical:
            choice.zero_()
        texts = [self.references[i][c % len(self.references[i])] for i, c in zip(index.tolist(), choice.tolist())]
        return (to_unit_range(self.images[index], size) if images else None), texts, index


def to_unit_range(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1], resized (bilinear, antialiased) to `size` if given."""
    x = images.float() / 127.5 - 1
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(-1, 1)
    return x


def render_split(split: str, n: int, seed: int, size: int) -> RenderedSplit:
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    references = []
    for i in range(n):
        scene, pixels = generate(seed, split, i, size)
        images[i] = pixels
        references.append(captions(scene))
    return RenderedSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), references)


def clip_normalize(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], (B, 3, S, S) -> the CLIP encoder's normalised input."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images.clamp(0, 1) - mean) / std
