"""Caption metrics at every validation, so a run can keep its best checkpoint by what it is for.

The module's validation step gives the losses; this callback captions the same validation batches
by beam search and logs, as `val/<name>`:
  - CIDEr and BLEU-4 (pycocoevalcap's scorers on lowercased, punctuation-free words: its PTB
    tokenizer needs Java and does the same to plain captions), and `cider_bleu4`, their sum: the
    reference implementation's rule for the best checkpoint;
  - for the synthetic benchmark, the exact scores of `recon_ft.data.synthetic.score_caption`
    (`caption_exact`, `caption_count`, ..., the references parse back to the scene).
Under DDP each rank scores its own shard and the values are averaged over ranks (CIDEr's IDF is
then per shard: an approximation; eval.py computes the exact corpus values).
"""

from __future__ import annotations

import re

import lightning as L
import numpy as np

from recon_ft.data.synthetic import parse_caption, score_caption

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def caption_metrics(captions: list[str], references: list[list[str]]) -> dict[str, float]:
    """CIDEr, BLEU-4, their sum, and the synthetic scores when every reference parses."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [_words(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_words(c)] for i, c in enumerate(captions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {"CIDEr": float(cider), "BLEU-4": float(bleu[3]), "cider_bleu4": float(cider) + float(bleu[3])}
    scenes = [parse_caption(refs[0]) if refs else None for refs in references]
    if all(scene is not None for scene in scenes):
        scores = [score_caption(c, scene) for c, scene in zip(captions, scenes)]
        for name in scores[0]:
            out[f"caption_{name}"] = float(np.mean([s[name] for s in scores]))
    return out


class CaptionValidation(L.Callback):
    """Beam-search captions of up to `max_items` validation items per validation, scored.
    `max_length` None: the captioner's own caption length (`Captioner.caption_max_length`)."""

    def __init__(self, max_items: int | None = 64, num_beams: int = 3, max_length: int | None = None,
                 min_length: int = 5):
        self.max_items = max_items
        self.generate_kwargs = dict(num_beams=num_beams, max_length=max_length, min_length=min_length)
        self._captions: list[str] = []
        self._references: list[list[str]] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._captions, self._references = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not batch["caption"]:
            return
        room = len(batch["caption"]) if self.max_items is None else self.max_items - len(self._captions)
        if room <= 0:
            return
        images = batch["image_cap"][:room]
        self._captions += pl_module.captioner.generate(images, **self.generate_kwargs)
        self._references += [list(r) for r in batch["references"][:room]]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._captions:
            return
        for name, value in caption_metrics(self._captions, self._references).items():
            pl_module.log(f"val/{name}", value, sync_dist=True, batch_size=len(self._captions))
