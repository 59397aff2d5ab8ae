"""Unpaired data: images without captions and captions without images.

Images come from a folder (searched recursively), a glob pattern, or a Karpathy-format json whose
captions are ignored; texts from a .txt file (one caption a line) or a .jsonl file (a "caption"
field per line). The synthetic benchmark has generated equivalents, seeded, drawn from their own
random streams, so they never repeat a train, val or test item:
  - `SyntheticImages(compositions="heldout")`: scenes that hold a held-out colour-kind pair, as the
    test split's do (the target domain of a few-pairs study), without their captions;
  - `SyntheticTexts(compositions=...)`: captions of other scenes, without their images.

A raw unpaired image is {"id", "image": path or PIL}; a raw text is {"id", "text"}. Texts that
cannot be used (an empty line, a line over `max_words` words) are left out when indexing and
recorded in `bad_at_index` with their file:line, as the paired datasets do; an unreadable image is
found when it is loaded and skipped there (recon_ft/data/datamodule.py).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recon_ft.data.coco import read_json
from recon_ft.data.indexed import IndexedCaptions
from recon_ft.data.synthetic import captions, render, sample_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
COMPOSITIONS = {"seen": "train", "heldout": "test"}  # which split's scene distribution to draw
# Random streams of the synthetic unpaired data, apart from the splits' (0, 1, 2: sampler.SPLIT_IDS).
STREAM_IDS = {("images", "seen"): 10, ("images", "heldout"): 11, ("texts", "seen"): 12, ("texts", "heldout"): 13}


class UnpairedImages(IndexedCaptions):
    """Image files without captions. `source`: a folder (every image file under it, sorted), a glob
    pattern ("/data/*/*.jpg"), or a Karpathy json (`image_root` defaults to its folder; `splits`
    chooses its images, all by default). Sample: {"id": path relative to the source, "image": path}."""

    def __init__(self, source: str | Path, image_root: str | Path | None = None, splits=None,
                 limit: int | None = None):
        self.source = str(source)
        self.bad_at_index: list[tuple[str, str]] = []
        path = Path(self.source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            base = path
        elif path.suffix == ".json" and path.is_file():
            files, base = self._from_karpathy(path, image_root, splits), Path(image_root or path.parent)
        elif glob.has_magic(self.source):
            files = sorted(Path(p) for p in glob.glob(self.source, recursive=True) if Path(p).is_file())
            base = _glob_base(self.source)
        else:
            raise FileNotFoundError(
                f"data.unpaired.images={self.source}: expected a folder of images, a glob pattern or a "
                "Karpathy json (dataset_coco.json)")
        if limit is not None:
            files = files[:limit]
        if not files:
            raise ValueError(f"data.unpaired.images={self.source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        self.items = [(str(_relative(f, base)), str(f)) for f in files]

    @staticmethod
    def _from_karpathy(path: Path, image_root, splits) -> list[Path]:
        data = read_json(path, "a Karpathy split json such as dataset_coco.json")
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"{path.name}: expected a top-level 'images' list (Karpathy split format)")
        root = Path(image_root or path.parent)
        wanted = None if splits is None else {splits} if isinstance(splits, str) else set(splits)
        files = []
        for n, entry in enumerate(images):
            if not (isinstance(entry, dict) and isinstance(entry.get("filename"), str)):
                raise ValueError(f"{path.name}: images[{n}] needs a 'filename'")
            if wanted is None or entry.get("split") in wanted:
                files.append(root / entry.get("filepath", "") / entry["filename"])
        return files

    def __getitem__(self, index: int) -> dict[str, Any]:
        name, file = self.items[int(index)]
        return {"id": name, "image": file}


def _glob_base(pattern: str) -> Path:
    """The folder a glob pattern searches from: its path up to the first part with a wildcard."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return Path(*fixed) if fixed else Path(".")


def _relative(file: Path, base: Path) -> Path:
    try:
        return file.relative_to(base)
    except ValueError:
        return file


