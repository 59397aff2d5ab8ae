"""The evaluation pipeline (eval.py): every output on the synthetic benchmark, the standard dataset
formats (fabricated), a training run's output (adapters and checkpoint), DDP = one process,
seeds per item, errors. Tiny models, few items, 2 diffusion steps: each evaluation is seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recon_ft.data.fabricate import write_coco_karpathy, write_jsonl, write_nocaps
from recon_ft.eval.captioning import CaptionSettings, sample_captions
from recon_ft.eval.load import load_base, load_run
from recon_ft.eval.pipeline import evaluate
from recon_ft.eval.seeds import item_seed
from tests import conftest

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "metrics=tiny",  # random extractors: the plumbing (metrics=zoo, eval's default, is tested in test_zoo_clip.py)
    "num_threads=1",  # restored after each evaluation; 2 threads crawl when other processes share the CPU
    "limit=4",
    "batch_size=3",  # 4 items: one full and one partial batch
    "analysis.k=2",
    "generation.num_inference_steps=2",
    "generation.batch_size=8",
    "metrics.meteor=false",
    "report.grid_items=2",
]
CAPTION_KEYS = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr"]


def compose_eval(out_dir: Path, *overrides: str):
    return conftest.compose_eval(out_dir, *FAST, *overrides)


def run_eval(out_dir: Path, *overrides: str) -> dict:
    return evaluate(compose_eval(out_dir, *overrides))


def rows_of(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]


def check_outputs(out_dir: Path, metrics: dict, n: int, k: int, similarity: str = "sbert") -> None:
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics
    rows = rows_of(out_dir)
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows) and len(rows) == n
    for r in rows:
        assert len(r["i2t2i"]) == k and len(r["t2i2t"]) == k
        assert r["i2t2i"][0]["kind"] == "beam" and r["i2t2i"][0]["caption"] == r["beam_caption"]
        paths = [r["source_image"], r["gen"]["image"], *(c["image"] for c in r["i2t2i"] + r["t2i2t"])]
        assert all((out_dir / p).is_file() for p in paths)
        assert all(isinstance(c["cider"], float) for c in r["i2t2i"] + r["t2i2t"])
        assert set(r["i2t2i_selected"]) == {"first", "best", "random"}
    grids = sorted((out_dir / "grids").glob("*.png"))
    assert len(grids) == min(n, 2)
    page = (out_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(grids) and 'src="http' not in page
    assert "Selections" in page
    for key in [*(f"caption/{m}" for m in CAPTION_KEYS), "gen/FID", "gen/clip_score", "gen/clip_i",
                "i2t2i/clip_i_first", "i2t2i/clip_i_best", "i2t2i/clip_i_random", "i2t2i/best/CIDEr",
                "i2t2i/random/BLEU-4", "i2t2i/spearman_cider", f"t2i2t/{similarity}_best", "t2i2t/cider_random",
                "t2i2t/clip_score_first", "t2i2t/spearman_clip_cider", f"t2i2t/spearman_clip_{similarity}",
                "data/items", "data/bad_samples"]:
        assert key in metrics, key
    assert metrics["caption/SPICE"] is None or isinstance(metrics["caption/SPICE"], float)
    check_selections(rows, metrics, similarity)


def check_selections(rows: list[dict], metrics: dict, similarity: str) -> None:
    """The analysis numbers, recomputed from the per-candidate scores in samples.jsonl: best is the
    highest CLIP-I (I2T2I) or text similarity (T2I2T), first index on ties; each mean is over the
    selected candidates; the correlations are scipy's Spearman over all candidates."""
    import warnings

    import numpy as np
    import scipy.stats

    assert metrics["data/items"] == len(rows)
    assert metrics["gen/clip_score"] == pytest.approx(np.mean([r["gen"]["clip_score"] for r in rows]), rel=1e-9)
    assert metrics["gen/clip_i"] == pytest.approx(np.mean([r["gen"]["clip_i"] for r in rows]), rel=1e-9)
    for cycle, by, names in (("i2t2i", "clip_i", ("clip_i", "cider")),
                             ("t2i2t", similarity, (similarity, "cider", "clip_score"))):
        for r in rows:
            scores = [c[by] for c in r[cycle]]
            assert r[f"{cycle}_selected"]["first"] == 0
            assert r[f"{cycle}_selected"]["best"] == scores.index(max(scores))
        for how in ("first", "best", "random"):
            for name in names:
                chosen = [r[cycle][r[f"{cycle}_selected"][how]][name] for r in rows]
                assert metrics[f"{cycle}/{name}_{how}"] == pytest.approx(np.mean(chosen), rel=1e-9, abs=1e-12)

    def spearman(a, b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)  # reported as None
            value = scipy.stats.spearmanr(a, b).statistic
        return None if np.isnan(value) else pytest.approx(value, abs=1e-9)

    flat = {cycle: {name: [c[name] for r in rows for c in r[cycle]] for name in names}
            for cycle, names in (("i2t2i", ("clip_i", "cider")), ("t2i2t", (similarity, "cider", "clip_score")))}
    assert metrics["i2t2i/spearman_cider"] == spearman(flat["i2t2i"]["clip_i"], flat["i2t2i"]["cider"])
    for name in ("cider", similarity):
        assert metrics[f"t2i2t/spearman_clip_{name}"] == spearman(flat["t2i2t"]["clip_score"], flat["t2i2t"][name])


