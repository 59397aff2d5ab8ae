"""CaptionDataModule: views, collate, bad samples, loaders and (Lightning) mid-epoch resume."""

import json
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.data import (
    BadSampleError,
    CaptionCollate,
    CaptionDataModule,
    GeneratorView,
    JsonlCaptions,
    KarpathyCaptions,
    NoCapsCaptions,
    SyntheticCaptions,
)
from recon_ft.data.fabricate import write_coco_karpathy, write_jsonl, write_nocaps
from recon_ft.data.synthetic import BACKGROUND

VIEWS = dict(caption_view=dict(size=32, mean=CLIP_MEAN, std=CLIP_STD), generator_view=dict(size=24))


def _all_batches(loader):
    return [batch for batch in loader]


def test_collated_batch_shapes_and_value_ranges():
    train = SyntheticCaptions("train", 10, seed=0, image_size=64)
    dm = CaptionDataModule(train=train, val=SyntheticCaptions("val", 5), batch_size=4, **VIEWS)
    dm.setup("fit")
    batches = _all_batches(dm.train_dataloader())
    assert [len(b["caption"]) for b in batches] == [4, 4, 2]
    batch = batches[0]
    assert set(batch) == {"image_cap", "image_gen", "caption", "references", "id", "n_bad", "bad_index"}
    assert batch["image_cap"].shape == (4, 3, 32, 32) and batch["image_cap"].dtype == torch.float32
    assert batch["image_gen"].shape == (4, 3, 24, 24) and batch["image_gen"].dtype == torch.float32
    assert batch["n_bad"] == 0
    gen = batch["image_gen"]
    assert gen.min() >= -1 and gen.max() <= 1
    # the background dominates: its value is the most frequent one, mapped to [-1, 1]
    background = torch.tensor(BACKGROUND) / 255 * 2 - 1
    assert torch.allclose(gen[0].flatten(1).mode(1).values, background, atol=1e-6)
    # captioner view: normalized with (mean, std), so un-normalizing gives [0, 1] and the background
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    pixels = batch["image_cap"] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(pixels[0].flatten(1).mode(1).values, torch.tensor(BACKGROUND) / 255, atol=1e-5)
    # exactly the generator view of the raw image
    index = int(batch["id"][0].split("-")[1])
    assert torch.equal(gen[0], GeneratorView(24)(train[index]["image"]))
    for caption, refs in zip(batch["caption"], batch["references"]):
        assert caption in refs
    # every training item once per epoch
    assert sorted(i for b in batches for i in b["id"]) == sorted(f"train-{i}" for i in range(10))
    val = _all_batches(dm.val_dataloader())
    assert [b["id"] for b in val] == [["val-0", "val-1", "val-2", "val-3"], ["val-4"]]  # sequential


def test_all_bad_batch_keeps_trailing_shape():
    batch = CaptionCollate(32, (24, 16))([None, None])
    assert batch["image_cap"].shape == (0, 3, 32, 32) and batch["image_gen"].shape == (0, 3, 24, 16)
    assert batch["n_bad"] == 2 and batch["caption"] == []


def test_domain_and_caption_truncation(tmp_path):
    nocaps = write_nocaps(tmp_path / "nocaps", 1)
    long_caption = " ".join(f"w{i}" for i in range(40))
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": str(tmp_path / "nocaps" / "images" / json.loads(
        nocaps["json"].read_text())["images"][0]["file_name"]), "caption": long_caption}) + "\n")
    dm = CaptionDataModule(train=JsonlCaptions(tmp_path / "captions.jsonl"),
                           val=NoCapsCaptions(nocaps["json"], nocaps["image_root"]), batch_size=2, **VIEWS)
    batch = next(iter(dm.train_dataloader()))
    assert batch["caption"][0].split() == long_caption.split()[:30]  # max_words = 30
    assert batch["references"][0] == [long_caption]  # references kept whole for metrics
    val = next(iter(dm.val_dataloader()))
    assert val["domain"] == ["in-domain", "near-domain"]


