"""Does the zoo's CLIP see the benchmark? Measured on val items (seen compositions), at the
resolution eval.py feeds it, so that a CLIPScore or CLIP-I from it means something:

- retrieval_top1: image -> text top-1 among each chunk of 64 items' captions (a hit: the chosen
  caption describes the image's scene; chance about 1/64);
- zero-shot colour / kind / size / count: the true caption against the same caption with one
  attribute changed (one object's colour to each other colour: 6-way; kind: 4-way; size: 2-way;
  count: one object removed and one added: 2- or 3-way); a hit when the true caption scores highest;
- CLIPScore (100 max(cos, 0), as eval's) of matched pairs against mismatched ones (each image with
  the next item's caption, where the scenes differ).
"""

from __future__ import annotations

import torch

from recon_ft.data.synthetic import captions, parse_caption
from recon_ft.zoo.data import clip_normalize, render_split, to_unit_range
from recon_ft.zoo.recipe import ClipRecipe
from recon_ft.zoo.scenes import variants


@torch.no_grad()
def validate_clip(model, tokenizer, recipe: ClipRecipe) -> dict:
    val = render_split("val", recipe.val_items, recipe.seed, recipe.render_size)
    images = (to_unit_range(val.images, recipe.image_size) + 1) / 2  # (N, 3, S, S) in [0, 1]
    image = torch.cat([model.encode_image(clip_normalize(x), normalize=True) for x in images.split(64)])  # (N, D)
    truth = [refs[0] for refs in val.references]
    scenes = [parse_caption(t) for t in truth]

    def encode(texts):
        return torch.cat([model.encode_text(tokenizer(texts[i:i + 256]), normalize=True)
                          for i in range(0, len(texts), 256)])

    text = encode(truth)  # (N, D)
    hits = []
    for start in range(0, len(truth), 64):
        sims = image[start:start + 64] @ text[start:start + 64].T  # (b, b)
        best = sims.argmax(1).tolist()
        hits += [scenes[start + j] == scenes[start + i] for i, j in enumerate(best)]
    out = {"items": len(truth), "retrieval_top1": sum(hits) / len(hits)}

    rng = torch.Generator().manual_seed(recipe.seed + 4)
    for attribute in ("colour", "kind", "size", "count"):
        correct = []
        for i, scene in enumerate(scenes):
            candidates = encode([truth[i]] + [captions(v)[0] for v in variants(scene, attribute, rng)])
            correct.append(int((candidates @ image[i]).argmax()) == 0)
        out[f"zero_shot_{attribute}"] = sum(correct) / len(correct)

    matched = 100 * (image * text).sum(-1).clamp_min(0)  # (N,)
    other = torch.roll(torch.arange(len(truth)), -1)
    differ = torch.tensor([scenes[i] != scenes[j] for i, j in enumerate(other.tolist())])
    mismatched = 100 * (image * text[other]).sum(-1).clamp_min(0)
    out["clip_score_matched"] = float(matched.mean())
    out["clip_score_mismatched"] = float(mismatched[differ].mean())
    out["logit_scale"] = float(model.logit_scale.exp())
    return out


def report(validation: dict) -> str:
    v = validation
    return (f"on {v['items']} val items: retrieval top-1 {v['retrieval_top1']:.3f} (among "
            f"{min(64, v['items'])} captions); zero-shot colour {v['zero_shot_colour']:.3f}, "
            f"kind {v['zero_shot_kind']:.3f}, size {v['zero_shot_size']:.3f}, count {v['zero_shot_count']:.3f}; "
            f"CLIPScore matched {v['clip_score_matched']:.1f} vs mismatched {v['clip_score_mismatched']:.1f}")
