"""Fake batches shaped like the data module's, and the loader both loops read them through."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

CAPTIONS = [
    "a small red circle",
    "a large blue square left of a green star",
    "a purple triangle above a yellow circle",
    "a star",
    "two small green squares right of a large red triangle",
    "a blue circle below an orange square",
    "a large yellow star",
    "a red square left of a small blue circle and a green triangle",
]


def fake_batches(captioner, generator, batch_size: int, n: int = 4, seed: int = 0) -> list[dict]:
    """`n` distinct batches shaped like the datamodule's: both image views, captions, references, ids."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        images = torch.rand(batch_size, 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
        captions = [CAPTIONS[(i * batch_size + j) % len(CAPTIONS)] for j in range(batch_size)]
        with torch.no_grad():
            image_cap = captioner.preprocess(images.to(captioner.mean.device)).cpu()  # the loop moves batches
        out.append(
            {
                "image_gen": images,
                "image_cap": image_cap,
                "caption": captions,
                "references": [[c] for c in captions],
                "id": [f"{seed}-{i}-{j}" for j in range(batch_size)],
                "n_bad": 0,
            }
        )
    return out


def with_unpaired(batches: list[dict], captioner, generator, seed: int = 1) -> list[dict]:
    """The batches with as many unpaired images (other random images) and texts as paired rows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, batch in enumerate(batches):
        b = len(batch["caption"])
        images = torch.rand(b, 3, generator.image_size, generator.image_size, generator=g) * 2 - 1
        with torch.no_grad():
            image_cap = captioner.preprocess(images.to(captioner.mean.device)).cpu()  # the loop moves batches
        texts = [CAPTIONS[(i * b + j + 3) % len(CAPTIONS)] for j in range(b)]
        out.append({**batch, "unpaired_images": {"image_cap": image_cap, "image_gen": images,
                                                  "id": [f"u{seed}-{i}-{j}" for j in range(b)]},
                    "unpaired_texts": texts})
    return out


class _Cycle(Dataset):
    """`length` items cycling through prebuilt batches (the loader does no collation)."""

    def __init__(self, batches: list[dict], length: int):
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batches[i % len(self.batches)]


def make_loader(batches: list[dict], length: int) -> DataLoader:
    # Its own generator: creating the iterator draws a seed, and it must not come from the global
    # RNG, which draws the timesteps and noise of compute_losses.
    return DataLoader(
        _Cycle(batches, length),
        batch_size=None,
        shuffle=False,
        num_workers=0,
        generator=torch.Generator().manual_seed(0),
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: to_device(v, device) if isinstance(v, dict) else v.to(device, non_blocking=True)
            if torch.is_tensor(v) else v for k, v in batch.items()}
