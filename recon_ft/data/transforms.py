"""The two views of one image: what the captioner sees and what the generator encodes.

Captioner view: float (3, Hc, Wc), normalized with the captioner's mean / std.
  augment="blip": RandomResizedCrop(scale 0.5-1, bicubic) + horizontal flip + RandAugment(2, 5),
  the reference implementation's training view; augment="none": plain bicubic resize.
  The random choices are a function of `draw` (seed, index, epoch) when given (the data module
  gives it), like the noise, so resume is exact and worker processes draw reproducibly.
  Note that flips swap "left of" / "right of" and RandAugment changes colours: use "none" for the
  synthetic benchmark, whose captions are about exactly those.
Generator view: float (3, Hg, Wg) in [-1, 1] (the VAE's input range), plain resize, no crop or
  flip (as the reference implementation).
Both take a PIL RGB image; resizes squash to the target size (no aspect-preserving crop),
as BLIP's evaluation transform does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from recon_ft.constants import CLIP_MEAN, CLIP_STD

AUGMENTS = ("none", "blip")


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """An int n -> (n, n); a pair -> (h, w)."""
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def augment_seed(draw: Sequence[int]) -> int:
    """A 63-bit seed from (seed, index, epoch); the trailing constant keeps this stream apart from
    the reference choice's and the synthetic generator's."""
    return int(np.random.SeedSequence([*(int(d) % 2**63 for d in draw), 0xA06]).generate_state(2, np.uint64)[0] >> 1)


class CaptionerView:
    """PIL RGB image -> (3, H, W) float tensor normalized with (mean, std)."""

    def __init__(self, size: int | Sequence[int] = 384, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, augment: str | None = "none"):
        augment = "none" if augment is None else str(augment)
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.size, self.augment = as_hw(size), augment
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if augment == "blip":
            geometry = [
                T.RandomResizedCrop(self.size, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.RandAugment(num_ops=2, magnitude=5),
            ]
        else:
            geometry = [T.Resize(self.size, interpolation=InterpolationMode.BICUBIC)]
        self.transform = T.Compose([*geometry, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __call__(self, image: Image.Image, draw: Sequence[int] | None = None) -> torch.Tensor:
        if self.augment == "none" or draw is None:
            return self.transform(image)
        # torchvision's random transforms draw from the global torch RNG: seed it from the sample's
        # position for this call only (fork_rng restores the stream afterwards).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(augment_seed(draw))
            return self.transform(image)

    def __repr__(self) -> str:
        return f"CaptionerView(size={self.size}, augment={self.augment!r})"


class GeneratorView:
    """PIL RGB image -> (3, H, W) float tensor in [-1, 1]. crop=True: shortest side to the size,
    then a centre crop (the standard FID preprocessing of real images) instead of squashing."""

    def __init__(self, size: int | Sequence[int] = 512, crop: bool = False):
        self.size, self.crop = as_hw(size), bool(crop)
        geometry = [T.Resize(max(self.size), interpolation=InterpolationMode.BILINEAR), T.CenterCrop(self.size)] \
            if self.crop else [T.Resize(self.size, interpolation=InterpolationMode.BILINEAR)]
        self.transform = T.Compose([
            *geometry,
            T.ToTensor(),  # [0, 1]
            T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),  # -> [-1, 1]
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"GeneratorView(size={self.size}, crop={self.crop})"
