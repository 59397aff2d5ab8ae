"""Integration: compose the real Hydra config, train a few steps on CPU, check every output."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from recon_ft.training.run import fit
from tests import conftest

SYNTHETIC_SMALL = ["data.train.size=48", "data.val.size=8"]
SMALL = [
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "trainer.val_check_interval=4",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.model_checkpoint.every_n_train_steps=4",
    "loss.lambda_img=0.5",
    "loss.lambda_txt=0.5",
]


# Random-init tiny models (written to base/): these tests are about the training machinery; the
# default zoo models' path is tested in test_zoo.py.
RANDOM_INIT = ["captioner=tiny_blip", "generator=tiny_sd"]


def compose_train(run_dir: Path, *overrides: str, synthetic: bool = True):
    small = SMALL + (SYNTHETIC_SMALL if synthetic else [])
    return conftest.compose_train(run_dir, *RANDOM_INIT, *small, *overrides)


def trainable_state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.trainable_named_parameters().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 8-step run, shared by the output checks below."""
    run_dir = tmp_path_factory.mktemp("run")
    trainer, module = fit(compose_train(run_dir, "trainer.max_steps=8"))
    return run_dir, trainer, module


def test_run_writes_every_output(run):
    run_dir, trainer, _ = run
    assert trainer.global_step == 8
    for path in [
        "config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/step000004.ckpt",
        "adapters/captioner/adapter_config.json",
        "adapters/captioner/adapter_model.safetensors",
        "adapters/generator/pytorch_lora_weights.safetensors",
        "base/captioner/config.json",
        "base/captioner/processor_config.json",
        "base/generator/model_index.json",
        "logs/metrics.csv",
    ]:
        assert (run_dir / path).exists(), path
    header = (run_dir / "logs/metrics.csv").read_text().splitlines()[0].split(",")
    for key in ["train/loss", "train/loss_cap", "train/loss_gen", "train/loss_i2t2i", "train/loss_t2i2t",
                "train/bridge_mass", "bridge/matched", "val/loss", "data/bad_samples"]:
        assert key in header, key
    # every step logged (log_every_n_steps=1), its total the configured weighted sum of its terms
    import csv

    with (run_dir / "logs/metrics.csv").open() as f:
        logged = list(csv.DictReader(f))
    # validations: the base models' (step 0), then after steps 4 and 8
    assert [r["step"] for r in logged if r.get("val/loss")] == ["0", "3", "7"]
    for split, n in (("train", 8), ("val", 3)):
        values = [{k.split("/")[1]: float(v) for k, v in r.items() if k.startswith(f"{split}/") and v} for r in logged]
        values = [v for v in values if "loss" in v]
        assert len(values) == n, split
        for v in values:
            assert v["loss"] == pytest.approx(v["loss_cap"] + v["loss_gen"] + 0.5 * (v["loss_i2t2i"] + v["loss_t2i2t"]),
                                              rel=1e-5)


def test_checkpoint_holds_only_trainable_parameters(run):
    run_dir, _, module = run
    # plain data only: loads with weights_only=True, as evaluation loads it
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == set(module.trainable_named_parameters())
    assert all("lora" in k for k in ckpt["state_dict"])
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["global_step"] == 8


def test_base_weights_unchanged_and_adapters_trained(run):
    from diffusers import UNet2DConditionModel
    from transformers import BlipForConditionalGeneration

    run_dir, _, module = run
    base_blip = BlipForConditionalGeneration.from_pretrained(run_dir / "base/captioner")
    ours = {k.replace(".base_layer", ""): v for k, v in module.captioner.model.state_dict().items() if "lora" not in k}
    for name, value in base_blip.state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)
    base_unet = UNet2DConditionModel.from_pretrained(run_dir / "base/generator", subfolder="unet")
    ours = {k.replace(".base_layer", ""): v for k, v in module.generator.unet.state_dict().items() if "lora" not in k}
    for name, value in base_unet.state_dict().items():
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)
    # LoRA B matrices start at zero in peft's gaussian init only for A; B = 0: training moved them.
    lora_b = [p for n, p in module.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)


