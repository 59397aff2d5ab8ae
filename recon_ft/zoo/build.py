"""Build a zoo: render the data, pretrain the three parts, save them in the standard formats.

Output directory (written under a temporary name and renamed when complete, so a zoo directory
is either whole or absent):
    captioner/   transformers BlipForConditionalGeneration + BlipProcessor  (captioner.pretrained=...)
    generator/   diffusers StableDiffusionPipeline                            (generator.pretrained=...)
    zoo.json     the recipe, learning curves, build times, the competence summary
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from recon_ft.zoo import competence
from recon_ft.zoo.data import render_split
from recon_ft.zoo.pretrain import latent_moments, train_captioner, train_unet, train_vae
from recon_ft.zoo.recipe import ZooRecipe


# eval.py's defaults (conf/eval.yaml; the guidance is conf/generator/zoo_sd.yaml's, a test keeps
# them equal), so the build's summary predicts eval.py's numbers.
CAPTION_KWARGS = dict(num_beams=3, max_length=20, min_length=5)
GENERATION_KWARGS = dict(guidance_scale=2.0, num_inference_steps=50)


def build_models(recipe: ZooRecipe, captioner: bool = True, generator: bool = True):
    """Random-init captioner and generator of the recipe's sizes (the offline tiny builders); None
    for a part not asked for."""
    from recon_ft.models.blip import build_blip
    from recon_ft.models.sd import build_stable_diffusion

    return (
        build_blip(tiny=recipe.captioner_sizes(), adapter={"mode": "frozen"}, init_seed=recipe.seed)
        if captioner else None,
        build_stable_diffusion(tiny=recipe.generator_sizes(), unet_adapter={"mode": "frozen"}, init_seed=recipe.seed + 1)
        if generator else None,
    )


def _captioner_stage(recipe: ZooRecipe, out: Path, threads: int, build_clip=None) -> tuple[list, float, Path | None]:
    """Build, pretrain and save the captioner (runs in its own process in a parallel build); then
    `build_clip` (data -> directory) if given, which builds the zoo CLIP unless it is there: this process
    finishes minutes before the generator's, so the CLIP adds nothing to the build's time."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    captioner, _ = build_models(recipe, generator=False)
    data = render_split("train", recipe.train_items, recipe.seed, recipe.render_size)
    curve = train_captioner(captioner, data, recipe.captioner, torch.Generator().manual_seed(recipe.seed + 2))
    captioner.save_base(out)
    seconds = round(time.perf_counter() - start, 1)
    # the same rendered items when the recipes agree
    clip_directory = build_clip(data) if build_clip is not None else None
    return curve, seconds, clip_directory


