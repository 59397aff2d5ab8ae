"""A user's own captions: captions.jsonl, one {"image": path, "caption": text} per line.

Relative image paths resolve against the jsonl file's folder. One item per line, kept simple
and predictable: an image on several lines is several items, each with references = [caption].
Blank lines are ignored; a line with an empty caption is left out and recorded in
`bad_at_index`; a line that is not such an object is a format error (ValueError with file:line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recon_ft.data.indexed import IndexedCaptions
from recon_ft.data.sampler import unpack_key


class JsonlCaptions(IndexedCaptions):
    """Sample: {"id": line number (1-based), "image": path (str), "caption": str, "references": [caption]}."""

    def __init__(self, path: str | Path, limit: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(
                f'{self.path}: file not found (expected a .jsonl file of {{"image": path, "caption": text}} lines)')
        folder = self.path.parent
        self.items: list[tuple[int, str, str]] = []  # (line number, image path, caption)
        self.bad_at_index: list[tuple[str, str]] = []
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{self.path.name}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f'{where}: not valid JSON ({err.msg}); expected {{"image": path, '
                                     f'"caption": text}}') from None
                if not (isinstance(record, dict) and isinstance(record.get("image"), str)
                        and isinstance(record.get("caption"), str)):
                    raise ValueError(f'{where}: expected {{"image": path, "caption": text}}, got {line.strip()[:80]}')
                image = str(folder / record["image"])  # an absolute path stays absolute
                caption = record["caption"].strip()
                if not caption:
                    self.bad_at_index.append((f"{where} ({image})", "empty caption"))
                    continue
                self.items.append((lineno, image, caption))
                if limit is not None and len(self.items) >= limit:
                    break
        if not self.items:
            raise ValueError(f"{self.path.name}: no usable lines")
        self.report_left_out(self.path.name, "lines with an empty caption")

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, _ = unpack_key(key)
        lineno, image, caption = self.items[index]
        return {"id": lineno, "image": image, "caption": caption, "references": [caption]}