def test_adapters_reload_through_peft_and_diffusers(run):
    from diffusers import StableDiffusionPipeline
    from peft import PeftModel
    from transformers import BlipForConditionalGeneration

    run_dir, _, module = run
    cap, gen = module.captioner, module.generator
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = cap.tokenize(["a small red circle", "a blue star"])

    blip = BlipForConditionalGeneration.from_pretrained(run_dir / "base/captioner")
    peft_blip = PeftModel.from_pretrained(blip, run_dir / "adapters/captioner").eval()
    pixels = cap.preprocess(images)
    with torch.no_grad():
        reloaded = peft_blip(pixel_values=pixels, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        torch.testing.assert_close(reloaded.logits, cap.logits(pixels, tokens), rtol=1e-4, atol=1e-5)

    pipe = StableDiffusionPipeline.from_pretrained(run_dir / "base/generator", safety_checker=None)
    pipe.load_lora_weights(run_dir / "adapters/generator")
    z = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10, 500])
    cond = gen.encode_text(gen.tokenize(["a small red circle", "a blue star"]))
    with torch.no_grad():
        torch.testing.assert_close(
            pipe.unet(z, t, encoder_hidden_states=cond).sample, gen.denoise(z, t, cond), rtol=1e-4, atol=1e-5
        )
        # The adapters matter: without them the UNet's prediction differs.
        pipe.unload_lora_weights()
        assert not torch.allclose(pipe.unet(z, t, encoder_hidden_states=cond).sample, gen.denoise(z, t, cond))


