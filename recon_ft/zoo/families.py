"""The zoo's small variant of every other model family: recipes, each with its own cache key.

The default zoo (recipe.py) holds BLIP and Stable Diffusion 1.x; the pairing study
(recon_ft.experiments.pairs) needs one competent model of every family, pretrained on the benchmark the same
way: captioners BLIP-2 with an OPT-style (decoder-only) or a Flan-T5-style (encoder-decoder) language
model over the offline tokenizers of those kinds, and GIT over BERT's WordPiece; generators SD 2.x
(v-prediction, "!" padding) and SDXL (two text encoders, pooled embedding, size / crop ids).

Each variant is a `FamilyRecipe` with its own key (`<family>-<recipe>-<hash>`), so the default
zoo's key and its cached models stay valid, and each builds alone (one thread, no second process)
with the default zoo's recipes: its captioner's, or its generator's with a shorter UNet stage
(docs/zoo.md, "Other model families in the zoo", has the build times and each variant's competence).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from recon_ft.zoo.recipe import CaptionerRecipe, UnetRecipe, VaeRecipe

# Bump when the family build code changes what a FamilyRecipe produces.
FAMILY_BUILD_VERSION = 1

# The generators' classifier-free guidance: the zoo SD's (conf/generator/zoo_sd.yaml), as they share
# its noise schedule; their zoo_* configs set the same.
GUIDANCE = {"guidance_scale": 2.0}

# family -> (part, builder, fixed builder kwargs); `tiny` sizes come from the recipe.
FAMILIES: dict[str, tuple[str, str, dict]] = {
    "blip2_opt": ("captioner", "recon_ft.models.blip2.build_blip2", {}),
    "blip2_t5": ("captioner", "recon_ft.models.blip2.build_blip2", {}),
    "git": ("captioner", "recon_ft.models.git.build_git", {}),
    "sd2": ("generator", "recon_ft.models.sd.build_stable_diffusion", {"pad_token": "!", **GUIDANCE}),
    "sdxl": ("generator", "recon_ft.models.sdxl.build_sdxl", GUIDANCE),
}


@dataclass(frozen=True)
class FamilyRecipe:
    family: str
    name: str = "default"
    seed: int = 0
    train_items: int = 20000  # the default zoo's train items (rendered once, sampled with replacement)
    render_size: int = 64
    generator_size: int = 32
    extra: dict = field(default_factory=dict)  # the family's own `tiny=` entries (besides the sizes below)
    prompt: str = "a picture of "  # captioners: the prompt they pretrain with (and their zoo_* config's)
    captioner: CaptionerRecipe | None = None
    vae: VaeRecipe | None = None
    unet: UnetRecipe | None = None
    summary_items: int = 64  # val items of the build's competence summary

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"zoo family {self.family!r} is unknown; available: {sorted(FAMILIES)}")
        needs = ("captioner",) if self.part == "captioner" else ("vae", "unet")
        missing = [n for n in needs if getattr(self, n) is None]
        if missing:
            raise ValueError(f"zoo family {self.family!r}: its recipe needs {missing}")

    @property
    def part(self) -> str:
        """"captioner" or "generator"."""
        return FAMILIES[self.family][0]

    def tiny(self) -> dict:
        """`tiny=` of the family's builder: the recipe's sizes and the family's own entries."""
        if self.part == "captioner":
            c = self.captioner
            sizes = dict(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size,
                         num_layers=c.num_layers)
        elif self.family == "sdxl":  # two text encoders of this width each
            sizes = dict(sample_size=self.generator_size,
                         text_dims=[self.unet.cross_attention_dim, self.unet.cross_attention_dim])
        else:
            sizes = dict(sample_size=self.generator_size, cross_attention_dim=self.unet.cross_attention_dim)
        return {**sizes, **self.extra}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """`<family>-<name>-<12 hex digits of the recipe's hash>`: the cache directory's name."""
        text = json.dumps({"build_version": FAMILY_BUILD_VERSION, **self.to_dict()}, sort_keys=True)
        return f"{self.family}-{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


