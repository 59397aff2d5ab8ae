"""Offline BLIP (BERT uncased + [DEC]/[ENC]) and Stable Diffusion (CLIP BPE) tokenizers."""

import json

import pytest
from transformers import AutoTokenizer, BertTokenizer, CLIPTokenizer

from recon_ft.models.tokenizers import blip_tokenizer, clip_tokenizer, clip_tokenizer_files


def test_blip_tokenizer_ids():
    tok = blip_tokenizer()
    assert len(tok) == 30524  # BlipTextConfig.vocab_size
    ids = tok.convert_tokens_to_ids(["[DEC]", "[ENC]", "[PAD]", "[SEP]", "[CLS]"])
    assert ids == [30522, 30523, 0, 102, 101]
    assert (tok.bos_token, tok.bos_token_id, tok.pad_token_id, tok.sep_token_id) == ("[DEC]", 30522, 0, 102)
    assert "[ENC]" in tok.all_special_tokens
    assert tok("A picture of a DOG")["input_ids"] == [101, 1037, 3861, 1997, 1037, 3899, 102]
    assert tok.tokenize("[DEC] a café") == ["[DEC]", "a", "cafe"]  # uncased strips accents
    assert tok.tokenize("snowboarding") == ["snow", "##boarding"]


def test_clip_tokenizer_ids():
    tok = clip_tokenizer()
    assert len(tok) == 49408 and tok.model_max_length == 77
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    specials = (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id)
    assert specials == (49406, 49407, 49407, 49407)
    assert tok.convert_ids_to_tokens([0, 255, 256, 511, 512, 49406, 49407]) == [
        "!", "Ń", "!</w>", "Ń</w>", "in", "<|startoftext|>", "<|endoftext|>"
    ]
    padded = tok("a photo", padding="max_length", truncation=True)["input_ids"]
    assert len(padded) == 77 and padded[-1] == 49407


def test_clip_tokenizer_matches_open_clip():
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    tok = clip_tokenizer()
    for text in ["a photo of a cat", "A café, résumé! naïve 東京 2024", "two dogs' toys on a sofa"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text)


def test_clip_files_cached(tmp_path):
    folder = clip_tokenizer_files(str(tmp_path))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|endoftext|>"] == 49407 and vocab["cat</w>"] == 2368
    merges = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 48894
    assert clip_tokenizer_files(str(tmp_path)) == folder  # second call: cached, no rewrite
    assert clip_tokenizer(tmp_path)("a photo of a cat")["input_ids"][1:-1] == [320, 1125, 539, 320, 2368]


@pytest.mark.parametrize("make, cls", [(blip_tokenizer, BertTokenizer), (clip_tokenizer, CLIPTokenizer)])
def test_save_load_round_trip(tmp_path, make, cls):
    tok = make()
    tok.save_pretrained(tmp_path)
    text = "A small red circle left of a blue square, café"
    for loaded in (cls.from_pretrained(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert type(loaded) is cls
        assert len(loaded) == len(tok) and loaded.model_max_length == tok.model_max_length
        assert loaded.all_special_ids == tok.all_special_ids
        assert (loaded.bos_token_id, loaded.pad_token_id, loaded.unk_token_id) == (
            tok.bos_token_id, tok.pad_token_id, tok.unk_token_id
        )
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