def test_synthetic_default_writes_every_output_and_is_reproducible(tmp_path, capsys):
    metrics = run_eval(tmp_path / "a", "metrics.meteor=true")
    # the summary says which split it scored and what that split holds (test: held-out compositions)
    assert "split: test (held-out compositions" in capsys.readouterr().out
    assert "held-out compositions" in (tmp_path / "a" / "report.html").read_text()
    check_outputs(tmp_path / "a", metrics, n=4, k=2)
    assert isinstance(metrics["caption/METEOR"], float)
    for key in ["synthetic/caption_exact", "synthetic/caption_parsed", "synthetic/gen_colour",
                "i2t2i/synthetic_exact_best"]:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["data/items"] == 4 and metrics["data/split_size"] == 256
    rows = rows_of(tmp_path / "a")
    for name in ("colour", "count", "exact", "kind", "kind_large"):  # per item in samples.jsonl, for a study's tests
        defined = [r["gen"]["synthetic"][name] for r in rows if r["gen"]["synthetic"][name] is not None]
        assert metrics[f"synthetic/gen_{name}"] == (pytest.approx(np.mean(defined)) if defined else None)
    # the captioner's reading of the generated images, beside the oracle's
    assert 0.0 <= metrics["t2i2t/synthetic_kind_best"] <= 1.0
    assert (tmp_path / "a" / "config.yaml").is_file() and (tmp_path / "a" / "timing.json").is_file()
    # same config and seed: the same metrics.json (timings live in timing.json)
    run_eval(tmp_path / "b", "metrics.meteor=true")
    assert (tmp_path / "a" / "metrics.json").read_bytes() == (tmp_path / "b" / "metrics.json").read_bytes()
    assert rows_of(tmp_path / "a") == rows_of(tmp_path / "b")


def test_coco_karpathy_with_a_bad_image(tmp_path):
    data = write_coco_karpathy(tmp_path / "coco", n_per_split=3)
    # a test-split image that cannot be read: skipped and counted
    Path(data["image_root"], "val2014").joinpath(
        json.loads(data["json"].read_text())["images"][-1]["filename"]).write_bytes(b"not a jpeg")
    out = tmp_path / "eval"
    metrics = run_eval(out, "data=coco", f"paths.coco={tmp_path / 'coco'}",
                       f"data.test.image_root={data['image_root']}")
    check_outputs(out, metrics, n=2, k=2)
    assert metrics["data/bad_samples"] == 1 and metrics["data/split_size"] == 3
    assert "synthetic/caption_exact" in metrics  # the fixture's captions are grammar sentences
    # on_bad_sample=raise: an error naming the file
    with pytest.raises(ValueError, match="COCO_val2014_"):
        run_eval(tmp_path / "eval2", "data=coco", f"paths.coco={tmp_path / 'coco'}",
                 f"data.test.image_root={data['image_root']}", "data.on_bad_sample=raise")


def test_flickr30k_karpathy(tmp_path):
    data = write_coco_karpathy(tmp_path / "f30k", n_per_split=2, flickr=True)
    out = tmp_path / "eval"
    metrics = run_eval(out, "data=flickr30k", f"paths.flickr30k={tmp_path / 'f30k'}", "metrics.text_similarity=clip",
                       f"data.test.image_root={data['image_root']}")
    check_outputs(out, metrics, n=2, k=2, similarity="clip_text")


