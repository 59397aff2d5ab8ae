"""The per-batch work of an evaluation, as a LightningModule's predict_step (one or many devices).

For a batch of B items (images + reference captions) and k candidates:
  captions   B beam captions (one generate call) and B * (k - 1) nucleus samples (one call);
  images     one call list, `generation.batch_size` per pipeline call:
               T2I:   k images of the item's reference caption (seeds "t2i" 0..k-1; image 0 is the
                      generation metric's image),
               I2T2I: one image per candidate caption, all with the item's "i2t2i" seed (the
                      captions differ, the noise does not);
  captions   B * k beam captions of the T2I images (the T2I2T reconstructions; one call);
  CLIP       CLIP score of every T2I image to its prompt, CLIP-I of every I2T2I image and of the
             generation image to the source.
Images are saved as PNG (`images/<index>/...`) by the rank that made them; each rank keeps its rows
and `on_predict_epoch_end` gathers them to every rank (no collective per step: ranks may get one
batch fewer, EvalShardSampler). Text-only scores (CIDEr, SBERT) and FID run afterwards on rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from recon_ft.data import EvalShardSampler
from recon_ft.eval.captioning import CaptionSettings, beam_captions, sample_captions
from recon_ft.eval.generation import GenerationSettings, generate_images, save_png
from recon_ft.eval.seeds import item_seed


@dataclass
class EvalSettings:
    seed: int = 0
    k: int = 5  # candidates per item in the analyses
    i2t2i: bool = True
    t2i2t: bool = True
    steps: int = 10  # diffusion steps (resolved from GenerationSettings)
    caption: CaptionSettings = field(default_factory=CaptionSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"analysis.k must be >= 1, got {self.k}")


def image_path(index: int, name: str) -> str:
    """Where item `index`'s image `name` lives, relative to the evaluation directory."""
    return f"images/{index:06d}/{name}.png"


@torch.no_grad()
def run_batch(captioner, generator, clip, batch: dict[str, Any], s: EvalSettings,
              out_dir: Path | None = None) -> list[dict[str, Any]]:
    """One batch of items -> one row per item (captions, seeds, image paths, CLIP scores)."""
    ids, indices, refs = batch["id"], batch["index"], batch["references"]
    b, k = len(ids), s.k
    if b == 0:
        return []
    pixel_values = batch["image_cap"]
    source = ((batch["image_gen"].float() + 1) / 2).clamp(0, 1)  # (B, 3, Hg, Wg) in [0, 1]
    prompts = [r[s.generation.reference % len(r)] for r in refs]

    # -- captions of the source images
    beam = beam_captions(captioner, pixel_values, s.caption)
    n_samples = (k - 1) if s.i2t2i else 0
    if s.caption.mode == "sample":
        n_samples = max(n_samples, 1)
    samples = sample_captions(captioner, pixel_values, ids, n_samples, s.caption, s.seed)
    main = [smp[0] for smp in samples] if s.caption.mode == "sample" else beam
    candidates = [[beam[i], *samples[i][: k - 1]] for i in range(b)] if s.i2t2i else [[] for _ in ids]

    # -- images: k per prompt (T2I; image 0 also serves the generation metrics), one per candidate (I2T2I)
    n_t2i = k if s.t2i2t else 1
    t2i_seeds = [[item_seed(s.seed, i, "t2i", j) for j in range(n_t2i)] for i in ids]
    i2t2i_seeds = [item_seed(s.seed, i, "i2t2i") for i in ids]
    all_prompts = [p for p in prompts for _ in range(n_t2i)] + [c for cands in candidates for c in cands]
    all_seeds = [x for seeds in t2i_seeds for x in seeds] + [i2t2i_seeds[i] for i in range(b) for _ in candidates[i]]
    images = generate_images(generator, all_prompts, all_seeds, s.generation, s.steps)
    t2i = images[: b * n_t2i].view(b, n_t2i, *images.shape[1:])
    i2t2i = images[b * n_t2i:]
    device = source.device
    gen0 = t2i[:, 0].to(device)

    # -- scores
    gen_clip_score = _float_list(clip_score(clip, gen0, prompts))
    gen_clip_i = _float_list(clip_i(clip, source, gen0))
    t2i_flat = t2i.flatten(0, 1).to(device)
    t2i_clip = _float_list(clip_score(clip, t2i_flat, [p for p in prompts for _ in range(n_t2i)])) if s.t2i2t else []
    recovered = beam_captions(captioner, captioner.preprocess(t2i_flat * 2 - 1), s.caption) if s.t2i2t else []
    i2t2i_clip = []
    if s.i2t2i:
        src_rep = source.repeat_interleave(k, dim=0)
        i2t2i_clip = _float_list(clip_i(clip, src_rep, i2t2i.to(device)))

    # -- rows (and PNG files)
    rows = []
    for i in range(b):
        index = int(indices[i])
        row: dict[str, Any] = {
            "index": index,
            "id": _jsonable_id(ids[i]),
            "references": list(refs[i]),
            "caption": main[i],
            "beam_caption": beam[i],
            "source_image": image_path(index, "source"),
            "gen": {"prompt": prompts[i], "seed": t2i_seeds[i][0], "image": image_path(index, "t2i_0"),
                    "clip_score": gen_clip_score[i], "clip_i": gen_clip_i[i]},
        }
        if "domain" in batch:
            row["domain"] = batch["domain"][i]
        if s.i2t2i:
            row["i2t2i"] = [
                {"caption": candidates[i][j], "kind": "beam" if j == 0 else "sample", "seed": i2t2i_seeds[i],
                 "image": image_path(index, f"i2t2i_{j}"), "clip_i": i2t2i_clip[i * k + j]}
                for j in range(k)
            ]
        if s.t2i2t:
            row["t2i2t"] = [
                {"seed": t2i_seeds[i][j], "image": image_path(index, f"t2i_{j}"),
                 "clip_score": t2i_clip[i * k + j], "caption": recovered[i * k + j]}
                for j in range(k)
            ]
        rows.append(row)
        if out_dir is not None:
            save_png(source[i], out_dir / row["source_image"])
            for j in range(n_t2i):
                save_png(t2i[i, j], out_dir / image_path(index, f"t2i_{j}"))
            if s.i2t2i:
                for j in range(k):
                    save_png(i2t2i[i * k + j], out_dir / image_path(index, f"i2t2i_{j}"))
    return rows


