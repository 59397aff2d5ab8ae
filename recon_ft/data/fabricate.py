"""Small fixture datasets written in exactly the standard formats (docs/design.md, "The data contract").

Images are rendered synthetic scenes and captions their grammar captions, so a fixture is
learnable and checkable with `parse_caption`. Options add one broken entry each (always in
the training split / in-domain / extra lines, after the good ones):
  corrupt: an image file cut short (PIL opens its header but cannot decode it),
  missing: an entry whose image file does not exist,
  empty_caption: an entry whose captions are all "".
Each writer returns a dict of Paths: the annotation file ("json" / "jsonl"), "image_root"
where the loaders need one, and the broken entries' image paths ("corrupt", "missing",
"empty_caption", None when not asked for).
"""

from __future__ import annotations

import io
import json
from itertools import cycle, islice
from pathlib import Path

from PIL import Image

from recon_ft.data.synthetic import captions, generate

COCO_CAPTIONS_PER_IMAGE = 5
NOCAPS_CAPTIONS_PER_IMAGE = 10


def _scene_image(seed: int, split: str, index: int, image_size: int) -> tuple[Image.Image, list[str]]:
    scene, pixels = generate(seed, split, index, image_size)
    return Image.fromarray(pixels), captions(scene)


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)


def _write(image, path: Path, kind: str | None) -> None:
    """The image as a file, a truncated file (kind "corrupt") or nothing (kind "missing")."""
    if kind == "corrupt":
        _save_truncated(image, path)
    elif kind != "missing":
        _save(image, path)