def test_nocaps_by_domain(tmp_path):
    write_nocaps(tmp_path / "nocaps", n_per_domain=2, missing=True)  # + one in-domain entry without image
    out = tmp_path / "eval"
    metrics = run_eval(out, "data=nocaps", f"paths.nocaps={tmp_path / 'nocaps'}", "limit=null", "batch_size=4")
    check_outputs(out, metrics, n=6, k=2)
    for domain in ("in-domain", "near-domain", "out-domain", "overall"):
        for name in CAPTION_KEYS:
            assert isinstance(metrics[f"caption/{domain}/{name}"], float), (domain, name)
    assert metrics["caption/CIDEr"] == metrics["caption/overall/CIDEr"]
    assert metrics["data/bad_samples"] == 1
    assert {r["domain"] for r in rows_of(out)} == {"in-domain", "near-domain", "out-domain"}
    assert "By NoCaps domain" in (out / "report.html").read_text()


def test_jsonl_k1_no_analyses_sample_mode(tmp_path):
    data = write_jsonl(tmp_path / "mine", n=3)
    out = tmp_path / "eval"
    metrics = run_eval(out, "data=jsonl", f"paths.jsonl={data['jsonl']}", "split=val", "analysis.k=1",
                       "analysis.t2i2t=false", "caption.mode=sample")
    rows = rows_of(out)
    assert len(rows) == 3 and all(len(r["i2t2i"]) == 1 and "t2i2t" not in r for r in rows)
    assert metrics["i2t2i/spearman_cider_within"] is None and not any(k.startswith("t2i2t/") for k in metrics)
    assert all(r["caption"] != r["beam_caption"] for r in rows)  # a nucleus sample, not the beam caption


# ------------------------------------------------------------------------------------ a training run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step training run with large steps (so the adapters matter), alpha != r everywhere and a
    text-encoder LoRA too: loading must get every scale right."""
    from recon_ft.training.run import train

    run = tmp_path_factory.mktemp("run")
    cfg = conftest.compose_train(
        run, "debug=fast", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2", "data.train.size=8", "data.val.size=2",
        "data.batch_size=2", "data.eval_batch_size=2", "optim.warmup_steps=0", "optim.captioner.lr=0.05",
        "optim.generator.lr=0.05", "captioner.adapter.alpha=4", "generator.unet_adapter.alpha=4",
        "generator.text_encoder_adapter.mode=lora", "+generator.text_encoder_adapter.r=4",
        "+generator.text_encoder_adapter.alpha=2", "+generator.text_encoder_adapter.target_modules=[q_proj,v_proj]",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the evaluations here (num_threads=1): fastest on a shared CPU
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return run


def _outputs(pair):
    """Captioner logits, UNet prediction and text encoding on fixed inputs."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    tokens = pair.captioner.tokenize(["a small red circle", "a large blue star"])
    with torch.no_grad():
        logits = pair.captioner.logits(pair.captioner.preprocess(images), tokens)
        cond = pair.generator.encode_text(pair.generator.tokenize(["a small red circle", "a blue star"]))
        unet = pair.generator.denoise(torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]), cond)
    return logits, cond, unet


def test_training_run_loads_from_adapters_and_checkpoint(run_dir):
    from omegaconf import OmegaConf

    adapters = _outputs(load_run(run_dir))
    checkpoint = _outputs(load_run(run_dir / "checkpoints" / "last.ckpt"))
    named = _outputs(load_run(run_dir, ckpt="last"))
    run_cfg = OmegaConf.load(run_dir / "config.yaml")
    base = _outputs(load_base(run_cfg.captioner, run_cfg.generator))
    for a, c, n, b in zip(adapters, checkpoint, named, base):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(n, c)
        assert (a - b).abs().max() > 1e-3  # the trained adapters change every part


