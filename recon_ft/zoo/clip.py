"""The zoo's CLIP: a tiny open_clip CLIP trained contrastively on the benchmark's train items, so
that CLIPScore, CLIP-I, FID and IS on the synthetic benchmark measure something.

Output directory (written under a temporary name and renamed when complete):
    model.safetensors   the open_clip CLIP state_dict
    clip.json           {"model_config": CLIP(**model_config), "key", "recipe", "curve", "validation", "seconds"}
Loaded by `load_clip` (and `recon_ft.eval.features.zoo_clip_features`); the tokenizer is open_clip's
SimpleTokenizer (CLIP's BPE, shipped with open_clip) with the recipe's context length.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from recon_ft.data.synthetic import captions, parse_caption
from recon_ft.zoo.clip_check import report, validate_clip
from recon_ft.zoo.data import RenderedSplit, clip_normalize, render_split
from recon_ft.zoo.pretrain import Curve, _loop, warmup_cosine
from recon_ft.zoo.recipe import ClipRecipe
from recon_ft.zoo.scenes import perturb, pick


def build_clip_model(config: dict, seed: int | None = None):
    """open_clip CLIP(**config) (random init from `seed`) and its tokenizer."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
        model = CLIP(**config)
    return model, SimpleTokenizer(context_length=config["text_cfg"]["context_length"])


# ------------------------------------------------------------------------------------- training


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives per row.

    image_features (B, D), text_features (T, D) with T >= B, both L2-normalized; text j < B is image
    j's caption, texts after B are extra negatives (the image-to-text direction only). positives
    (B, T) bool: text j describes image i's scene (the diagonal, and duplicate scenes in a batch,
    which a one-hot target would push apart). Each direction: -log(sum of exp(logits) over the
    positives / sum over all), i.e. cross-entropy with the positives' probability mass pooled.
    """
    b = image_features.shape[0]
    logits = logit_scale * image_features @ text_features.T  # (B, T)
    per_image = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), 1) - torch.logsumexp(logits, 1)
    square, square_pos = logits[:, :b].T, positives[:, :b].T  # (B texts, B images)
    per_text = torch.logsumexp(square.masked_fill(~square_pos, float("-inf")), 1) - torch.logsumexp(square, 1)
    return -(per_image.mean() + per_text.mean()) / 2


def train_clip(model, tokenizer, data: RenderedSplit, r: ClipRecipe, rng: torch.Generator) -> Curve:
    """Batches of train images (any reading of their scene as the caption), with one hard negative
    caption per image; learnable temperature (open_clip's logit_scale, clamped at 100 as in CLIP)."""
    model.requires_grad_(True).train()
    # The captions use about 25 of the 49,408 token embeddings: their random rows stay fixed (distinct
    # enough for the layers above), which spares AdamW a 49,408 x width table (most of a step's update).
    model.token_embedding.requires_grad_(r.train_token_embedding)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    # No weight decay on the temperature, gains, biases and embeddings (as open_clip's training).
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=r.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = warmup_cosine(optimizer, r.warmup_steps, r.steps)
    attributes = ("colour", "kind", "size", "count")
    token_rows: dict[str, torch.Tensor] = {}  # the grammar has few captions: tokenize each once

    def tokenize(texts: list[str]) -> torch.Tensor:  # (T, context_length)
        for t in texts:
            if t not in token_rows:
                token_rows[t] = tokenizer([t])[0]
        return torch.stack([token_rows[t] for t in texts])

    def step_loss():
        x, texts, index = data.batch(rng, r.batch_size, r.image_size)  # (B, 3, S, S) in [-1, 1], one random reading
        if r.noise_std:
            x = x + r.noise_std * torch.randn(x.shape, generator=rng)
        scenes = [parse_caption(data.references[i][0]) for i in index.tolist()]
        text_scenes = list(scenes)
        if r.hard_negatives:
            negatives = [perturb(s, pick(attributes, rng), rng) for s in scenes]
            texts = texts + [pick(captions(s), rng) for s in negatives]
            text_scenes += negatives
        ids = {s: i for i, s in enumerate(dict.fromkeys(text_scenes))}  # scene -> an integer, for the mask
        text_ids = torch.tensor([ids[s] for s in text_scenes])
        positives = text_ids[: len(scenes)].unsqueeze(1) == text_ids.unsqueeze(0)  # (B, T)
        # CLIP's own input convention: [0, 1] images normalized by CLIP's mean / std (as ClipFeatures does)
        image = model.encode_image(clip_normalize((x + 1) / 2), normalize=True)
        text = model.encode_text(tokenize(texts), normalize=True)
        return contrastive_loss(image, text, model.logit_scale.exp().clamp(max=100), positives)

    curve = _loop("zoo: CLIP", r.steps, params, optimizer, scheduler, step_loss)
    model.requires_grad_(False).eval()
    return curve


# --------------------------------------------------------------------------------- build, load


def build_clip(recipe: ClipRecipe, out_dir: str | Path, data: RenderedSplit | None = None) -> dict:
    """Train, validate and save the CLIP on one thread (the weights depend on the recipe alone);
    returns clip.json's content. `data`: the recipe's rendered train split, if the caller has it."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            if data is None or len(data) != recipe.train_items or data.images.shape[-1] != recipe.render_size:
                data = render_split("train", recipe.train_items, recipe.seed, recipe.render_size)
            model, tokenizer = build_clip_model(recipe.model_config(), recipe.seed)
            curve = train_clip(model, tokenizer, data, recipe, torch.Generator().manual_seed(recipe.seed + 3))
            trained = time.perf_counter()
            validation = validate_clip(model, tokenizer, recipe)
    finally:
        torch.set_num_threads(threads)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(partial / "model.safetensors"))
    record = {
        "model_config": recipe.model_config(),
        "key": recipe.key,
        "recipe": recipe.to_dict(),
        "seconds": {"train": round(trained - start, 1), "total": round(time.perf_counter() - start, 1)},
        "validation": validation,
        "curve": curve,
    }
    (partial / "clip.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    print(f"zoo CLIP {recipe.key}: {report(validation)}", flush=True)
    return record


def load_clip(directory: str | Path):
    """(model, tokenizer, record) of a built zoo CLIP directory; the model in eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "clip.json").is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"zoo CLIP: {directory} holds no clip.json and model.safetensors "
                                "(build one with python -m recon_ft.zoo)")
    record = json.loads((directory / "clip.json").read_text())
    model, tokenizer = build_clip_model(record["model_config"])
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval().requires_grad_(False), tokenizer, record
