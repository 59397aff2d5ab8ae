"""The zoo's competence summary: the issue's targets, measured with eval.py's own scorers and
generation settings on val items (seen compositions) and the VAE's PSNR on test images."""

from __future__ import annotations

import numpy as np
import torch

from recon_ft.data.synthetic import Scene, colour_match, parse_caption, score_caption
from recon_ft.zoo.data import RenderedSplit, render_split, to_unit_range

# Minimums a zoo should reach (docs/zoo.md, "What the zoo reaches"); the build reports them, never forces them.
TARGETS = {"caption_exact": 0.85, "gen_colour": 0.8, "gen_count": 0.8, "vae_psnr_test": 28.0}


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB, images in [0, 1]) of the posterior mean's reconstruction; images in [-1, 1]."""
    out = torch.cat([vae(x).sample.clamp(-1, 1) for x in images.split(64)])
    mse = ((out - images) / 2).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())


@torch.no_grad()
def caption_scores(captioner, data: RenderedSplit, scenes: list[Scene], caption_kwargs: dict) -> dict:
    texts = []
    for chunk in to_unit_range(data.images).split(64):
        texts += captioner.generate(captioner.preprocess(chunk), **caption_kwargs)
    scores = [score_caption(t, scene) for t, scene in zip(texts, scenes)]
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]} | {"examples": texts[:3]}


@torch.no_grad()
def generation_scores(generator, data: RenderedSplit, scenes: list[Scene], generation_kwargs: dict) -> dict:
    prompts = [refs[0] for refs in data.references]  # the left-to-right reading, as eval.py's prompt
    images = []
    for start in range(0, len(prompts), 32):
        batch = prompts[start : start + 32]
        images.append(generator.sample(batch, list(range(start, start + len(batch))), **generation_kwargs))
    pixels = (torch.cat(images).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    scores = [colour_match(p, scene) for p, scene in zip(pixels, scenes)]
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def summarize(captioner, generator, seed: int, n: int, render_size: int, generator_size: int,
              caption_kwargs: dict, generation_kwargs: dict) -> dict:
    val = render_split("val", n, seed, render_size)  # rendered once for both models
    scenes = [parse_caption(refs[0]) for refs in val.references]
    test = render_split("test", n, seed, render_size)
    cap = caption_scores(captioner, val, scenes, caption_kwargs)
    gen = generation_scores(generator, val, scenes, generation_kwargs)
    return {
        "items": n,
        "caption_exact": cap["exact"],
        "caption": cap,
        "gen_colour": gen["colour"],
        "gen_count": gen["count"],
        "gen": gen,
        "vae_psnr_test": vae_psnr(generator.vae, to_unit_range(test.images, generator_size)),
    }


def report(summary: dict) -> str:
    """Lines like `caption_exact   0.912  (target >= 0.85)  met`."""
    lines = [f"competence on {summary['items']} val items (VAE: test images)"]
    for name, target in TARGETS.items():
        value = summary[name]
        lines.append(f"  {name:<14} {value:8.3f}  (target >= {target})  {'met' if value >= target else 'MISSED'}")
    return "\n".join(lines)
