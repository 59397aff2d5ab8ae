"""What the synthetic model zoo is built from: sizes, steps and learning rates, named recipes.

A recipe fixes everything that decides the weights (with its seed); its `key` names the cache
directory, so changing any field builds a new zoo instead of reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

# Bump when the build code changes what a recipe produces.
BUILD_VERSION = 1


@dataclass(frozen=True)
class CaptionerRecipe:
    """BLIP with full weights trained on the benchmark's captions (teacher-forced cross-entropy)."""

    image_size: int = 64
    patch_size: int = 8
    hidden_size: int = 96
    num_layers: int = 4
    steps: int = 2500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    # Sampled softmax: each step scores the caption tokens, the grammar's tokens and this many
    # uniformly drawn other ids instead of all 30,524 (the full softmax is 90% of a CPU step).
    negatives: int = 1024
    # Train on each scene's left-to-right reading only: one target per image instead of two
    # equally likely ones (the scorers accept either reading).
    canonical_captions: bool = True


@dataclass(frozen=True)
class VaeRecipe:
    """The generator's AutoencoderKL, trained first as an autoencoder (MSE + a small KL)."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-4


@dataclass(frozen=True)
class UnetRecipe:
    """The UNet and the CLIP text encoder, full weights, epsilon loss on the trained VAE's latents."""

    cross_attention_dim: int = 32
    steps: int = 2200
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    caption_dropout: float = 0.1  # empty captions, for classifier-free guidance
    train_text_encoder: bool = True
    # Left-to-right readings only, as the captioner: one phrasing per layout to learn.
    canonical_captions: bool = True


@dataclass(frozen=True)
class ZooRecipe:
    name: str = "default"
    seed: int = 0
    train_items: int = 20000  # rendered once, then sampled with replacement
    render_size: int = 64  # the benchmark's image size; the captioner sees it as is
    generator_size: int = 32  # the generator's resolution (latents are half of it)
    captioner: CaptionerRecipe = field(default_factory=CaptionerRecipe)
    vae: VaeRecipe = field(default_factory=VaeRecipe)
    unet: UnetRecipe = field(default_factory=UnetRecipe)
    # How many val items the build's competence summary uses (eval.py reports every item).
    summary_items: int = 128

    def captioner_sizes(self) -> dict:
        """`tiny=` of recon_ft.models.captioner.build_blip."""
        c = self.captioner
        return dict(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size, num_layers=c.num_layers)

    def generator_sizes(self) -> dict:
        """`tiny=` of recon_ft.models.generator.build_stable_diffusion."""
        return dict(sample_size=self.generator_size, cross_attention_dim=self.unet.cross_attention_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """`<name>-<12 hex digits of the recipe's hash>`: the cache directory's name."""
        text = json.dumps({"build_version": BUILD_VERSION, **self.to_dict()}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


RECIPES: dict[str, ZooRecipe] = {
    "default": ZooRecipe(),
    # Seconds to build: the default run's shapes in miniature, for tests of the wiring (it learns
    # nothing worth measuring).
    "smoke": ZooRecipe(
        name="smoke",
        train_items=64,
        generator_size=32,
        captioner=CaptionerRecipe(image_size=32, hidden_size=32, num_layers=2, steps=3, batch_size=8, warmup_steps=1,
                                  negatives=64),
        vae=VaeRecipe(steps=3, batch_size=8),
        unet=UnetRecipe(steps=3, batch_size=8, warmup_steps=1),
        summary_items=4,
    ),
}


def get_recipe(name: str) -> ZooRecipe:
    if name not in RECIPES:
        raise ValueError(f"zoo recipe {name!r} is unknown; available: {sorted(RECIPES)}")
    return RECIPES[name]
