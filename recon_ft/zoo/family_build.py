"""Build one family variant of the zoo (recon_ft.zoo.families): the same pretraining stages as the
default zoo (recon_ft.zoo.pretrain), through the captioner / generator interface.

Output directory (written under a temporary name and renamed when complete):
    captioner/ or generator/   the model in its standard format (transformers directory / diffusers
                               pipeline), loaded by conf/{captioner,generator}/zoo_<family>.yaml
    family.json                the recipe, learning curves, build times, the competence summary
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from hydra.utils import get_method

from recon_ft.zoo import competence
from recon_ft.zoo.build import CAPTION_KWARGS as ZOO_CAPTION_KWARGS
from recon_ft.zoo.build import GENERATION_KWARGS
from recon_ft.zoo.data import render_split, to_unit_range
from recon_ft.zoo.families import FAMILIES, FamilyRecipe
from recon_ft.zoo.pretrain import latent_moments, train_captioner, train_unet, train_vae

FROZEN = {"mode": "frozen"}
# The pairing study's caption lengths (recon_ft.experiments.pairs.plan.DEFAULT_EVAL): 30 positions with the
# prompt for every family, explicit so that the recorded summaries compare across families (BLIP's 20
# cut the OPT variant's longest captions, byte-level BPE, short; its own caption_max_length is 30).
CAPTION_KWARGS = ZOO_CAPTION_KWARGS | {"max_length": 30}


def builder(recipe: FamilyRecipe):
    """(the family's builder function, its fixed kwargs)."""
    _, path, fixed = FAMILIES[recipe.family]
    return get_method(path), fixed


def build_model(recipe: FamilyRecipe, pretrained: str | Path | None = None):
    """The family's random-init model of the recipe's sizes (seeded), or the saved one from `pretrained`."""
    build, fixed = builder(recipe)
    adapters = {"adapter": FROZEN} if recipe.part == "captioner" else {"unet_adapter": FROZEN}
    if recipe.part == "captioner":
        fixed = {**fixed, "prompt": recipe.prompt}
    if pretrained:
        return build(pretrained=str(pretrained), **adapters, **fixed)
    seed = recipe.seed if recipe.part == "captioner" else recipe.seed + 1  # as the default zoo's parts
    return build(tiny=recipe.tiny(), init_seed=seed, **adapters, **fixed)


def _pretrain_captioner(recipe: FamilyRecipe, data, out: Path) -> dict:
    captioner = build_model(recipe)
    curve = train_captioner(captioner, data, recipe.captioner, torch.Generator().manual_seed(recipe.seed + 2))
    captioner.save_base(out)
    return {"captioner": curve}


def _pretrain_generator(recipe: FamilyRecipe, data, out: Path) -> dict:
    """VAE first, then the UNet and text encoder(s) on the frozen VAE's latents scaled to unit variance."""
    rng = torch.Generator().manual_seed(recipe.seed + 1)
    generator = build_model(recipe)
    curves = {"vae": train_vae(generator.vae, data, recipe.vae, recipe.generator_size, rng)}
    moments = latent_moments(generator.vae, data, recipe.generator_size)  # (N, 8, h, w)
    scale = 1.0 / float(moments[:, : moments.shape[1] // 2].std())
    generator.vae.register_to_config(scaling_factor=scale)
    generator.latent_scale = scale
    curves["unet"] = train_unet(generator, data, moments, recipe.unet, rng)
    generator.save_base(out)
    return curves


def summarize(recipe: FamilyRecipe, model) -> dict:
    """The competence summary of the part built, with eval.py's scorers and settings (val items)."""
    from recon_ft.data.synthetic import parse_caption

    val = render_split("val", recipe.summary_items, recipe.seed, recipe.render_size)
    scenes = [parse_caption(refs[0]) for refs in val.references]
    if recipe.part == "captioner":
        cap = competence.caption_scores(model, val, scenes, CAPTION_KWARGS)
        return {"items": recipe.summary_items, "caption_exact": cap["exact"], "caption": cap}
    gen = competence.generation_scores(model, val, scenes, GENERATION_KWARGS | {"guidance_scale": model.guidance_scale})
    test = render_split("test", recipe.summary_items, recipe.seed, recipe.render_size)
    return {"items": recipe.summary_items, "gen_colour": gen["colour"], "gen_count": gen["count"], "gen": gen,
            "vae_psnr_test": competence.vae_psnr(model.vae, to_unit_range(test.images, recipe.generator_size))}


def build_family(recipe: FamilyRecipe, out_dir: str | Path) -> dict:
    """Pretrain and save one family variant on one thread (its weights a function of the recipe
    alone); returns family.json's content."""
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            data = render_split("train", recipe.train_items, recipe.seed, recipe.render_size)
            stage = _pretrain_captioner if recipe.part == "captioner" else _pretrain_generator
            curves = stage(recipe, data, partial / recipe.part)
            trained = time.perf_counter()
            summary = summarize(recipe, build_model(recipe, partial / recipe.part))
    finally:
        torch.set_num_threads(threads)
    record = {
        "family": recipe.family,
        "part": recipe.part,
        "key": recipe.key,
        "recipe": recipe.to_dict(),
        "seconds": {"train": round(trained - start, 1), "summary": round(time.perf_counter() - trained, 1),
                    "total": round(time.perf_counter() - start, 1)},
        "competence": summary,
        "curves": curves,
    }
    (partial / "family.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return record


def report(record: dict) -> str:
    """One line per competence number, against the zoo's targets where one applies."""
    summary = record["competence"]
    lines = [f"{record['key']}: built in {record['seconds']['total']} s; competence on {summary['items']} val items"]
    for name, value in summary.items():
        if isinstance(value, float):
            target = competence.TARGETS.get(name)
            lines.append(f"  {name:<14} {value:8.3f}" + (f"  (default zoo's target >= {target})" if target else ""))
    return "\n".join(lines)
