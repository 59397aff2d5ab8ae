"""Sparse vocabulary bridge B from a captioner vocabulary V_C to a generator vocabulary V_G.

The image cycle (docs/design.md, "The vocabulary bridge") turns the captioner's per-position distribution
p (B, L, |V_C|) into soft token embeddings of the generator's text encoder:

    q = p B            (B, L, |V_G|)   "project"
    e = q W = p (B W)  (B, L, d)       "embed", W = the text encoder's token embedding (|V_G|, d)

B is built from the two vocabularies by matching surface strings after normalizing each
tokenizer's word-boundary convention:

- "wordpiece" (BERT, BLIP): "dog" starts a word, "##dog" continues one.
- "bpe" (CLIP, Stable Diffusion): byte-level BPE; "dog</w>" ends a word, "dog" does not; each
  token string is UTF-8 bytes written in GPT-2's byte-to-unicode alphabet, so it is decoded back
  to text first ("Ã©</w>" -> "é"). Tokens that are not whole UTF-8 sequences (a lone byte of a
  multi-byte character) have no text and never match.
- "bytelevel" (GPT-2, OPT): the same byte alphabet, but a word's leading space is part of its
  first token: "Ġdog" (decoded " dog") starts a word, "dog" continues one (or starts the text).
- "sentencepiece" (T5): "▁dog" starts a word, "dog" continues one; a lone "▁" has no text.
  (SentencePiece's byte-fallback pieces "<0x41>" are left unmapped.)

Among the V_G tokens with the same text, B picks the one whose boundary marks do not contradict
the source token's, preferring whole-word forms; for wordpiece -> bpe that is the rule
"dog" / "##dog" -> "dog</w>" if it exists, else "dog" (most BERT tokens are whole words, and a
"##" piece usually ends its word); "Ġdog" / "▁dog" -> "dog</w>" the same way. Texts compare
exactly, except that a cased captioner's (OPT, T5) are lower-cased first when the generator's
tokenizer lower-cases its input, as CLIP's does: "ĠDog" -> "dog</w>". (CLIP's vocabulary has
upper-case byte tokens such as "Z</w>", but its tokenizer never produces them, so their
embeddings never trained: "▁Z" must go to "z</w>".) Positions stay one-to-one with the captioner's positions.

Word-final or not. A token followed by a word continuation ("##board", "board" after "Ġskate"
or "▁skate") does not end its word:
"skate ##board" must become "skate board</w>", not "skate</w> board</w>" (CLIP's end-of-word
marks tell its encoder where words end). So a matched row also has a non-final target, the V_G
token of the same text without "</w>" where one exists ("skate"). The soft caption is a
distribution per position, so whether the next token continues the word is not one fact but a
probability: c_i = the mass that position i+1's distribution puts on continuing tokens (0 after the
caption's last token). Position i's embedding is split by it:

    e_i = (1 - c_i) p_i B W + c_i p_i B' W      (B': B with the non-final targets)

That is the captioner's own belief about the word boundary, the same distribution the soft
caption carries (the teacher-forced reference's next token would describe the reference's words,
not the captioner's), exact when p is one-hot (Gumbel, or a tokenized caption), and
differentiable in p. Fallback rows keep their final form.

Rows of B (one per V_C token) are of three kinds:

- matched: one entry of weight 1 on the matched V_G token.
- fallback (an ordinary V_C token with no V_G token of the same text), by ``fallback``:
    "pieces" (default): tokenize the text with the generator's tokenizer, weight 1/k on each of
      its k pieces, so the soft embedding is the mean of the pieces' embeddings. Keeps positions
      one-to-one (a multi-piece word becomes one averaged embedding, not k positions).
    "unk": weight 1 on the generator's unk token (the reference implementation sent 28,883 CLIP
      tokens to BLIP's [UNK]; this is the same idea in the direction that loses less). Note that
      CLIP's unk *is* "<|endoftext|>", so for Stable Diffusion this puts EOS embeddings inside
      the prompt: use it for ablations, not by default.
    "drop": zero row: that probability mass is discarded.
- unmapped: zero row. Always for the captioner's special tokens ([PAD], [CLS], [SEP], [MASK],
  [UNK], [DEC], [ENC], [unusedN], ...): they are not text. The generator's text encoder gets its
  own BOS/EOS/padding around the soft tokens, and an EOS or pad embedding in the middle of a
  prompt would change what the encoder attends to; [unusedN] are untrained placeholders. Mass
  the captioner puts on them at caption positions is dropped, so e is then a sub-normalized
  mixture: ``mass_coverage`` measures that, and callers mask end/padding positions anyway.

B is never dense: for BLIP -> SD it would be 30,524 x 49,408 = 1.5e9 entries. It is held as COO
index buffers (src, dst, weight), and products use gather / index_add.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from torch import nn

from recon_ft.method.tokens import (START_MARKED, STYLES, UNUSED, Token, best_match, detect_style, gpt2_byte_decoder,
                                     id_ordered_tokens, parse_token, special_tokens)

FALLBACKS = ("pieces", "unk", "drop")


class VocabBridge(nn.Module):
    """B in COO form. Buffers (not saved in state dicts: B is rebuilt from the tokenizers):

    src, dst: (nnz,) int64 row / column indices; weight: (nnz,) float32 values.
    matched: (|V_C|,) bool, row is an exact surface match; fallback_mask: (|V_C|,) bool, row
    filled by the fallback. Rows in neither are zero (special or unmapped tokens).
    """

    def __init__(
        self,
        src: torch.Tensor,
        dst: torch.Tensor,
        weight: torch.Tensor,
        matched: torch.Tensor,
        fallback_mask: torch.Tensor,
        dst_size: int,
        stats: dict | None = None,
    ):
        super().__init__()
        self.src_size = int(matched.numel())
        self.dst_size = int(dst_size)
        self.register_buffer("src", src.long(), persistent=False)
        self.register_buffer("dst", dst.long(), persistent=False)
        self.register_buffer("weight", weight.float(), persistent=False)
        self.register_buffer("matched", matched.bool(), persistent=False)
        self.register_buffer("fallback_mask", fallback_mask.bool(), persistent=False)
        self.stats = dict(stats or {})  # build-time counts that need the token strings
        empty = torch.zeros(0, dtype=torch.long)
        self.set_word_continuation(torch.zeros(self.src_size, dtype=torch.bool), empty, empty)

    def set_word_continuation(self, continues: torch.Tensor, nonfinal_src: torch.Tensor,
                              nonfinal_dst: torch.Tensor) -> None:
        """continues: (|V_C|,) bool, the token continues the word before it ("##" pieces);
        nonfinal_src / nonfinal_dst: (n,) the matched rows whose non-final V_G form differs, and
        that form (weight 1)."""
        self.register_buffer("continues", continues.bool(), persistent=False)
        self.register_buffer("nonfinal_src", nonfinal_src.long(), persistent=False)
        self.register_buffer("nonfinal_dst", nonfinal_dst.long(), persistent=False)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_vocabs(
        cls,
        src_tokens: Sequence[str | None],
        dst_tokens: Sequence[str | None],
        src_style: str = "wordpiece",
        dst_style: str = "bpe",
        src_special: Sequence[str] = (),
        dst_special: Sequence[str] = (),
        fallback: str = "pieces",
        dst_unk_id: int | None = None,
        dst_tokenize: Callable[[list[str]], list[list[int]]] | None = None,
        lowercase: bool = False,
    ) -> "VocabBridge":
        """Build B from two token lists indexed by id (None marks an id with no token).

        ``lowercase``: compare the V_C texts lower-cased (the generator's tokenizer lower-cases).
        ``dst_tokenize`` (for fallback="pieces") maps a list of texts to lists of V_G ids, without
        BOS/EOS; ``dst_unk_id`` is needed for fallback="unk". Special tokens of V_G are never
        targets (neither matched nor used as pieces).
        """
        for style in (src_style, dst_style):
            if style not in STYLES:
                raise ValueError(f"unknown token style {style!r}; expected one of {STYLES}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if fallback == "pieces" and dst_tokenize is None:
            raise ValueError('fallback="pieces" needs dst_tokenize')
        if fallback == "unk" and dst_unk_id is None:
            raise ValueError('fallback="unk" needs dst_unk_id')
        decoder = gpt2_byte_decoder()
        src_special, dst_special = set(src_special), set(dst_special)
        dst_special_ids = {i for i, t in enumerate(dst_tokens) if t in dst_special}

        # text -> [(id, parsed)] over the ordinary V_G tokens
        by_text: dict[str, list[tuple[int, Token]]] = {}
        for i, t in enumerate(dst_tokens):
            if t is None or i in dst_special_ids:
                continue
            parsed = parse_token(t, dst_style, decoder)
            if parsed.text:
                by_text.setdefault(parsed.text, []).append((i, parsed))

        n_src = len(src_tokens)
        matched = torch.zeros(n_src, dtype=torch.bool)
        fallback_mask = torch.zeros(n_src, dtype=torch.bool)
        special = torch.zeros(n_src, dtype=torch.bool)
        continues = torch.zeros(n_src, dtype=torch.bool)  # "##" pieces: continue the word before them
        nonfinal: dict[int, int] = {}  # V_C id -> V_G id of its non-final form, where it differs
        src_idx: list[int] = []
        dst_idx: list[int] = []
        weights: list[float] = []
        unmatched: list[tuple[int, str]] = []  # (V_C id, text) for the fallback
        src_texts: set[str] = set()
        for i, t in enumerate(src_tokens):
            if t is None:
                continue
            if t in src_special or (src_style == "wordpiece" and UNUSED.match(t)):
                special[i] = True
                continue
            parsed = parse_token(t, src_style, decoder)
            if not parsed.text:
                continue  # no text: unmapped
            if lowercase:
                parsed = parsed._replace(text=parsed.text.lower())
            src_texts.add(parsed.text)
            continues[i] = parsed.starts_word is False and src_style in START_MARKED and dst_style == "bpe"
            cands = by_text.get(parsed.text)
            if cands:
                matched[i] = True
                src_idx.append(i)
                dst_idx.append(best_match(parsed, cands))
                weights.append(1.0)
                if dst_style == "bpe":
                    inner = best_match(parsed._replace(ends_word=False), cands)
                    if inner != dst_idx[-1]:
                        nonfinal[i] = inner
            else:
                unmatched.append((i, parsed.text))

        if fallback == "unk":
            for i, _ in unmatched:
                fallback_mask[i] = True
                src_idx.append(i)
                dst_idx.append(int(dst_unk_id))
                weights.append(1.0)
        elif fallback == "pieces" and unmatched:
            # one batched call: fast tokenizers encode the ~7k unmatched BERT tokens in ~50 ms
            pieces = dst_tokenize([text for _, text in unmatched])
            for (i, _), ids in zip(unmatched, pieces):
                ids = [j for j in ids if j not in dst_special_ids]  # e.g. CLIP's unk = EOS
                if not ids:
                    continue
                fallback_mask[i] = True
                # one entry per distinct piece: "2000" -> 2</w> 0</w> 0</w> 0</w> gives
                # 2</w>: 1/4, 0</w>: 3/4, still the mean of the 4 pieces' embeddings
                for j, count in Counter(ids).items():
                    src_idx.append(i)
                    dst_idx.append(int(j))
                    weights.append(count / len(ids))

        stats = {
            "n_special": int(special.sum()),
            # V_G tokens whose text some ordinary V_C token also has (a symmetric surface match;
            # comparable with the reference's 20,525 and the naive probe's 26,142)
            "dst_with_counterpart": sum(len(v) for k, v in by_text.items() if k in src_texts),
        }
        bridge = cls(
            torch.tensor(src_idx, dtype=torch.long),
            torch.tensor(dst_idx, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32),
            matched,
            fallback_mask,
            dst_size=len(dst_tokens),
            stats=stats,
        )
        bridge.set_word_continuation(continues, torch.tensor(sorted(nonfinal), dtype=torch.long),
                                     torch.tensor([nonfinal[i] for i in sorted(nonfinal)], dtype=torch.long))
        return bridge

    @classmethod
    def from_tokenizers(cls, src_tokenizer, dst_tokenizer, fallback: str = "pieces") -> "VocabBridge":
        """Build B between two transformers tokenizers, detecting their conventions."""
        src_style, dst_style = detect_style(src_tokenizer), detect_style(dst_tokenizer)

        def tokenize(texts: list[str]) -> list[list[int]]:
            backend = getattr(dst_tokenizer, "backend_tokenizer", None)
            if backend is not None:  # Rust batch encode: ~0.1 s for 7k words, 5x faster than __call__
                return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
            return dst_tokenizer(texts, add_special_tokens=False)["input_ids"]

        return cls.from_vocabs(
            id_ordered_tokens(src_tokenizer),
            id_ordered_tokens(dst_tokenizer),
            src_style=src_style,
            dst_style=dst_style,
            src_special=special_tokens(src_tokenizer),
            dst_special=special_tokens(dst_tokenizer),
            fallback=fallback,
            dst_unk_id=dst_tokenizer.unk_token_id,
            dst_tokenize=tokenize,
            lowercase=tokenize(["Dog"]) == tokenize(["dog"]),  # CLIP's tokenizer lower-cases its input
        )

    # ------------------------------------------------------------------ using

    def embed(self, p: torch.Tensor, dst_embedding: torch.Tensor,
              next_continues: torch.Tensor | None = None) -> torch.Tensor:
        """Soft generator-token embeddings e = p B W, (B, L, |V_C|) x (|V_G|, d) -> (B, L, d).

        M = B W is formed row-sparsely, M[src] += weight * W[dst] (|V_C|, d), then e = p M:
        O(nnz d + B L |V_C| d), no |V_G|-sized intermediate. Differentiable w.r.t. p and W
        (gather and index_add both have gradients). Computed in W's dtype.

        next_continues (B, L) in [0, 1], the probability that the next position continues the
        word (`next_continues`): that share of each position's mass goes to the non-final forms,
        e = p M + c * (p[:, :, rows] D) with D = W[non-final] - M[rows] on the n rows that differ.
        """
        W = dst_embedding
        rows = W.index_select(0, self.dst) * self.weight.to(W.dtype).unsqueeze(1)  # (nnz, d)
        M = W.new_zeros(self.src_size, W.shape[1]).index_add(0, self.src, rows)  # (|V_C|, d)
        p = p.to(W.dtype)
        e = p @ M
        if next_continues is None or self.nonfinal_src.numel() == 0:
            return e
        delta = W.index_select(0, self.nonfinal_dst) - M.index_select(0, self.nonfinal_src)  # (n, d)
        shift = p.index_select(-1, self.nonfinal_src) @ delta  # (B, L, d)
        return e + next_continues.to(W.dtype).unsqueeze(-1) * shift

    def next_continues(self, p: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """c (B, L): the mass position i+1 of p (B, L, |V_C|) puts on word-continuing tokens;
        0 at the last position and where position i+1 is not counted by mask (B, L)."""
        c = p @ self.continues.to(p.dtype)  # (B, L): P(position continues the word before it)
        if mask is not None:
            c = c * mask.to(p.dtype)
        return torch.cat([c[:, 1:], c.new_zeros(c.shape[0], 1)], dim=1)

    def nonfinal_share(self, input_ids: torch.Tensor, mask: torch.Tensor) -> float:
        """Share of the tokens of tokenized captions (B, L), counted where mask, whose bridged form
        is the non-final one (the next token continues the word and a non-final form exists)."""
        one_hot = nn.functional.one_hot(input_ids, self.src_size).float()  # (B, L, |V_C|)
        nxt = self.next_continues(one_hot, mask) > 0.5
        has_form = torch.zeros(self.src_size, dtype=torch.bool, device=input_ids.device)
        has_form[self.nonfinal_src] = True
        affected = nxt & has_form[input_ids] & mask.bool()
        return float(affected.sum()) / max(1, int(mask.sum()))

    def project(self, p: torch.Tensor) -> torch.Tensor:
        """q = p B: (..., |V_C|) -> (..., |V_G|). Dense in |V_G|; for tests and analyses."""
        vals = p.index_select(-1, self.src) * self.weight.to(p.dtype)  # (..., nnz)
        q = p.new_zeros(*p.shape[:-1], self.dst_size)
        return q.index_add(-1, self.dst, vals)

    def mass_coverage(self, p: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Share of the probability mass of p (B, L, |V_C|) on exactly matched tokens (scalar).

        mask (B, L), true/1 at positions to count (e.g. caption positions, not padding).
        """
        matched = (p * self.matched.to(p.dtype)).sum(-1)  # (B, L)
        total = p.sum(-1)
        if mask is not None:
            mask = mask.to(p.dtype)
            matched, total = matched * mask, total * mask
        return matched.sum() / total.sum().clamp_min(torch.finfo(p.dtype).tiny)

    def coverage(self) -> dict:
        """Vocabulary coverage of V_C (shares and counts) and of V_G (counts)."""
        n = self.src_size
        n_matched = int(self.matched.sum())
        n_fallback = int(self.fallback_mask.sum())
        n_unmapped = n - n_matched - n_fallback
        exact = self.matched[self.src]
        return {
            "src_size": n,
            "dst_size": self.dst_size,
            "nnz": int(self.src.numel()),
            "matched": n_matched / n,
            "fallback": n_fallback / n,
            "unmapped": n_unmapped / n,
            "n_matched": n_matched,
            "n_fallback": n_fallback,
            "n_unmapped": n_unmapped,  # includes the special tokens
            "n_special": self.stats.get("n_special"),
            # matched V_C tokens with a distinct non-final V_G form ("skate" besides "skate</w>")
            "n_nonfinal": int(self.nonfinal_src.numel()),
            # V_G tokens with a same-text V_C token (any boundary form)
            "dst_with_counterpart": self.stats.get("dst_with_counterpart"),
            # V_G tokens that B's matched rows actually point to (one per matched V_C token)
            "dst_reached_matched": int(torch.unique(self.dst[exact]).numel()),
            # V_G tokens that receive any mass from B (matched or fallback)
            "dst_reached": int(torch.unique(self.dst).numel()),
        }

    def extra_repr(self) -> str:
        c = self.coverage()
        return (
            f"{self.src_size} -> {self.dst_size}, nnz={c['nnz']}, matched={c['matched']:.3f}, "
            f"fallback={c['fallback']:.3f}, unmapped={c['unmapped']:.3f}"
        )


def blip_sd_bridge(fallback: str = "pieces", cache_dir: str | None = None) -> VocabBridge:
    """The real pair: BLIP (BERT uncased + [DEC]/[ENC]) -> Stable Diffusion v1 (CLIP BPE)."""
    from recon_ft.models.tokenizers import blip_tokenizer, clip_tokenizer

    return VocabBridge.from_tokenizers(blip_tokenizer(), clip_tokenizer(cache_dir), fallback=fallback)


_SAMPLE_CAPTIONS = [  # COCO-style captions, for the mass coverage of one-hot "distributions"
    "a man riding a wave on top of a surfboard",
    "two giraffes standing next to each other in a zoo enclosure",
    "a plate of spaghetti with meatballs and parmesan cheese",
    "a snowboarder performs a trick on a halfpipe in colorado",
    "an antique grandfather clock in a victorian hallway",
]


def _report() -> None:
    import time

    from recon_ft.models.tokenizers import blip_tokenizer

    ids = blip_tokenizer()(_SAMPLE_CAPTIONS, add_special_tokens=False, padding=True, return_tensors="pt")
    for fallback in FALLBACKS:
        t0 = time.perf_counter()
        bridge = blip_sd_bridge(fallback)
        dt = time.perf_counter() - t0
        c = bridge.coverage()
        print(f"BLIP -> SD v1 bridge, fallback={fallback!r} (built in {dt:.2f} s)")
        print(f"  |V_C| = {c['src_size']}, |V_G| = {c['dst_size']}, nnz = {c['nnz']}")
        print(f"  V_C exactly matched : {c['n_matched']:6d} ({c['matched']:.1%})")
        print(f"  V_C by fallback     : {c['n_fallback']:6d} ({c['fallback']:.1%})")
        print(
            f"  V_C unmapped        : {c['n_unmapped']:6d} ({c['unmapped']:.1%}), "
            f"of which special {c['n_special']}"
        )
        print(
            f"  V_G with a V_C counterpart: {c['dst_with_counterpart']} "
            f"(reference implementation 20,525; naive exact-string probe 26,142)"
        )
        print(f"  V_G reached by matched rows: {c['dst_reached_matched']}, by any row: {c['dst_reached']}")
        one_hot = nn.functional.one_hot(ids["input_ids"], bridge.src_size).float()  # (5, L, |V_C|)
        mass = bridge.mass_coverage(one_hot, ids["attention_mask"])
        print(f"  mass on matched tokens, {len(_SAMPLE_CAPTIONS)} sample captions (one-hot): {mass:.1%}")
        share = bridge.nonfinal_share(ids["input_ids"], ids["attention_mask"])
        print(f"  V_C tokens with a non-final form: {c['n_nonfinal']}; caption tokens sent to it: {share:.1%}")


if __name__ == "__main__":
    _report()
