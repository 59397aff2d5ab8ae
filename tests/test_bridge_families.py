"""The vocabulary bridge from every captioner tokenizer kind into CLIP's BPE (Stable Diffusion).

WordPiece is GIT's real tokenizer (BERT uncased); byte-level BPE (OPT) and SentencePiece (T5) are
the small tokenizers of those kinds built offline (recon_ft.models.trained_tokenizers): the real
OPT and T5 vocabularies are not available here.
"""

from __future__ import annotations

import pytest
import torch

from recon_ft.method.bridge import VocabBridge
from recon_ft.method.tokens import detect_style, parse_token
from recon_ft.models.tokenizers import bert_tokenizer, clip_tokenizer
from recon_ft.models.trained_tokenizers import IMAGE_TOKEN, bytelevel_tokenizer, sentencepiece_tokenizer

KINDS = {"bytelevel": bytelevel_tokenizer, "sentencepiece": sentencepiece_tokenizer, "wordpiece": bert_tokenizer}


@pytest.fixture(scope="module")
def clip():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def bridges(clip):
    return {kind: (make(), VocabBridge.from_tokenizers(make(), clip)) for kind, make in KINDS.items()}


def test_parse_token_bytelevel_and_sentencepiece():
    assert parse_token("Ġdog", "bytelevel") == ("dog", True, None)
    assert parse_token("board", "bytelevel") == ("board", False, None)
    assert parse_token("ĠcafÃ©", "bytelevel") == ("café", True, None)  # UTF-8 bytes in GPT-2's alphabet
    assert parse_token("Ã", "bytelevel") == (None, None, None)  # half a character: no text
    assert parse_token("Ġ", "bytelevel").text is None  # a lone space
    assert parse_token("▁dog", "sentencepiece") == ("dog", True, None)
    assert parse_token("board", "sentencepiece") == ("board", False, None)
    assert parse_token("▁", "sentencepiece").text is None


def test_detect_style_of_each_kind(clip):
    assert {kind: detect_style(make()) for kind, make in KINDS.items()} == {k: k for k in KINDS}
    assert detect_style(clip) == "bpe"


def _row(bridge, clip, src_tok, token: str):
    """[(CLIP token, weight)] of the bridge row of `token`, and its non-final form (or None)."""
    i = src_tok.convert_tokens_to_ids(token)
    assert i != src_tok.unk_token_id, f"{token!r} is not in the vocabulary"
    entries = [(clip.convert_ids_to_tokens(int(d)), float(w)) for s, d, w in zip(bridge.src, bridge.dst, bridge.weight)
               if int(s) == i]
    nonfinal = [clip.convert_ids_to_tokens(int(d)) for s, d in zip(bridge.nonfinal_src, bridge.nonfinal_dst)
                if int(s) == i]
    return sorted(entries), (nonfinal[0] if nonfinal else None), bool(bridge.continues[i])


@pytest.mark.parametrize(
    "kind, token, entries, nonfinal, continues",
    [
        # a word start goes to CLIP's word-final form, and to the non-final one before a continuation
        ("bytelevel", "Ġdog", [("dog</w>", 1.0)], "dog", False),
        ("bytelevel", "Ġcircle", [("circle</w>", 1.0)], "circle", False),
        ("bytelevel", "boarder", [("boarder</w>", 1.0)], None, True),  # continues "Ġsk ate"; CLIP has no "boarder"
        ("sentencepiece", "▁circle", [("circle</w>", 1.0)], "circle", False),
        ("sentencepiece", "board", [("board</w>", 1.0)], "board", True),
        ("wordpiece", "dog", [("dog</w>", 1.0)], "dog", False),
        ("wordpiece", "##board", [("board</w>", 1.0)], "board", True),
        # cased captioners: CLIP's tokenizer lower-cases, so "▁Z" is CLIP's "z</w>", not its (never
        # produced, untrained) byte token "Z</w>"
        ("sentencepiece", "▁Z", [("z</w>", 1.0)], "z", False),
        ("bytelevel", "D", [("d</w>", 1.0)], "d", True),
        # not text: unmapped
        ("bytelevel", "Ġ", [], None, False),
        ("sentencepiece", "▁", [], None, False),
        ("bytelevel", IMAGE_TOKEN, [], None, False),
        ("sentencepiece", "</s>", [], None, False),
        ("wordpiece", "[SEP]", [], None, False),
    ],
)
def test_hand_computed_rows(bridges, clip, kind, token, entries, nonfinal, continues):
    src_tok, bridge = bridges[kind]
    assert _row(bridge, clip, src_tok, token) == (entries, nonfinal, continues)


def test_a_split_word_becomes_one_clip_word(bridges, clip):
    """OPT's "Ġsk ate boarder" and T5's "▁s k a t e board s": one-hot soft captions embed as CLIP's
    own tokens with "</w>" only on the word's last piece."""
    for kind, text, expected in [("bytelevel", "a skateboarder", ["a</w>", "sk", "ate", "boarder</w>"]),
                                 ("sentencepiece", "a dog", ["a</w>", "dog</w>"])]:
        src_tok, bridge = bridges[kind]
        ids = torch.tensor([src_tok(text, add_special_tokens=False).input_ids])
        p = torch.nn.functional.one_hot(ids, bridge.src_size).float()  # (1, N, |V_C|)
        W = torch.randn(bridge.dst_size, 8, generator=torch.Generator().manual_seed(0))
        e = bridge.embed(p, W, bridge.next_continues(p))  # (1, N, 8)
        want = W[torch.tensor(clip.convert_tokens_to_ids(expected))]
        torch.testing.assert_close(e[0], want)


def test_coverage_per_tokenizer_kind_into_clip(bridges):
    """Hand-counted unmapped rows: byte-level: 5 specials (<s> <pad> </s> <unk> <image>), the 128
    bytes 0x80-0xFF that are no UTF-8 text alone, and the lone space "Ġ"; SentencePiece: 4 specials
    and the lone "▁"; BERT: [PAD] [UNK] [CLS] [SEP] [MASK] and [unused0..993]."""
    cov = {kind: bridge.coverage() for kind, (_, bridge) in bridges.items()}
    assert {k: (c["n_special"], c["n_unmapped"]) for k, c in cov.items()} == {
        "bytelevel": (5, 134), "sentencepiece": (4, 5), "wordpiece": (999, 999),
    }
    for c in cov.values():
        assert c["n_matched"] + c["n_fallback"] + c["n_unmapped"] == c["src_size"]
    # GIT's BERT vocabulary matches CLIP as BLIP's does (BLIP's [DEC] / [ENC] are two more specials)
    assert cov["wordpiece"]["n_matched"] == 22153
    # the grammar's words all match a whole CLIP word in the small vocabularies
    assert cov["sentencepiece"]["matched"] > 0.9 and cov["bytelevel"]["matched"] > 0.7