class StopAt(L.Callback):
    """Stops a run after `step` optimizer steps, as a pre-empted job would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_continues_where_the_run_stopped(run, tmp_path):
    """An 8-step run interrupted after step 4 and resumed from its step-4 checkpoint ends with the
    same weights as the uninterrupted run: same step count, data order, noise and LR schedule."""
    run_dir, _, straight = run
    first_dir = tmp_path / "first"
    stop = ["trainer.max_steps=8", "+callbacks.stop._target_=tests.test_train.StopAt", "+callbacks.stop.step=4"]
    trainer, _ = fit(compose_train(first_dir, *stop))
    assert trainer.global_step == 4
    ckpt = first_dir / "checkpoints/step000004.ckpt"
    trainer, resumed = fit(compose_train(tmp_path / "resumed", "trainer.max_steps=8", f"ckpt_path={ckpt}"))
    assert trainer.global_step == 8
    want, got = trainable_state(straight), trainable_state(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_is_exact_with_augmentation_on_a_coco_corpus(tmp_path):
    """With augment=blip (crop, flip, RandAugment), interrupted after step 4 mid-epoch and resumed,
    the adapters equal the uninterrupted run's: each view is drawn from (seed, index, epoch)."""
    from recon_ft.data.fabricate import write_coco_karpathy

    paths = write_coco_karpathy(tmp_path / "coco", n_per_split=12)  # 24 training images: 6 batches an epoch
    coco = ["data=coco", f"paths.coco={tmp_path / 'coco'}", f"data.train.image_root={paths['image_root']}",
            f"data.val.image_root={paths['image_root']}", "data.num_workers=0", "data.caption_view.augment=blip",
            "trainer.max_steps=8"]
    trainer, straight = fit(compose_train(tmp_path / "straight", *coco, synthetic=False))
    assert straight.bad_samples == 0 and trainer.global_step == 8  # every image read and trained on
    stop = ["+callbacks.stop._target_=tests.test_train.StopAt", "+callbacks.stop.step=4"]
    fit(compose_train(tmp_path / "first", *coco, *stop, synthetic=False))
    ckpt = tmp_path / "first/checkpoints/step000004.ckpt"
    trainer, resumed = fit(compose_train(tmp_path / "resumed", *coco, f"ckpt_path={ckpt}", synthetic=False))
    assert trainer.global_step == 8
    want, got = trainable_state(straight), trainable_state(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_alternate_schedule_and_paper_style_full_training(tmp_path):
    """The reference schedule with full (non-LoRA) training of the cross-attention queries."""
    overrides = [
        "trainer.max_steps=2",
        "loss=paper",
        "captioner.adapter.mode=full",
        r"captioner.adapter.target_modules='.*text_decoder.*\.crossattention\.self\.query'",
        "generator.unet_adapter.mode=full",
        r"generator.unet_adapter.target_modules='.*attn2\.to_q'",
    ]
    trainer, module = fit(compose_train(tmp_path, *overrides))
    names = set(module.trainable_named_parameters())
    assert names and all(("crossattention.self.query" in n) or ("attn2.to_q" in n) for n in names)
    weights = load_file(tmp_path / "adapters/generator/trainable_weights.safetensors")
    assert weights and all(k.startswith("unet.") and "attn2.to_q" in k for k in weights)
    assert (tmp_path / "adapters/captioner/trainable_weights.safetensors").exists()


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with (run_dir / "logs/metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def last_logged(run_dir: Path, key: str) -> float:
    return float([row[key] for row in metrics_rows(run_dir) if row.get(key)][-1])


def bad_corpus(tmp_path: Path) -> list[str]:
    """captions.jsonl with 8 good lines and one bad line of each kind: a corrupt image, a missing
    image (both found when loaded) and an empty caption (left out when indexing). Batches of 4
    over the 10 indexed items: an epoch is 3 batches."""
    from recon_ft.data.fabricate import write_jsonl

    paths = write_jsonl(tmp_path / "data", n=8, corrupt=True, missing=True, empty_caption=True)
    return ["data=jsonl", f"paths.jsonl={paths['jsonl']}", "data.num_workers=0", "data.caption_view.augment=none",
            "trainer.val_check_interval=3"]


def test_bad_samples_are_counted_once_each_and_written_at_the_end(tmp_path):
    """Two epochs draw the corrupt and the missing image twice each: still 3 bad items (with the
    empty caption), written at the end of a run shorter than log_every_n_steps."""
    trainer, module = fit(compose_train(tmp_path / "skip", *bad_corpus(tmp_path), "trainer.max_steps=6",
                                        "trainer.log_every_n_steps=50", synthetic=False))
    assert trainer.global_step == 6 and trainer.current_epoch >= 1
    assert module.bad_samples == 3
    assert last_logged(tmp_path / "skip", "data/bad_samples") == 3.0
    assert last_logged(tmp_path / "skip", "train/nonfinite_steps") == 0.0

    with pytest.raises(ValueError) as err:
        fit(compose_train(tmp_path / "raise", *bad_corpus(tmp_path), "data.on_bad_sample=raise", synthetic=False))
    assert str(tmp_path / "data") in str(err.value)


class InfGradientAt(L.Callback):
    """One infinite gradient at optimizer step `at` (a skipped, counted step)."""

    def __init__(self, at: int):
        self.at = at

    def on_after_backward(self, trainer, module):
        if trainer.global_step == self.at:
            next(p.grad for p in module.trainable_named_parameters().values() if p.grad is not None).fill_(float("inf"))


class CountersAtStart(L.Callback):
    """Records the module's counters when training (re)starts, after a checkpoint is restored."""

    seen: dict = {}

    def on_train_start(self, trainer, module):
        CountersAtStart.seen = {"bad_samples": module.bad_samples, "nonfinite_steps": module._nonfinite_total}


def test_resume_into_the_same_folder_keeps_the_log_and_the_counters(tmp_path):
    """A run stopped after step 4 and resumed in its own folder: metrics.csv keeps the rows before
    the checkpoint, and the bad-sample and non-finite counters continue from the checkpoint's."""
    run_dir = tmp_path / "run"
    common = [*bad_corpus(tmp_path), "trainer.max_steps=6"]
    stop = ["+callbacks.stop._target_=tests.test_train.StopAt", "+callbacks.stop.step=4",
            "+callbacks.inf._target_=tests.test_train.InfGradientAt", "+callbacks.inf.at=1"]
    fit(compose_train(run_dir, *common, *stop, synthetic=False))
    before = metrics_rows(run_dir)
    assert {int(r["step"]) for r in before if r.get("train/loss")} >= {0, 2, 3}
    probe = ["+callbacks.probe._target_=tests.test_train.CountersAtStart"]
    trainer, module = fit(compose_train(run_dir, *common, *probe, f"ckpt_path={run_dir}/checkpoints/step000004.ckpt",
                                        synthetic=False))
    assert trainer.global_step == 6
    assert CountersAtStart.seen == {"bad_samples": 3, "nonfinite_steps": 1}
    after = metrics_rows(run_dir)
    assert after[: len(before)] == [{**{k: "" for k in after[0]}, **r} for r in before]  # history kept
    assert max(int(r["step"]) for r in after) > max(int(r["step"]) for r in before)
    assert last_logged(run_dir, "data/bad_samples") == 3.0 and last_logged(run_dir, "train/nonfinite_steps") == 1.0


def test_config_mistakes_give_short_messages(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def run_cli(*args):
        return subprocess.run(
            [sys.executable, "train.py", f"hydra.run.dir={tmp_path}/out", *args],
            cwd=root, capture_output=True, text=True, timeout=300,
        )

    typo = run_cli("loss.lamda_img=1")
    assert typo.returncode != 0 and "lamda_img" in typo.stderr and len(typo.stderr.splitlines()) < 10
    group = run_cli("captioner=blib")
    assert group.returncode != 0 and "tiny_blip" in group.stderr  # lists what is available
    missing = run_cli("data=coco", f"paths.coco={tmp_path}/nowhere")
    assert missing.returncode == 2
    assert "dataset_coco.json" in missing.stderr and "Traceback" not in missing.stderr
    ascent = run_cli("optim.captioner.lr=-1")
    assert ascent.returncode == 2 and ascent.stderr.splitlines()[0] == "error: optim.captioner.lr: expected >= 0, got -1"
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    cut = run_cli(f"ckpt_path={truncated}")
    assert cut.returncode == 2 and "Traceback" not in cut.stderr
    assert cut.stderr.splitlines()[0] == f"error: {truncated}: not a readable checkpoint (truncated, or not written by torch.save)"
