"""How informative, and how strong, the text cycle is at each timestep: the evidence for `loss.t_max`.

    python -m recon_ft.experiments.t_max_probe [--items 64] [--out docs/t_max_probe.md]

On the zoo's models (frozen, no adapters) and val items of the synthetic benchmark, for each t:
  - the captioner's loss of the right caption on the decoded x0 prediction D(z0_hat(t)), and of
    another item's caption on it; their gap says how much of the caption the decode still carries
    (0: the decode no longer tells its caption from another);
  - the norm of that loss's gradient at the UNet's output (what the text cycle backpropagates
    into the denoiser), scaled by the x0 formula's d z0_hat / d prediction: sqrt((1 - a_t) / a_t)
    for epsilon-prediction (it grows without bound), sqrt(1 - a_t) for v-prediction (at most 1).
A useful t_max keeps the timesteps whose gap is a sizeable part of the gap at small t, and drops
those where the gradient is large but the gap small.
"""

from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TIMESTEPS = (25, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def probe(items: int = 64, seed: int = 0, timesteps=TIMESTEPS) -> list[dict]:
    import torch

    from recon_ft.method.losses import add_noise, predict_x0
    from recon_ft.models.blip import build_blip
    from recon_ft.models.sd import build_stable_diffusion
    from recon_ft.zoo import zoo_part
    from recon_ft.zoo.data import render_split, to_unit_range

    captioner = build_blip(pretrained=zoo_part("captioner"), adapter={"mode": "frozen"}).eval()
    generator = build_stable_diffusion(pretrained=zoo_part("generator"), unet_adapter={"mode": "frozen"}).eval()
    data = render_split("val", items, seed, 64)
    images = to_unit_range(data.images, generator.image_size)  # (N, 3, S, S) in [-1, 1]
    captions = [refs[0] for refs in data.references]
    shuffled = captions[1:] + captions[:1]  # another item's caption for every item
    right, wrong = captioner.tokenize(captions), captioner.tokenize(shuffled)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z0 = generator.encode_images(images, rng)
        cond = generator.encode_text(generator.tokenize(captions))
    rows = []
    for t in timesteps:
        tt = torch.full((items,), t, dtype=torch.long)
        a = generator.alphas_cumprod[tt]
        zt = add_noise(z0, torch.randn(z0.shape, generator=rng), a)
        with torch.no_grad():
            pred = generator.denoise(zt, tt, cond)
        pred.requires_grad_(True)
        x_hat = generator.decode_latents(predict_x0(zt, pred, a, generator.prediction_type)).clamp(-1, 1)
        pixels = captioner.preprocess(x_hat)
        loss_right = _caption_loss(captioner, pixels, right)  # (B,)
        with torch.no_grad():
            loss_wrong = _caption_loss(captioner, pixels, wrong)
        (grad,) = torch.autograd.grad(loss_right.mean(), pred)
        rows.append({
            "t": t,
            "dx0/dpred": x0_gain(float(a[0]), generator.prediction_type),
            "loss_right": float(loss_right.mean()),
            "loss_other": float(loss_wrong.mean()),
            "gap": float((loss_wrong - loss_right).mean()),
            "grad_norm": float(grad.flatten(1).norm(dim=1).mean()) * items,  # per row, undoing the mean
        })
    return rows


def x0_gain(alpha_bar: float, prediction_type: str) -> float:
    """d z0_hat / d prediction of recon_ft.method.losses.predict_x0 (per element)."""
    if prediction_type == "epsilon":
        return math.sqrt((1 - alpha_bar) / alpha_bar) if alpha_bar > 0 else math.inf
    return math.sqrt(1 - alpha_bar)


def _caption_loss(captioner, pixels, tokens):
    """Per-row mean cross-entropy of the caption tokens (prompt and padding excluded): (B,)."""
    import torch.nn.functional as F

    logits = captioner.logits(pixels, tokens)[:, :-1]  # (B, L-1, V); position i predicts token i + 1
    labels = tokens.labels[:, 1:]
    ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")  # (B, L-1)
    return ce.sum(1) / (labels != -100).sum(1)


def markdown(rows: list[dict]) -> str:
    lines = ["| t | d x0 / d prediction | loss, right caption | loss, another item's caption | gap | gradient norm at the UNet output |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['t']} | {r['dx0/dpred']:.2f} | {r['loss_right']:.3f} | {r['loss_other']:.3f} | "
              f"{r['gap']:.3f} | {r['grad_norm']:.3g} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recon_ft.experiments.t_max_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(markdown(probe(args.items, args.seed)))


if __name__ == "__main__":
    main()
