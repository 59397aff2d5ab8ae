"""The synthetic model zoo: small BLIP and Stable Diffusion base models pretrained with full
weights on the built-in shapes benchmark, playing the part of the real pretrained checkpoints
(docs/design.md, "The synthetic benchmark and the zoo"; docs/zoo.md). They are saved in the standard formats and loaded through the same
`pretrained=<dir>` path as real weights; `${zoo:captioner}` / `${zoo:generator}` in a config
name them, building the zoo on first use.

    python -m recon_ft.zoo                 # build (or find) the default zoo, print its summary
    python -m recon_ft.zoo --family all    # the other families' variants (recon_ft.zoo.families)
"""

from recon_ft.zoo.cache import ensure_zoo, zoo_part
from recon_ft.zoo.recipe import RECIPES, ZooRecipe, get_recipe

__all__ = ["RECIPES", "ZooRecipe", "ensure_zoo", "get_recipe", "zoo_part"]