def test_bad_samples_skipped_counted_and_warned_once(tmp_path, caplog):
    coco = write_coco_karpathy(tmp_path, 3, corrupt=True, missing=True, empty_caption=True)
    train = KarpathyCaptions(coco["json"], coco["image_root"], splits=["train"])
    dm = CaptionDataModule(train=train, batch_size=2, on_bad_sample="skip", **VIEWS)
    assert dm.num_bad_at_index == {"train": 1}  # the empty caption, found when indexing
    dm.setup("fit")
    with caplog.at_level(logging.WARNING, logger="recon_ft.data.datamodule"):
        for epoch in range(2):
            dm.train_sampler.set_epoch(epoch)
            batches = _all_batches(dm.train_dataloader())
            assert sum(b["n_bad"] for b in batches) == 2  # corrupt + missing
            assert sum(len(b["id"]) for b in batches) == 3
            assert all(b["image_cap"].shape[0] == len(b["caption"]) for b in batches)
    messages = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(messages) == 2  # once per file, not once per epoch
    assert any(str(coco["corrupt"]) in m and "corrupt" in m for m in messages)
    assert any(str(coco["missing"]) in m and "not found" in m for m in messages)


@pytest.mark.parametrize("kind, reason", [("corrupt", "unreadable or corrupt image"),
                                          ("missing", "image file not found")])
def test_raise_mode_names_the_file(tmp_path, kind, reason):
    jl = write_jsonl(tmp_path, 2, **{kind: True})
    dm = CaptionDataModule(train=JsonlCaptions(jl["jsonl"]), batch_size=3, on_bad_sample="raise", **VIEWS)
    dm.train_sampler.shuffle = False
    with pytest.raises(BadSampleError) as err:
        next(iter(dm.train_dataloader()))
    assert isinstance(err.value, ValueError)
    assert str(jl[kind]) in str(err.value) and reason in str(err.value)


def test_raise_mode_in_a_worker_process_is_one_line_naming_the_file(tmp_path):
    """The DataLoader re-raises a worker's error from its formatted traceback; the error the user
    sees is still BadSampleError("<file>: <reason>"), one line."""
    jl = write_jsonl(tmp_path, 2, missing=True)
    dm = CaptionDataModule(train=JsonlCaptions(jl["jsonl"]), batch_size=3, num_workers=1, on_bad_sample="raise",
                           **VIEWS)
    dm.train_sampler.shuffle = False
    with pytest.raises(BadSampleError) as err:
        next(iter(dm.train_dataloader()))
    assert str(err.value) == f"{jl['missing']}: image file not found"
    assert (err.value.source, err.value.reason) == (str(jl["missing"]), "image file not found")


def test_raise_mode_reports_empty_captions_found_at_indexing(tmp_path):
    jl = write_jsonl(tmp_path, 2, empty_caption=True)
    dm = CaptionDataModule(train=JsonlCaptions(jl["jsonl"]), on_bad_sample="raise", **VIEWS)
    with pytest.raises(BadSampleError, match=r"captions\.jsonl:3 .*00002\.png\): empty caption"):
        dm.setup("fit")


def test_worker_processes_give_the_same_batches():
    def batches(num_workers):
        dm = CaptionDataModule(train=SyntheticCaptions("train", 12, seed=2, image_size=32), batch_size=4,
                               num_workers=num_workers, seed=2, **VIEWS)
        dm.train_sampler.set_epoch(1)
        return _all_batches(dm.train_dataloader())

    serial, parallel = batches(0), batches(2)
    assert [b["caption"] for b in serial] == [b["caption"] for b in parallel]
    assert all(torch.equal(a["image_gen"], b["image_gen"]) for a, b in zip(serial, parallel))


