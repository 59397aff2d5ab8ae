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
    steps: int = 1900
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

    # 400, not 300: the 28 dB target is met after 300 steps, but the oracle reads the 400-step
    # VAE's reconstructions better (count / colour 0.90 / 0.94 against 0.85 / 0.91), and they bound
    # what the generator can reach through it.
    steps: int = 400
    batch_size: int = 64
    lr: float = 2e-3
    kl_weight: float = 1e-4


@dataclass(frozen=True)
class UnetRecipe:
    """The UNet and the CLIP text encoder, full weights, the diffusion loss (v or epsilon, as the
    generator predicts) on the trained VAE's latents."""

    cross_attention_dim: int = 32
    # 5,000: on 64 val items colour / count were 0.69 / 0.67 after 2,000 steps (cosine over 2,000)
    # and 0.95 / 0.91 after 5,000 (docs/zoo.md, "The generator's noise schedule"). Too long for a first-use build on
    # 2 cores (about 40 minutes), so the package ships this recipe's weights (recon_ft/zoo/shipped).
    steps: int = 5000
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
    # The generator's noise schedule: SD v1's betas rescaled to zero terminal SNR, with
    # v-prediction and a DDIM sampler (recon_ft.models.sd.configs.zero_snr_scheduler_config). SD v1's
    # own schedule leaks a small latent's colours through t = 999, and the UNet learns to rely on it.
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    captioner: CaptionerRecipe = field(default_factory=CaptionerRecipe)
    vae: VaeRecipe = field(default_factory=VaeRecipe)
    unet: UnetRecipe = field(default_factory=UnetRecipe)
    # How many val items the build's competence summary uses (eval.py reports every item).
    summary_items: int = 64

    def captioner_sizes(self) -> dict:
        """`tiny=` of recon_ft.models.blip.build_blip."""
        c = self.captioner
        return dict(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size, num_layers=c.num_layers)

    def generator_sizes(self) -> dict:
        """`tiny=` of recon_ft.models.sd.build_stable_diffusion."""
        return dict(sample_size=self.generator_size, cross_attention_dim=self.unet.cross_attention_dim,
                    prediction_type=self.prediction_type, zero_terminal_snr=self.zero_terminal_snr)

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


# --------------------------------------------------------------------------- the zoo's CLIP

# Bump when the CLIP build code changes what a ClipRecipe produces.
CLIP_BUILD_VERSION = 1


@dataclass(frozen=True)
class ClipRecipe:
    """A tiny open_clip CLIP trained contrastively on the benchmark: the feature extractor of
    CLIPScore, CLIP-I, FID and IS on the synthetic benchmark (conf/metrics/zoo.yaml).

    A recipe of its own, with its own cache key, so it never changes the key (and the 20-minute
    build) of the captioner and generator. Same architecture family as the tiny random CLIP of
    metrics=tiny (recon_ft.eval.features.tiny_clip_config), wider text tower and shorter context.
    """

    name: str = "default"
    seed: int = 0
    train_items: int = 20000  # the zoo's train items (rendered once, sampled with replacement)
    render_size: int = 64
    # eval.py hands CLIP the generator's view: 32 px sources (resized from 64) and 32 px generated images
    image_size: int = 32
    patch_size: int = 8  # 4 x 4 patches: patch 4 cost 3x the step for little gain on a 600-step probe
    embed_dim: int = 64
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 32
    text_layers: int = 2
    context_length: int = 20  # the longest grammar caption is 18 tokens with start and end
    train_token_embedding: bool = False
    steps: int = 700
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    # Per image, one extra caption with one attribute changed (colour, kind, size or the count):
    # the in-batch negatives alone rarely differ from the positive by a single attribute.
    hard_negatives: bool = True
    noise_std: float = 0.03  # pixel noise (of [-1, 1] images), so generated images' artefacts matter less
    val_items: int = 256  # the validation in clip.json (retrieval, zero-shot, CLIPScore)

    def model_config(self) -> dict:
        """open_clip's CLIP(**config) (the schema of open_clip/model_configs/*.json)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "patch_size": self.patch_size, "width": self.vision_width,
                           "layers": self.vision_layers, "head_width": 32},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": max(1, self.text_width // 32), "layers": self.text_layers},
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """`clip-<name>-<12 hex digits of the recipe's hash>`: the cache directory's name."""
        text = json.dumps({"build_version": CLIP_BUILD_VERSION, **self.to_dict()}, sort_keys=True)
        return f"clip-{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


CLIP_RECIPES: dict[str, ClipRecipe] = {
    "default": ClipRecipe(),
    # Seconds to build, for tests of the wiring.
    "smoke": ClipRecipe(name="smoke", train_items=64, embed_dim=32, vision_width=32, steps=3, batch_size=16,
                        warmup_steps=1, val_items=16),
}


def get_clip_recipe(name: str) -> ClipRecipe:
    if name not in CLIP_RECIPES:
        raise ValueError(f"zoo CLIP recipe {name!r} is unknown; available: {sorted(CLIP_RECIPES)}")
    return CLIP_RECIPES[name]