def _save_truncated(image: Image.Image, path: Path) -> None:
    """A JPEG cut to half its bytes: the header parses, decoding fails."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])


def _n_refs(references: list[str], n: int) -> list[str]:
    """Cycle a scene's readings to the format's captions-per-image count."""
    return list(islice(cycle(references), n))


def write_coco_karpathy(root: str | Path, n_per_split: int = 2, flickr: bool = False, *, seed: int = 0,
                        image_size: int = 64, corrupt: bool = False, missing: bool = False,
                        empty_caption: bool = False) -> dict[str, Path | None]:
    """dataset_coco.json (splits train/restval/val/test, images in <root>/images/<filepath>/) or,
    flickr=True, dataset_flickr30k.json (splits train/val/test, no filepath, <root>/images/)."""
    root = Path(root)
    image_root = root / "images"
    splits = ("train", "val", "test") if flickr else ("train", "restval", "val", "test")
    synthetic_split = {"train": "train", "restval": "train", "val": "val", "test": "test"}
    entries, paths = [], {"corrupt": None, "missing": None, "empty_caption": None}
    sentid = 0

    def add(split: str, index: int, references: list[str] | None, kind: str | None = None) -> None:
        nonlocal sentid
        imgid = len(entries)
        cocoid = 100000 + imgid
        if flickr:
            filepath, filename = "", f"{1000000 + imgid}.jpg"
        else:
            folder = "train2014" if split == "train" else "val2014"
            filepath, filename = folder, f"COCO_{folder}_{cocoid:012d}.jpg"
        image, readings = _scene_image(seed, synthetic_split[split], index, image_size)
        references = _n_refs(readings, COCO_CAPTIONS_PER_IMAGE) if references is None else references
        path = image_root / filepath / filename
        _write(image, path, kind)
        if kind is not None:
            paths[kind] = path
        sentences = [{"tokens": r.lower().split(), "raw": r, "imgid": imgid, "sentid": sentid + k}
                     for k, r in enumerate(references)]
        entry = {"filepath": filepath, "sentids": [s["sentid"] for s in sentences], "filename": filename,
                 "imgid": imgid, "split": split, "sentences": sentences, "cocoid": cocoid}
        if flickr:
            del entry["filepath"], entry["cocoid"]
        sentid += len(sentences)
        entries.append(entry)

    for s, split in enumerate(splits):
        offset = 10000 * s if split == "restval" else 0  # restval scenes differ from train's
        for i in range(n_per_split):
            add(split, offset + i, None)
    extra = 20000  # scene indices for broken entries, away from the good ones
    for kind, wanted in (("corrupt", corrupt), ("missing", missing), ("empty_caption", empty_caption)):
        if wanted:
            add("train", extra, [""] * COCO_CAPTIONS_PER_IMAGE if kind == "empty_caption" else None, kind)
            extra += 1
    name = "dataset_flickr30k.json" if flickr else "dataset_coco.json"
    json_path = root / name
    json_path.write_text(json.dumps({"images": entries, "dataset": "flickr30k" if flickr else "coco"}))
    return {"json": json_path, "image_root": image_root, **paths}


def write_nocaps(root: str | Path, n_per_domain: int = 2, *, seed: int = 0, image_size: int = 64,
                 corrupt: bool = False, missing: bool = False,
                 empty_caption: bool = False) -> dict[str, Path | None]:
    """nocaps_val_4500_captions.json (COCO-captions style, 10 captions per image) and images in
    <root>/images/<open_images_id>.jpg; in-, near- and out-domain images come from the synthetic
    test split (held-out compositions), as NoCaps holds out objects."""
    root = Path(root)
    image_root = root / "images"
    images, annotations = [], []
    paths: dict[str, Path | None] = {"corrupt": None, "missing": None, "empty_caption": None}
    plan = [(d, None) for d in ("in-domain", "near-domain", "out-domain") for _ in range(n_per_domain)]
    plan += [("in-domain", k) for k, wanted in
             (("corrupt", corrupt), ("missing", missing), ("empty_caption", empty_caption)) if wanted]
    for image_id, (domain, kind) in enumerate(plan):
        image, readings = _scene_image(seed, "test", image_id, image_size)
        open_images_id = f"{0x0013EA2087020901 + image_id:016x}"
        file_name = f"{open_images_id}.jpg"
        path = image_root / file_name
        _write(image, path, kind)
        if kind is not None:
            paths[kind] = path
        images.append({"id": image_id, "file_name": file_name, "open_images_id": open_images_id,
                       "height": image.height, "width": image.width, "coco_url": "", "license": 0,
                       "date_captured": "2018-11-06 11:04:33", "domain": domain})
        references = _n_refs(readings, NOCAPS_CAPTIONS_PER_IMAGE)
        if kind == "empty_caption":
            references = [""] * NOCAPS_CAPTIONS_PER_IMAGE
        for caption in references:
            annotations.append({"image_id": image_id, "id": len(annotations), "caption": caption})
    json_path = root / "nocaps_val_4500_captions.json"
    json_path.write_text(json.dumps({
        "licenses": [], "info": {"description": "recon_ft fixture in the NoCaps val format"},
        "images": images, "annotations": annotations}))
    return {"json": json_path, "image_root": image_root, **paths}


def write_jsonl(root: str | Path, n: int = 4, *, seed: int = 0, image_size: int = 64, corrupt: bool = False,
                missing: bool = False, empty_caption: bool = False) -> dict[str, Path | None]:
    """<root>/captions.jsonl with n lines {"image": "images/<i>.png", "caption": ...} (relative
    paths; the first caption reading of each scene), plus broken lines as asked."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path | None] = {"corrupt": None, "missing": None, "empty_caption": None}
    lines = []
    plan = [None] * n + [k for k, wanted in
                         (("corrupt", corrupt), ("missing", missing), ("empty_caption", empty_caption)) if wanted]
    for i, kind in enumerate(plan):
        image, readings = _scene_image(seed, "train", i, image_size)
        rel = f"images/{i:05d}.{'jpg' if kind == 'corrupt' else 'png'}"
        _write(image, root / rel, kind)
        if kind is not None:
            paths[kind] = root / rel
        lines.append(json.dumps({"image": rel, "caption": "" if kind == "empty_caption" else readings[0]}))
    jsonl_path = root / "captions.jsonl"
    jsonl_path.write_text("\n".join(lines) + "\n")
    return {"jsonl": jsonl_path, **paths}