# The default zoo's captioner recipe (size, 1,900 steps at batch 64) and generator recipe (its VAE;
# its UNet at 3,000 of 5,000 steps, unless the family needs more). The previous recipes (hidden 64,
# 3 layers, 1,000 steps at batch 32; VAE 120 and UNet 400 steps) left the captioners at 0.05-0.23
# caption exact and the generators near 0 colour accuracy.
_CAPTIONER = CaptionerRecipe()
# BLIP-2 at lr 1e-3: 300-step probes of the OPT variant (warmup 30, cosine) ended at caption loss
# 0.67 (lr 3e-3), 0.46 (1e-3) and 0.75 (4e-4); its 1,900-step build at 3e-3 stopped at 0.32, caption
# exact 0.22 on 64 val items.
_BLIP2_CAPTIONER = dataclasses.replace(_CAPTIONER, lr=1e-3)
_VAE = VaeRecipe()
_UNET = UnetRecipe(steps=3000)

# Seconds to build, for tests of the wiring (they learn nothing worth measuring).
_SMOKE = dict(name="smoke", train_items=64, summary_items=4)
_SMOKE_CAPTIONER = CaptionerRecipe(image_size=32, hidden_size=32, num_layers=2, steps=3, batch_size=8,
                                   warmup_steps=1, negatives=64)
_SMOKE_VAE = VaeRecipe(steps=3, batch_size=8)
_SMOKE_UNET = UnetRecipe(steps=3, batch_size=8, warmup_steps=1)

_OPT = {"language_model": "opt", "num_query_tokens": 8}  # 8 learned queries: the LM's image prefix
_T5 = {"language_model": "t5", "num_query_tokens": 8}
# The zoo SD's noise schedule (recon_ft.models.sd.configs.zero_snr_scheduler_config): SD's own leaks a
# small latent's colours through t = 999. SD 2.x predicts v anyway; the SDXL variant does too.
_V = {"prediction_type": "v_prediction", "zero_terminal_snr": True}
_SDXL = {"time_embed_dim": 8, **_V}


def _pair(family: str, extra: dict, smoke_extra: dict | None = None, **default) -> dict[str, FamilyRecipe]:
    """The family's default and smoke recipes."""
    if FAMILIES[family][0] == "captioner":
        parts, smoke_parts = dict(captioner=_CAPTIONER), dict(captioner=_SMOKE_CAPTIONER)
    else:
        parts, smoke_parts = dict(vae=_VAE, unet=_UNET), dict(vae=_SMOKE_VAE, unet=_SMOKE_UNET)
    return {
        "default": FamilyRecipe(family, extra=extra, **(parts | default)),
        "smoke": FamilyRecipe(family, extra=smoke_extra if smoke_extra is not None else extra, **smoke_parts, **_SMOKE),
    }


FAMILY_RECIPES: dict[str, dict[str, FamilyRecipe]] = {
    "blip2_opt": _pair("blip2_opt", _OPT, {**_OPT, "num_query_tokens": 4}, captioner=_BLIP2_CAPTIONER),
    "blip2_t5": _pair("blip2_t5", _T5, {**_T5, "num_query_tokens": 4}, captioner=_BLIP2_CAPTIONER),
    "git": _pair("git", {}),
    "sd2": _pair("sd2", _V),
    # The default zoo's 5,000 UNet steps: after 3,000 its colour / count on 64 val items were
    # 0.68 / 0.66 (SD 2.x's 0.85 / 0.81), after 5,000 0.69 / 0.67: steps are not what it lacks.
    "sdxl": _pair("sdxl", _SDXL, unet=UnetRecipe()),
}


def get_family_recipe(family: str, name: str = "default") -> FamilyRecipe:
    if family not in FAMILY_RECIPES:
        raise ValueError(f"zoo family {family!r} is unknown; available: {sorted(FAMILY_RECIPES)}")
    if name not in FAMILY_RECIPES[family]:
        raise ValueError(f"zoo family {family!r}: recipe {name!r} is unknown; available: "
                         f"{sorted(FAMILY_RECIPES[family])}")
    return FAMILY_RECIPES[family][name]
