"""Token conventions of the tokenizers the vocabulary bridge joins (recon_ft.method.bridge): a token
string's text and word-boundary marks under each convention, which of several same-text tokens
matches best, and which convention a tokenizer uses.

- "wordpiece" (BERT, BLIP): "dog" starts a word, "##dog" continues one.
- "bpe" (CLIP, Stable Diffusion): "dog</w>" ends a word; strings are UTF-8 bytes in GPT-2's
  byte-to-unicode alphabet, decoded back to text first.
- "bytelevel" (GPT-2, OPT): the same alphabet; "Ġdog" (decoded " dog") starts a word.
- "sentencepiece" (T5): "▁dog" starts a word.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

from recon_ft.models.tokenizers import bytes_to_unicode

STYLES = ("wordpiece", "bpe", "bytelevel", "sentencepiece")
# styles that mark where a word starts, so that a token says whether it continues the word before it
START_MARKED = ("wordpiece", "bytelevel", "sentencepiece")
_SP_SPACE = "\u2581"  # SentencePiece's "▁"
UNUSED = re.compile(r"^\[unused\d+\]$")  # BERT's placeholder tokens


class Token(NamedTuple):
    """A token's text and word-boundary marks; None = the convention does not say."""

    text: str | None  # None: no text (undecodable bytes, hole in the id range)
    starts_word: bool | None
    ends_word: bool | None


@functools.cache
def gpt2_byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _normalize(text: str) -> str:
    # NFC so that composed / decomposed accents compare equal
    return unicodedata.normalize("NFC", text)


def parse_token(token: str | None, style: str, byte_decoder: dict[str, int] | None = None) -> Token:
    """Split a token string into (text, starts_word, ends_word) under a tokenizer convention."""
    if token is None:
        return Token(None, None, None)
    if style == "wordpiece":
        if token.startswith("##") and len(token) > 2:
            return Token(_normalize(token[2:]), False, None)
        return Token(_normalize(token), True, None)
    if style == "bpe":
        ends = token.endswith("</w>")
        body = token[:-4] if ends else token
        byte_decoder = byte_decoder or gpt2_byte_decoder()
        try:
            text = bytes(byte_decoder[c] for c in body).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return Token(None, None, ends)
        return Token(_normalize(text), None, ends)
    if style == "bytelevel":
        byte_decoder = byte_decoder or gpt2_byte_decoder()
        try:
            text = bytes(byte_decoder[c] for c in token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return Token(None, None, None)
        starts = text.startswith(" ")
        return Token(_normalize(text[1:] if starts else text) or None, starts, None)
    if style == "sentencepiece":
        starts = token.startswith(_SP_SPACE)
        return Token(_normalize(token[1:] if starts else token) or None, starts, None)
    raise ValueError(f"unknown token style {style!r}; expected one of {STYLES}")


def conflicts(a: Token, b: Token) -> int:
    # number of boundary marks both conventions state and that disagree
    return sum(
        x is not None and y is not None and x != y
        for x, y in ((a.starts_word, b.starts_word), (a.ends_word, b.ends_word))
    )


def best_match(src: Token, candidates: list[tuple[int, Token]]) -> int:
    """Pick among same-text V_G tokens: fewest contradictions, then whole-word forms, then id."""

    def key(item: tuple[int, Token]):
        i, tok = item
        whole = tok.starts_word is True or tok.ends_word is True
        return (conflicts(src, tok), not whole, i)

    return min(candidates, key=key)[0]


def detect_style(tokenizer) -> str:
    """The token convention (STYLES) of a tokenizer, from its backend model or its vocabulary.

    "wordpiece" (BERT: "##" pieces), "bpe" (CLIP: "</w>" ends a word), "bytelevel" (GPT-2, OPT:
    "Ġ" starts a word), "sentencepiece" (T5, unigram or BPE: "▁" starts a word).
    """
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    kind = type(model).__name__ if model is not None else None
    if kind == "WordPiece" and model.continuing_subword_prefix == "##":
        return "wordpiece"
    if kind == "BPE" and model.end_of_word_suffix == "</w>":
        return "bpe"
    vocab = tokenizer.get_vocab()  # other backends and slow tokenizers: look at the strings
    if kind == "Unigram" or sum(t.startswith(_SP_SPACE) for t in vocab) > len(vocab) // 10:
        return "sentencepiece"
    if any(t.endswith("</w>") for t in vocab):
        return "bpe"
    if any(t.startswith("##") for t in vocab):
        return "wordpiece"
    if sum(t.startswith("\u0120") for t in vocab) > len(vocab) // 10:  # "Ġ": GPT-2's space byte
        return "bytelevel"
    raise ValueError(f"cannot tell the token convention of {type(tokenizer).__name__}")


def id_ordered_tokens(tokenizer) -> list[str | None]:
    """Token string of each id 0..len(tokenizer)-1 (added tokens included; None for holes)."""
    tokens: list[str | None] = [None] * len(tokenizer)
    for t, i in tokenizer.get_vocab().items():
        if 0 <= i < len(tokens):
            tokens[i] = t
    return tokens


def special_tokens(tokenizer) -> set[str]:
    special = set(tokenizer.all_special_tokens)
    special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    return special
