"""I2T2I analysis throughput, batched vs one item at a time, measured in one process.

    python -m recon_ft.eval.throughput                       # tiny models, 8 synthetic items, k=5
    python -m recon_ft.eval.throughput --items 16 analysis.k=5 generation.num_inference_steps=50 \
        run_dir=outputs/train/<time>                         # any eval.yaml override after the flags

The I2T2I analysis of an item: its beam caption and k-1 nucleus samples, one image per caption, CLIP-I
of each image to the source. "batched": all items in one pass (one generate call for the beam
captions, one for all samples, images `generation.batch_size` per pipeline call); "one at a time":
the same work item by item. Both run on the same models and items, after one warm-up item, in
alternating rounds; the outputs must be equal (seeds are per item), which is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see eval.py

import torch  # noqa: E402

from recon_ft.constants import CONF_DIR  # noqa: E402


def i2t2i_items(captioner, generator, clip, batch, settings) -> list[dict]:
    """The I2T2I analysis of a batch: k captions per image, one image each, CLIP-I to the source."""
    from recon_ft.eval.captioning import beam_captions, sample_captions
    from recon_ft.eval.generation import generate_images
    from recon_ft.eval.metrics import clip_i
    from recon_ft.eval.seeds import item_seed

    ids, k = batch["id"], settings.k
    source = ((batch["image_gen"] + 1) / 2).clamp(0, 1)
    beam = beam_captions(captioner, batch["image_cap"], settings.caption)
    samples = sample_captions(captioner, batch["image_cap"], ids, k - 1, settings.caption, settings.seed)
    captions = [c for i in range(len(ids)) for c in [beam[i], *samples[i]]]
    seeds = [item_seed(settings.seed, i, "i2t2i") for i in ids for _ in range(k)]
    images = generate_images(generator, captions, seeds, settings.generation, settings.steps)
    scores = clip_i(clip, source.repeat_interleave(k, dim=0), images).tolist()
    return [{"id": ids[i], "captions": captions[i * k:(i + 1) * k], "clip_i": scores[i * k:(i + 1) * k]}
            for i in range(len(ids))]


def _slice(batch: dict, i: int) -> dict:
    return {key: (v[i:i + 1] if isinstance(v, (torch.Tensor, list)) else v) for key, v in batch.items()}


def measure(overrides: list[str], items: int = 8, rounds: int = 1, device: str = "cpu") -> dict:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"limit={items}", f"batch_size={items}", *overrides])
    threads = torch.get_num_threads()
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    try:
        return _measure(cfg, items, rounds, device)
    finally:
        torch.set_num_threads(threads)


def _measure(cfg, items: int, rounds: int, device: str) -> dict:
    from recon_ft.eval.load import load_pair
    from recon_ft.eval.pipeline import build_clip, build_datamodule, settings_from
    from recon_ft.eval.predict import eval_loader

    pair = load_pair(cfg)
    settings, _ = settings_from(cfg, pair)
    settings.generation.batch_size = max(settings.generation.batch_size, items * settings.k)
    clip = build_clip(cfg.metrics.clip).to(device)
    captioner, generator = pair.captioner.to(device), pair.generator.to(device)
    datamodule, _ = build_datamodule(cfg, pair)
    batch = next(iter(eval_loader(datamodule, cfg.split, items)))
    batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    n = len(batch["id"])

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    i2t2i_items(captioner, generator, clip, _slice(batch, 0), settings)  # warm-up
    times = {"batched": 0.0, "one_at_a_time": 0.0}
    outputs = {}
    for _ in range(rounds):
        sync()
        t = time.perf_counter()
        outputs["batched"] = i2t2i_items(captioner, generator, clip, batch, settings)
        sync()
        times["batched"] += time.perf_counter() - t
        t = time.perf_counter()
        outputs["one_at_a_time"] = [row for i in range(n)
                                    for row in i2t2i_items(captioner, generator, clip, _slice(batch, i), settings)]
        sync()
        times["one_at_a_time"] += time.perf_counter() - t
    same = [a["captions"] == b["captions"] for a, b in zip(outputs["batched"], outputs["one_at_a_time"])]
    clip_diff = max(abs(x - y) for a, b in zip(outputs["batched"], outputs["one_at_a_time"])
                    for x, y in zip(a["clip_i"], b["clip_i"]))
    result = {
        "items": n,
        "k": settings.k,
        "diffusion_steps": settings.steps,
        "rounds": rounds,
        "device": device,
        "threads": torch.get_num_threads(),
        "batched_items_per_s": n * rounds / times["batched"],
        "one_at_a_time_items_per_s": n * rounds / times["one_at_a_time"],
        "speedup": times["one_at_a_time"] / times["batched"],
        "same_captions": all(same),
        "max_clip_i_difference": clip_diff,
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args, overrides = parser.parse_known_args(argv)
    result = measure(overrides, items=args.items, rounds=args.rounds, device=args.device)
    print(f"I2T2I analysis, k={result['k']}, {result['diffusion_steps']} diffusion steps, {result['items']} items "
          f"on {result['device']} ({result['threads']} threads):")
    print(f"  batched:          {result['batched_items_per_s']:.3f} items/s")
    print(f"  one at a time:    {result['one_at_a_time_items_per_s']:.3f} items/s")
    print(f"  speedup:          {result['speedup']:.2f}x   (same captions: {result['same_captions']}, "
          f"max CLIP-I difference {result['max_clip_i_difference']:.2e})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