def test_eval_of_a_training_run(run_dir, tmp_path):
    from_adapters = run_eval(tmp_path / "a", f"run_dir={run_dir}")
    check_outputs(tmp_path / "a", from_adapters, n=4, k=2)
    from_ckpt = run_eval(tmp_path / "c", f"run_dir={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert [r["caption"] for r in rows_of(tmp_path / "a")] == [r["caption"] for r in rows_of(tmp_path / "c")]
    for key, value in from_adapters.items():
        if value is None or from_ckpt[key] is None:  # a skipped metric is skipped in both
            assert value is None and from_ckpt[key] is None, key
        elif isinstance(value, (str, bool)):  # extractors/*: what produced the numbers
            assert value == from_ckpt[key], key
        else:
            assert value == pytest.approx(from_ckpt[key], rel=1e-4, abs=1e-5), key
    assert "/checkpoints/last.ckpt" in (tmp_path / "c" / "report.html").read_text()


# ------------------------------------------------------------------------------------ DDP


def _cli(out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), f"hydra.run.dir={out_dir}", *FAST, "limit=5",
                           "batch_size=2", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_ddp_two_processes_equal_one(tmp_path):
    """2 CPU processes (gloo), 5 items in batches of 2 (ranks get 3 and 2 items, different batches)."""
    for name, extra in (("one", []), ("ddp", ["trainer=ddp_cpu"])):
        proc = _cli(tmp_path / name, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, ddp = rows_of(tmp_path / "one"), rows_of(tmp_path / "ddp")
    assert [r["index"] for r in ddp] == list(range(5))
    assert json.loads((tmp_path / "ddp" / "timing.json").read_text())["devices"] == 2
    for a, b in zip(one, ddp):
        assert a["caption"] == b["caption"]
        assert [c["caption"] for c in a["i2t2i"]] == [c["caption"] for c in b["i2t2i"]]
        assert [c["caption"] for c in a["t2i2t"]] == [c["caption"] for c in b["t2i2t"]]
        assert [c["seed"] for c in a["t2i2t"]] == [c["seed"] for c in b["t2i2t"]]
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m1.keys() == m2.keys()
    for key in m1:  # equal up to float noise of different batch compositions
        if m1[key] is None or m2[key] is None:  # a skipped metric is skipped in both
            assert m1[key] is None and m2[key] is None, key
        elif isinstance(m1[key], (str, bool)):  # extractors/*: what produced the numbers
            assert m1[key] == m2[key], key
        else:
            assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-5), key


# ------------------------------------------------------------------------------------ pieces


def test_nucleus_samples_are_seeded_per_item_not_per_batch():
    from recon_ft.models.blip import build_blip

    captioner = build_blip(tiny={"image_size": 32})
    images = captioner.preprocess(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    s = CaptionSettings(max_length=8, min_length=2)
    together = sample_captions(captioner, images, ["a", "b", 7], 2, s, seed=0)
    torch.manual_seed(1234)  # the global RNG plays no part
    alone = sample_captions(captioner, images[2:], [7], 2, s, seed=0)
    assert alone[0] == together[2] and len(together) == 3 and all(len(c) == 2 for c in together)
    assert sample_captions(captioner, images[2:], [7], 2, s, seed=1) != alone
    assert item_seed(0, 7, "t2i", 1) == item_seed(0, 7, "t2i", 1) != item_seed(0, "7", "t2i", 1)


def test_throughput_reports_both_modes():
    from recon_ft.eval.throughput import measure

    # Short samples: a random-init captioner spreads its nucleus over thousands of near-equal tokens,
    # and the float noise between batch sizes (about 1e-7 in the logits) moved the 14th draw of a
    # 16-token sample across a CDF boundary; the check is about the batching, not that noise.
    result = measure(["analysis.k=2", "generation.num_inference_steps=1", "num_threads=1", "caption.max_length=12"],
                     items=2)
    assert result["batched_items_per_s"] > 0 and result["one_at_a_time_items_per_s"] > 0
    assert result["same_captions"] and result["max_clip_i_difference"] < 1e-3


def test_wandb_logger_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "eval"
    run_eval(out, "logger=wandb", "limit=2", "analysis.t2i2t=false")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and any(runs[0].rglob("*.wandb"))


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        run_eval(tmp_path / "e", f"run_dir={tmp_path / 'nope'}")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        run_eval(tmp_path / "e", f"run_dir={tmp_path / 'notarun'}")
    with pytest.raises(ValueError, match="run_dir"):
        run_eval(tmp_path / "e", "ckpt=last")
    with pytest.raises(ValueError, match="paths.clip_weights"):
        run_eval(tmp_path / "e", "metrics=real")


def test_guidance_defaults_to_the_generators_own(tmp_path):
    """generation.guidance_scale null (eval's default): the loaded generator's own scale (its
    config's: 2 for the zoo's SD); a number on the command line wins."""
    from types import SimpleNamespace

    from recon_ft.eval.pipeline import settings_from

    pair = SimpleNamespace(generator=SimpleNamespace(guidance_scale=2.0), tiny_generator=False,
                           captioner=SimpleNamespace(caption_max_length=20))  # its length: tests/test_caption_length.py
    default, _ = settings_from(compose_eval(tmp_path), pair)
    given, _ = settings_from(compose_eval(tmp_path, "generation.guidance_scale=6.0"), pair)
    assert default.generation.guidance_scale == 2.0 and given.generation.guidance_scale == 6.0