def test_skip_train_batches_resumes_the_epoch():
    dm = CaptionDataModule(train=SyntheticCaptions("train", 22, seed=0, image_size=16), batch_size=4, seed=3,
                           **VIEWS)
    dm.train_sampler.set_epoch(1)
    full = [b["id"] for b in dm.train_dataloader()]
    assert len(full) == 6
    dm.skip_train_batches(2)
    loader = dm.train_dataloader()
    assert len(loader) == 6  # Lightning counts the batches done before the checkpoint itself
    assert [b["id"] for b in loader] == full[2:]
    assert [b["id"] for b in dm.train_dataloader()] == full  # only the next iteration skips


def test_view_and_option_errors():
    with pytest.raises(ValueError, match="on_bad_sample"):
        CaptionDataModule(train=SyntheticCaptions("train", 2), on_bad_sample="ignore")
    with pytest.raises(ValueError, match="augment"):
        CaptionDataModule(train=SyntheticCaptions("train", 2), caption_view=dict(size=32, augment="heavy"))
    with pytest.raises(ValueError, match="unknown view options"):
        CaptionDataModule(train=SyntheticCaptions("train", 2), caption_view=dict(size=32, interpolation="x"))
    with pytest.raises(ValueError, match="no val dataset"):
        CaptionDataModule(train=SyntheticCaptions("train", 2)).val_dataloader()


def test_blip_augment_keeps_shape_and_is_drawn_from_the_sample_position():
    """Augmentation is a function of (seed, index, epoch), as the noise is: two passes over the same
    epoch see the same views (so a resumed run does too), another epoch or seed other views."""
    from recon_ft.data.sampler import SampleKey

    def module(seed=0):
        return CaptionDataModule(train=SyntheticCaptions("train", 4, image_size=64), batch_size=4, seed=seed,
                                 caption_view=dict(size=32, augment="blip"), generator_view=dict(size=16))

    dm = module()
    torch.manual_seed(0)
    a = next(iter(dm.train_dataloader()))
    torch.manual_seed(1)  # the global RNG plays no part
    b = next(iter(dm.train_dataloader()))
    assert a["image_cap"].shape == (4, 3, 32, 32) and torch.equal(a["image_cap"], b["image_cap"])
    assert torch.equal(a["image_gen"], b["image_gen"])  # the generator view is never augmented
    plain = CaptionDataModule(train=SyntheticCaptions("train", 4, image_size=64), batch_size=4,
                              caption_view=dict(size=32), generator_view=dict(size=16))
    assert not torch.equal(a["image_cap"], next(iter(plain.train_dataloader()))["image_cap"])  # augmented
    view = dm._view_dataset("train")
    epoch0, epoch1 = view[SampleKey(0, 0)]["image_cap"], view[SampleKey(0, 1)]["image_cap"]
    assert torch.equal(epoch0, view[SampleKey(0, 0)]["image_cap"]) and not torch.equal(epoch0, epoch1)
    assert not torch.equal(epoch0, module(seed=1)._view_dataset("train")[SampleKey(0, 0)]["image_cap"])
    eval_view = dm.eval_caption_view
    assert eval_view.augment == "none" and eval_view.size == (32, 32)


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(tuple(batch["id"]))
        return self.layer(batch["image_cap"].mean((2, 3))).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(root, ckpt_path=None, callbacks=()):
    model = _Recorder()
    dm = CaptionDataModule(train=SyntheticCaptions("train", 16, seed=0, image_size=8), batch_size=4, seed=1,
                           caption_view=dict(size=8), generator_view=dict(size=8))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=root,
                        callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_resume_continues_the_exact_batch_sequence(tmp_path):
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    full = _fit(tmp_path, callbacks=[saver])  # 2 epochs x 4 batches, checkpoints after steps 2, 4, 6, 8
    assert len(full) == 8 and full[:4] != full[4:]
    # step 2: mid epoch 0; step 4: after the last batch of epoch 0; step 6: mid epoch 1
    for step in (2, 4, 6):
        rest = _fit(tmp_path, ckpt_path=tmp_path / "ckpt" / f"step={step}.ckpt")
        assert full[:step] + rest == full, f"resume from step {step}"