def clip_score(clip, images, texts):
    from recon_ft.eval.metrics import clip_score as f

    return f(clip, images, texts)


def clip_i(clip, a, b):
    from recon_ft.eval.metrics import clip_i as f

    return f(clip, a, b)


def _float_list(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.detach().float().cpu().tolist()]


def _jsonable_id(item_id):
    if isinstance(item_id, torch.Tensor):
        item_id = item_id.item()
    return item_id if isinstance(item_id, (int, str)) else str(item_id)


class EvalModule(L.LightningModule):
    """predict_step = run_batch; rows gathered to every rank at the end of the epoch (`self.rows`)."""

    def __init__(self, captioner, generator, clip, settings: EvalSettings, out_dir: str | Path):
        super().__init__()
        self.captioner, self.generator, self.clip = captioner, generator, clip
        self.settings, self.out_dir = settings, Path(out_dir)
        self.rows: list[dict[str, Any]] = []
        self.n_bad = 0

    def on_predict_epoch_start(self) -> None:
        self.rows, self.n_bad = [], 0

    def predict_step(self, batch, batch_idx):
        self.n_bad += int(batch.get("n_bad", 0))
        self.rows.extend(run_batch(self.captioner, self.generator, self.clip, batch, self.settings, self.out_dir))

    def on_predict_epoch_end(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (self.rows, self.n_bad))
            self.rows = [row for rows, _ in gathered for row in rows]
            self.n_bad = sum(n for _, n in gathered)
        self.rows.sort(key=lambda row: row["index"])


# ------------------------------------------------------------------------------------ data


class IndexedDataset(Dataset):
    """A view dataset whose samples also carry their position ("index"), the evaluation's item key."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        if sample is not None:
            sample["index"] = index
        return sample


class IndexedCollate:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, samples):
        batch = self.collate(samples)
        batch["index"] = [s["index"] for s in samples if s is not None]
        return batch


class Head(Dataset):
    """The first n items of a dataset (keeps the dataset's record of entries left out at indexing)."""

    def __init__(self, dataset: Dataset, n: int):
        self.dataset, self.n = dataset, min(int(n), len(dataset))  # type: ignore[arg-type]
        self.bad_at_index = list(getattr(dataset, "bad_at_index", []))
        self.contents = getattr(dataset, "contents", None)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        return self.dataset[key]


def eval_loader(datamodule, split: str, batch_size: int | None = None) -> DataLoader:
    """The split's items, each once over all ranks (EvalShardSampler), batches carrying "index"."""
    view = IndexedDataset(datamodule._view_dataset(split))
    # A sampler, not a batch_sampler: Lightning's predict rebuilds the loader's BatchSampler around
    # `loader.sampler`, which for a loader given a batch_sampler is a plain SequentialSampler (every
    # rank would evaluate every item).
    return DataLoader(view, sampler=EvalShardSampler(len(view)), batch_size=batch_size or datamodule.eval_batch_size,
                      drop_last=False, collate_fn=IndexedCollate(datamodule.collate),
                      num_workers=datamodule.num_workers, pin_memory=datamodule.pin_memory)
