"""Evaluation numbers one can trust and read: BLIP's caption lengths, FID / IS per T2I2T selection,
Java checked before predicting, the random-extractor warning, the report's first screen, the
multirun summary, the CPU-only install."""

from __future__ import annotations

import torch

from recon_ft.eval.captioning import CaptionSettings, beam_captions


class _EosBias:
    """A logits processor that makes one token overwhelmingly likely (after min-length's ban)."""

    def __init__(self, token_id: int, bias: float):
        self.token_id, self.bias = token_id, bias

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] += self.bias
        return scores


def _lengths_of_generate(captioner, images, s: CaptionSettings, bias: float) -> list[int]:
    """Sequence lengths (with [DEC] and the prompt) of one greedy generate with EOS pushed by `bias`."""
    from transformers import LogitsProcessorList

    seen = []
    inner = captioner.model.generate

    def spy(*args, **kwargs):
        out = inner(*args, **kwargs)
        seen.append(out.shape[1])
        return out

    captioner.model.generate = spy
    try:
        captioner.generate(images, num_beams=1, max_length=s.max_length, min_length=s.min_length,
                           logits_processor=LogitsProcessorList([_EosBias(captioner.eos_token_id, bias)]))
    finally:
        del captioner.model.generate
    return seen


def test_caption_lengths_count_the_prompt_as_blip_does():
    import pytest
    from recon_ft.models.captioner import build_blip

    captioner = build_blip(tiny={"image_size": 32})
    p = captioner.prompt_length
    assert p == 4  # [DEC] a picture of
    images = captioner.preprocess(torch.zeros(2, 3, 32, 32))
    s = CaptionSettings(max_length=9, min_length=6)
    # EOS never chosen: the sequence stops at max_length, prompt included (5 caption tokens)
    assert _lengths_of_generate(captioner, images, s, bias=-1e4) == [9]
    # EOS always chosen once allowed: min_length - P = 2 caption tokens, then [SEP]
    assert _lengths_of_generate(captioner, images, s, bias=1e4) == [7]
    assert captioner.new_token_range(20, 5) == {"max_new_tokens": 16, "min_new_tokens": 1}
    assert captioner.new_token_range(20, 2) == {"max_new_tokens": 16, "min_new_tokens": 0}
    with pytest.raises(ValueError, match=r"caption.max_length=4 .*expected more than 4"):
        beam_captions(captioner, images, CaptionSettings(max_length=4, min_length=1))


# ------------------------------------------------------------------------------------ item 9: Java


def test_missing_java_fails_before_predicting(tmp_path, monkeypatch):
    import shutil

    import pytest
    from tests.test_eval_pipeline import run_eval

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else which(name, *a, **k))
    out = tmp_path / "eval"
    with pytest.raises(RuntimeError, match=r"no `java` is on PATH: install a Java runtime"):
        run_eval(out, "limit=2")
    assert not (out / "images").exists()  # nothing generated


def test_rows_are_written_before_the_analysis(tmp_path, monkeypatch):
    import pytest
    from recon_ft.eval import pipeline
    from tests.test_eval_pipeline import rows_of, run_eval

    def failing_analysis(rows, *args, **kwargs):
        raise RuntimeError("a metric failed")

    monkeypatch.setattr(pipeline, "analyze", failing_analysis)
    out = tmp_path / "eval"
    with pytest.raises(RuntimeError, match="a metric failed"):
        run_eval(out, "limit=2", "analysis.k=2")
    rows = rows_of(out)
    assert [r["index"] for r in rows] == [0, 1]
    assert [len(r["i2t2i"]) for r in rows] == [2, 2] and all((out / r["gen"]["image"]).is_file() for r in rows)
