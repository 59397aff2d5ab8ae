"""Small tokenizers of OPT's and T5's kinds, trained offline: for the tiny BLIP-2 captioners and tests.

The real OPT (GPT-2 byte-level BPE, 50,265 tokens) and Flan-T5 (SentencePiece unigram, 32,100
tokens) vocabularies are not on PyPI, unlike BLIP's BERT WordPiece and CLIP's BPE
(recon_ft.models.tokenizers). These are the same *kinds*, trained with the `tokenizers` library on
the synthetic benchmark's grammar and some COCO-style English, with the same conventions:

- "bytelevel" (OPT, GPT-2): UTF-8 bytes in GPT-2's byte-to-unicode alphabet, a word-initial space
  written "Ġ" ("Ġdog" starts a word, "board" continues one); OPT's special ids <s> 0, <pad> 1,
  </s> 2 (OPT's BOS and EOS), <unk> 3.
- "sentencepiece" (T5): unigram pieces (scored by word frequency, see `_sentencepiece_json`), a word start written "▁" ("▁dog"); T5's ids <pad> 0
  (also the decoder's start), </s> 1, <unk> 2, and "</s>" appended to every encoded text.
Both also hold BLIP-2's image placeholder "<image>" (a special token, as in the hub's processors).

Training is deterministic (fixed corpus order, one thread), so the ids are the same in every
process: a model saved with one loads with another build of it.
"""

from __future__ import annotations

import functools
import itertools

from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"

# COCO-style English, so that the vocabularies hold everyday words besides the grammar's.
ENGLISH = """\
a man riding a wave on top of a surfboard
two giraffes standing next to each other in a zoo enclosure
a plate of spaghetti with meatballs and parmesan cheese
a snowboarder performs a trick on a halfpipe in the mountains
an antique grandfather clock in a victorian hallway
a dog catching a frisbee in a grassy park
a cat sleeping on a laptop keyboard
a group of people standing around a kitchen table
a red double decker bus driving down a city street
a young boy holding a baseball bat at home plate
a bowl of fruit with bananas apples and oranges
a woman walking her dog along the beach at sunset
a train traveling over a bridge across a river
two horses grazing in a field near a wooden fence
a skateboarder jumping over a set of stairs
a pizza with pepperoni and mushrooms on a wooden board
a bathroom with a white sink and a large mirror
an airplane flying through a cloudy blue sky
a little girl eating a slice of birthday cake
a man and a woman sitting on a bench in the park
a picture of a living room with a couch and a television
a photo of an elephant walking through tall grass
a close up of a sandwich cut in half on a plate
a stop sign on the corner of a busy street
a flock of birds flying over the ocean
"""


def _grammar_captions() -> list[str]:
    """Every one- and two-object caption of the synthetic benchmark's grammar, in a fixed order."""
    from recon_ft.data.synthetic import COLOURS, KINDS, SIZES

    phrases = [f"a {s} {c} {k}" for s, c, k in itertools.product(SIZES, COLOURS, KINDS)]
    pairs = [f"{a} {rel} of {b}" for a, b in itertools.product(phrases[:8], phrases[-8:]) for rel in ("left", "right")]
    return phrases + pairs


def corpus() -> list[str]:
    return ENGLISH.splitlines() + _grammar_captions()


@functools.cache
def _bytelevel_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: any text encodes
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok.to_str()


# word-internal pieces, so that unknown words split into parts before single characters
_SUFFIXES = ("s", "es", "ed", "er", "ers", "ing", "ly", "board", "ball", "room", "side", "way")


@functools.cache
def _sentencepiece_json() -> str:
    """A unigram model whose piece scores are log relative frequencies in the corpus.

    The `tokenizers` library's UnigramTrainer does not converge on a corpus this small (its EM
    prunes "▁red" and "▁left" and keeps letter pieces), so the pieces are chosen directly: every
    corpus word as a word-initial piece ("▁circle"), a few word-internal suffixes, and every
    printable ASCII character with and without "▁", so that any ASCII text encodes. Viterbi
    segmentation then prefers whole words, as a trained T5 model does for frequent words.
    """
    import math
    import string
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    counts = Counter("\u2581" + w for line in corpus() for w in line.split())
    total = sum(counts.values())
    pieces = {p: math.log(n / total) for p, n in sorted(counts.items())}
    rare = math.log(0.5 / total)  # below any corpus word
    for suffix in _SUFFIXES:
        pieces.setdefault(suffix, rare - 1.0)
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces.setdefault(ch, rare - 4.0)
        pieces.setdefault("\u2581" + ch, rare - 4.0)
    pieces.setdefault("\u2581", rare - 6.0)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + list(pieces.items())
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok.to_str()


def _wrap(json_text: str, **special) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json_text), model_max_length=512, **special)
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tok


def bytelevel_tokenizer(vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """OPT-style byte-level BPE (BOS = EOS = "</s>" 2, pad 1) plus "<image>". A fresh object each call."""
    tok = _wrap(_bytelevel_json(vocab_size), bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                unk_token="<unk>")
    assert (tok.pad_token_id, tok.eos_token_id) == (1, 2)
    return tok


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """T5-style unigram SentencePiece (pad 0, EOS "</s>" 1 appended, unk 2) plus "<image>"."""
    tok = _wrap(_sentencepiece_json(), eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    return tok
