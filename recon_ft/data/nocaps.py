"""NoCaps validation captions (nocaps_val_4500_captions.json), with each image's domain.

Format (COCO-captions style): {"images": [{"id", "file_name", "open_images_id", "height",
"width", "domain": "in-domain|near-domain|out-domain"}, ...], "annotations": [{"image_id",
"id", "caption"}, ...]}, 10 captions per image; images are <image_root>/<file_name>.
NoCaps results are reported per domain, so every sample carries "domain".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recon_ft.data.coco import read_json, require_dir
from recon_ft.data.indexed import IndexedCaptions
from recon_ft.data.sampler import pick_reference, unpack_key


NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")


class NoCapsCaptions(IndexedCaptions):
    """NoCaps images (optionally only some domains) with their reference captions.

    Sample: {"id": image id (int), "image": path (str), "caption": one reference chosen from
    (seed, index, epoch), "references": list[str], "domain": str}. Images without a non-empty
    caption are left out and recorded in `bad_at_index`. `limit` keeps the first N images.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path,
                 domains: Sequence[str] | None = None, seed: int = 0, limit: int | None = None):
        self.json_path = Path(json_path)
        name = self.json_path.name
        data = read_json(self.json_path, "NoCaps captions json such as nocaps_val_4500_captions.json")
        self.image_root = require_dir(image_root, "the NoCaps image folder holding <file_name>")
        domains = NOCAPS_DOMAINS if domains is None else tuple(domains)
        unknown = [d for d in domains if d not in NOCAPS_DOMAINS]
        if unknown:
            raise ValueError(f"unknown NoCaps domains {unknown}; expected some of {NOCAPS_DOMAINS}")
        self.domains, self.seed = domains, seed
        for field in ("images", "annotations"):
            if not (isinstance(data, dict) and isinstance(data.get(field), list)):
                raise ValueError(f"{name}: expected a top-level '{field}' list (COCO-captions format)")

        captions: dict[Any, list[str]] = defaultdict(list)  # image id -> references, file order
        for n, ann in enumerate(data["annotations"]):
            if not (isinstance(ann, dict) and "image_id" in ann and "caption" in ann):
                raise ValueError(f"{name}: annotations[{n}] needs 'image_id' and 'caption'")
            caption = str(ann["caption"]).strip()
            if caption:
                captions[ann["image_id"]].append(caption)

        self.items: list[tuple[Any, str, str, list[str]]] = []  # (id, file_name, domain, refs)
        self.bad_at_index: list[tuple[str, str]] = []
        for n, image in enumerate(data["images"]):
            if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
                raise ValueError(f"{name}: images[{n}] needs 'id' and 'file_name'")
            domain = image.get("domain")
            if domain not in NOCAPS_DOMAINS:
                raise ValueError(f"{name}: images[{n}] needs a 'domain' field, one of {NOCAPS_DOMAINS}"
                                 f" (found {domain!r})")
            if domain not in domains:
                continue
            references = captions.get(image["id"], [])
            if not references:
                self.bad_at_index.append((str(self.image_root / image["file_name"]), "no non-empty caption"))
                continue
            self.items.append((image["id"], image["file_name"], domain, references))
            if limit is not None and len(self.items) >= limit:
                break
        if not self.items:
            raise ValueError(f"{name}: no usable images in domains {list(domains)}")
        self.report_left_out(name, "images without a caption")

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = unpack_key(key)
        image_id, file_name, domain, references = self.items[index]
        return {
            "id": image_id,
            "image": str(self.image_root / file_name),
            "caption": pick_reference(references, self.seed, index, epoch),
            "references": list(references),
            "domain": domain,
        }
