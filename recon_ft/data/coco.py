"""COCO and Flickr30k captions in Karpathy's split files (dataset_coco.json, dataset_flickr30k.json).

Format: {"images": [{"filepath": "val2014", "filename": "...jpg", "cocoid": 391895,
"split": "train|restval|val|test", "sentences": [{"raw": "..."}, ...]}, ...]}. The image is
<image_root>/<filepath>/<filename>; Flickr30k has no filepath (and no restval), its images are
<image_root>/<filename>. Karpathy training uses splits train + restval.

The json is indexed at construction (format errors raise then); images are only opened when a
sample is loaded, so a missing or corrupt image surfaces as one bad sample. Empty reference
sentences are dropped; an image left with none is left out and recorded in `bad_at_index`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recon_ft.data.indexed import IndexedCaptions
from recon_ft.data.sampler import pick_reference, unpack_key


KARPATHY_SPLITS = ("train", "restval", "val", "test")


def read_json(path: str | Path, expected: str) -> Any:
    """Parsed json at `path`; clear FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected {expected})")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); expected {expected}") from None


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: directory not found (expected {what})")
    return path


class KarpathyCaptions(IndexedCaptions):
    """Images of the given Karpathy splits with all their reference sentences.

    Sample: {"id": cocoid (Flickr30k: imgid, else filename), "image": path (str),
    "caption": one reference chosen from (seed, index, epoch), "references": list[str]}.
    `limit` keeps the first N images (quick runs).
    """

    def __init__(self, json_path: str | Path, image_root: str | Path,
                 splits: str | Sequence[str] = ("train", "restval"), seed: int = 0,
                 limit: int | None = None):
        self.json_path = Path(json_path)
        splits = (splits,) if isinstance(splits, str) else tuple(splits)
        unknown = [s for s in splits if s not in KARPATHY_SPLITS]
        if unknown or not splits:
            raise ValueError(f"splits must be a non-empty subset of {KARPATHY_SPLITS}, got {list(splits)}")
        self.splits, self.seed = splits, seed
        name = self.json_path.name
        data = read_json(self.json_path, "a Karpathy split json such as dataset_coco.json")
        self.image_root = require_dir(image_root, "the image root holding <filepath>/<filename>")
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list):
            raise ValueError(f"{name}: expected a top-level 'images' list (Karpathy split format)")

        # items[i] = (id, image path relative to image_root, references)
        self.items: list[tuple[int | str, str, list[str]]] = []
        self.bad_at_index: list[tuple[str, str]] = []  # (image file, what is wrong)
        for n, entry in enumerate(images):
            if not (isinstance(entry, dict) and isinstance(entry.get("filename"), str)
                    and isinstance(entry.get("split"), str) and isinstance(entry.get("sentences"), list)):
                raise ValueError(f"{name}: images[{n}] needs 'filename', 'split' and a 'sentences' list")
            if entry["split"] not in splits:
                continue
            try:
                references = [str(s["raw"]).strip() for s in entry["sentences"]]
            except (TypeError, KeyError):
                raise ValueError(f"{name}: images[{n}].sentences entries need a 'raw' caption") from None
            references = [r for r in references if r]
            rel = str(Path(entry.get("filepath", "")) / entry["filename"])
            if not references:
                self.bad_at_index.append((str(self.image_root / rel), "no non-empty caption"))
                continue
            image_id = entry.get("cocoid", entry.get("imgid", entry["filename"]))
            self.items.append((image_id, rel, references))
            if limit is not None and len(self.items) >= limit:
                break
        if not self.items:
            raise ValueError(f"{name}: no usable images in splits {list(splits)}")
        self.report_left_out(name, "images without a caption")

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = unpack_key(key)
        image_id, rel, references = self.items[index]
        return {
            "id": image_id,
            "image": str(self.image_root / rel),
            "caption": pick_reference(references, self.seed, index, epoch),
            "references": list(references),
        }
