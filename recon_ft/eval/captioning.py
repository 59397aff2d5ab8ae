"""Captions for evaluation: beam search, and nucleus samples seeded per item.

transformers' sampling draws from one global RNG stream, so a sample would depend on the batch it
was drawn in. `SeededNucleusSampling` makes the draw itself per row: each output row (image i,
sample j) owns a torch.Generator seeded from the item's id; at each step the processor applies
top-p to that row's distribution, draws one token with the row's generator (inverse CDF of one
uniform number), and leaves only that token possible, so transformers' own draw that follows is
forced. Rows never share random numbers, and a row draws exactly once per step whatever the other
rows do, so k samples for a whole batch come from one generate call and equal what the item would
get alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon_ft.eval.seeds import item_seed


@dataclass
class CaptionSettings:
    num_beams: int = 3
    # counted with [DEC] and the prompt, as in BLIP (captioner.new_token_range); None: the
    # captioner's own (its config's caption_max_length: BLIP's 20, BLIP-2's 30)
    max_length: int | None = None
    min_length: int = 5
    repetition_penalty: float = 1.0  # beam search
    mode: str = "beam"  # beam | sample: how the main caption (caption/* metrics) is made
    top_p: float = 0.9  # nucleus sampling (the I2T2I candidates; mode=sample)
    sample_repetition_penalty: float = 1.1  # the reference implementation's sampling setting
    prompt: str | None = None  # null: the captioner's training prompt

    def __post_init__(self):
        if self.mode not in ("beam", "sample"):
            raise ValueError(f"caption.mode: expected beam or sample, got {self.mode!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"caption.top_p must be in (0, 1], got {self.top_p}")


class SeededNucleusSampling:
    """A transformers LogitsProcessor: per-row seeded top-p sampling (see the module docstring).

    seeds: one per output row, in generate's row order (image-major: image i's samples are rows
    i * n .. i * n + n - 1).
    """

    def __init__(self, seeds: list[int], top_p: float):
        self.seeds, self.top_p = list(seeds), float(top_p)
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores.shape[0]
        if rows != len(self.seeds):
            raise ValueError(f"SeededNucleusSampling: {rows} rows but {len(self.seeds)} seeds")
        if self.generators is None:
            self.generators = [torch.Generator(scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float(), dim=-1)  # (R, V); -inf (banned) tokens get 0
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        # the nucleus: the smallest prefix whose mass reaches top_p (the first token always)
        size = ((cum - sorted_p) < self.top_p).sum(-1, keepdim=True)  # (R, 1)
        mass = cum.gather(1, size - 1)  # (R, 1)
        # inverse-CDF draw inside the nucleus, one uniform number per row from the row's own generator
        u = torch.cat([torch.rand(1, generator=g, device=scores.device) for g in self.generators])
        pos = (cum < u.unsqueeze(1) * mass).sum(-1, keepdim=True).clamp(max=size - 1)  # (R, 1)
        chosen = order.gather(1, pos).squeeze(1)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen.unsqueeze(1), 0.0)
        return out


def _generate(captioner, pixel_values, s: CaptionSettings, **kw) -> list[str]:
    if s.prompt is None or s.prompt == captioner.prompt:
        return captioner.generate(pixel_values, max_length=s.max_length, min_length=s.min_length, **kw)
    saved = captioner.prompt  # a prompt other than the training one, for this call only
    captioner.prompt = s.prompt  # the captioner recounts its prompt_length
    try:
        return captioner.generate(pixel_values, max_length=s.max_length, min_length=s.min_length, **kw)
    finally:
        captioner.prompt = saved


def beam_captions(captioner, pixel_values: torch.Tensor, s: CaptionSettings) -> list[str]:
    """One beam-search caption per image (deterministic)."""
    if pixel_values.shape[0] == 0:
        return []
    return _generate(captioner, pixel_values, s, num_beams=s.num_beams, repetition_penalty=s.repetition_penalty)


def sample_captions(captioner, pixel_values: torch.Tensor, ids: list, n: int, s: CaptionSettings,
                    seed: int) -> list[list[str]]:
    """n nucleus samples per image, sample j of item `id` seeded by item_seed(seed, id, "sample", j);
    all B * n in one generate call. Returns B lists of n captions."""
    if n <= 0 or pixel_values.shape[0] == 0:
        return [[] for _ in ids]
    from transformers import LogitsProcessorList

    seeds = [item_seed(seed, i, "sample", j) for i in ids for j in range(n)]
    processor = SeededNucleusSampling(seeds, s.top_p)
    flat = _generate(
        # top_p=1 / top_k=0: no transformers warper after the processor (it would sort again for nothing)
        captioner, pixel_values, s, do_sample=True, top_p=1.0, repetition_penalty=s.sample_repetition_penalty,
        num_return_sequences=n, logits_processor=LogitsProcessorList([processor]),
    )
    return [flat[i * n:(i + 1) * n] for i in range(len(ids))]