class UnpairedTexts(IndexedCaptions):
    """Captions without images: a .txt file (one caption a line) or a .jsonl file ({"caption": ...}
    a line). An empty line or one over `max_words` words is left out and counted (`bad_at_index`,
    named by file:line); a .jsonl line that is not such an object is a format error.
    Sample: {"id": "<file>:<line>", "text": caption}."""

    def __init__(self, path: str | Path, max_words: int | None = 30, limit: int | None = None):
        self.path = Path(path)
        if not self.path.is_file() or self.path.suffix not in (".txt", ".jsonl"):
            raise FileNotFoundError(f"data.unpaired.texts={self.path}: expected a .txt file (one caption a line) "
                                    'or a .jsonl file ({"caption": text} a line)')
        self.items: list[tuple[str, str]] = []
        self.bad_at_index: list[tuple[str, str]] = []
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{self.path.name}:{lineno}"
                text = self._text(line, where)
                if not text:
                    self.bad_at_index.append((where, "empty caption"))
                elif max_words is not None and len(text.split()) > max_words:
                    self.bad_at_index.append((where, f"{len(text.split())} words, over data.unpaired.max_words={max_words}"))
                else:
                    self.items.append((where, " ".join(text.split())))
                if limit is not None and len(self.items) >= limit:
                    break
        if not self.items:
            raise ValueError(f"data.unpaired.texts={self.path}: no usable captions")
        self.report_left_out(self.path.name, "unusable caption lines")

    def _text(self, line: str, where: str) -> str:
        if self.path.suffix == ".txt" or not line.strip():
            return line.strip()
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f'{where}: not valid JSON ({err.msg}); expected {{"caption": text}}') from None
        if not (isinstance(record, dict) and isinstance(record.get("caption"), str)):
            raise ValueError(f'{where}: expected {{"caption": text}}, got {line.strip()[:80]}')
        return record["caption"].strip()

    def __getitem__(self, index: int) -> dict[str, Any]:
        where, text = self.items[int(index)]
        return {"id": where, "text": text}


class _SyntheticStream:
    kind: str

    def __init__(self, compositions: str = "heldout", size: int = 2000, seed: int = 0, image_size: int = 64):
        if compositions not in COMPOSITIONS:
            raise ValueError(f"compositions: expected one of {sorted(COMPOSITIONS)}, got {compositions!r}")
        if size < 1:
            raise ValueError(f"size: expected >= 1, got {size}")
        self.compositions, self.size, self.seed, self.image_size = compositions, size, seed, image_size
        self.bad_at_index: list[tuple[str, str]] = []
        self.num_bad_at_index = 0

    def __len__(self) -> int:
        return self.size

    def _draw(self, index: int):
        """(scene, rng) of item `index`: the rng has drawn the scene and goes on to draw its layout."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([int(self.seed), STREAM_IDS[(self.kind, self.compositions)], int(index)])
        return sample_scene(rng, COMPOSITIONS[self.compositions]), rng

    def scene(self, index: int):
        return self._draw(int(index))[0]


class SyntheticImages(_SyntheticStream):
    """`size` generated scene images of the chosen compositions, without their captions for the
    cycles; the true caption (the left-to-right reading) rides along as "truth", read only by the
    oracle arm of a study (`loss.unpaired_image_mode=oracle`), which needs the ceiling.
    Sample: {"id": "unpaired-<compositions>-<i>", "image": PIL RGB, "truth": caption}."""

    kind = "images"

    def __getitem__(self, index: int) -> dict[str, Any]:
        scene, rng = self._draw(int(index))
        pixels = render(scene, self.image_size, rng)
        return {"id": f"unpaired-{self.compositions}-{index}", "image": Image.fromarray(pixels),
                "truth": captions(scene)[0]}


class SyntheticTexts(_SyntheticStream):
    """`size` captions (the left-to-right reading) of generated scenes, without their images.
    Sample: {"id": "text-<compositions>-<i>", "text": caption}."""

    kind = "texts"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": f"text-{self.compositions}-{index}", "text": captions(self.scene(int(index)))[0]}