def _generator_stage(recipe: ZooRecipe, out: Path, threads: int) -> tuple[dict, float, dict]:
    """Build, pretrain (VAE, then UNet and text encoder) and save the generator."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(recipe.seed)
    rng = torch.Generator().manual_seed(recipe.seed + 1)
    _, generator = build_models(recipe, captioner=False)
    data = render_split("train", recipe.train_items, recipe.seed, recipe.render_size)
    curves = {"vae": train_vae(generator.vae, data, recipe.vae, recipe.generator_size, rng)}
    vae_seconds = round(time.perf_counter() - start, 1)
    moments = latent_moments(generator.vae, data, recipe.generator_size)  # (N, 8, h, w)
    # Stable Diffusion's convention: latents scaled to unit variance (SD v1: 0.18215).
    scale = 1.0 / float(moments[:, : moments.shape[1] // 2].std())
    generator.vae.register_to_config(scaling_factor=scale)
    generator.latent_scale = scale
    curves["unet"] = train_unet(generator, data, moments, recipe.unet, rng)
    generator.save_base(out)
    return curves, round(time.perf_counter() - start, 1), {"vae": vae_seconds, "latent_scaling_factor": scale}


def build_zoo(recipe: ZooRecipe, out_dir: str | Path, parallel: bool | None = None, build_clip=None) -> dict:
    """Pretrain and save; returns the contents of zoo.json.

    `build_clip`: a picklable callable, data -> directory, that builds a zoo CLIP too
    (recon_ft.zoo.clip) in its own directory (its own cache key), given the captioner's rendered
    train split; its validation is copied into zoo.json's "clip".

    `parallel` (default: with 2+ CPUs and more than a few steps) trains the captioner in a second
    process while this one trains the generator. Every stage runs on one thread: that makes the
    weights a function of the recipe alone (with more threads, CPU kernels such as the embedding
    backward sum in a varying order), and on a small CPU two one-thread processes are about twice
    as fast as both stages in turn with two threads (small kernels scale poorly).
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if parallel is None:
        parallel = (os.cpu_count() or 1) >= 2 and recipe.captioner.steps > 100
    start = time.perf_counter()
    threads = torch.get_num_threads()  # the stages set their own; the caller gets its back
    with torch.random.fork_rng():
        if parallel:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                captioner_job = pool.submit(_captioner_stage, recipe, partial / "captioner", 1, build_clip)
                generator_result = _generator_stage(recipe, partial / "generator", 1)
                captioner_result = captioner_job.result()
        else:
            captioner_result = _captioner_stage(recipe, partial / "captioner", 1, build_clip)
            generator_result = _generator_stage(recipe, partial / "generator", 1)
        torch.set_num_threads(threads)
        (captioner_curve, captioner_seconds, clip_directory), (curves, generator_seconds, extra) = captioner_result, generator_result
        summary_start = time.perf_counter()
        captioner = build_blip_from(partial / "captioner")
        generator = build_sd_from(partial / "generator")
        summary = competence.summarize(
            captioner, generator, recipe.seed, recipe.summary_items, recipe.render_size, recipe.generator_size,
            CAPTION_KWARGS, GENERATION_KWARGS,
        )
    import diffusers
    import transformers

    from recon_ft.utils import git_commit

    record = {
        "recipe": recipe.to_dict(),
        "key": recipe.key,
        # what built it: the checkout's commit and the libraries whose kernels decide the weights
        "commit": git_commit(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "diffusers": diffusers.__version__},
        "latent_scaling_factor": extra["latent_scaling_factor"],
        "seconds": {
            "captioner": captioner_seconds, "vae": extra["vae"], "generator": generator_seconds,
            "summary": round(time.perf_counter() - summary_start, 1), "total": round(time.perf_counter() - start, 1),
        },
        "parallel": parallel,
        "competence": summary,
        "curves": {**curves, "captioner": captioner_curve},
    }
    if clip_directory is not None:
        clip = json.loads((Path(clip_directory) / "clip.json").read_text())
        record["clip"] = {"key": clip["key"], "seconds": clip["seconds"], "validation": clip["validation"]}
    (partial / "zoo.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return record


def build_blip_from(directory: Path):
    from recon_ft.models.blip import build_blip

    return build_blip(pretrained=str(directory), adapter={"mode": "frozen"})


def build_sd_from(directory: Path):
    from recon_ft.models.sd import build_stable_diffusion

    return build_stable_diffusion(pretrained=str(directory), unet_adapter={"mode": "frozen"})


def resummarize(directory: Path, recipe: ZooRecipe) -> dict:
    """The competence summary of a built zoo measured again with the current scorers; zoo.json updated."""
    directory = Path(directory)
    record = json.loads((directory / "zoo.json").read_text())
    record["competence"] = competence.summarize(
        build_blip_from(directory / "captioner"), build_sd_from(directory / "generator"), recipe.seed,
        recipe.summary_items, recipe.render_size, recipe.generator_size, CAPTION_KWARGS, GENERATION_KWARGS,
    )
    (directory / "zoo.json").write_text(json.dumps(record, indent=1))
    return record
