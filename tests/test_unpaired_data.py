"""Unpaired images and texts: the datasets, which items each batch draws, and how they join a batch."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from recon_ft.data import CaptionDataModule, SyntheticCaptions, SyntheticImages, SyntheticTexts, UnpairedImages, \
    UnpairedTexts, parse_caption
from recon_ft.data.datamodule import BadSample, BadUnpaired, CaptionCollate, unpaired_datasets
from recon_ft.data.mixing import MixedBatchSampler, StreamKey, UnpairedStream
from recon_ft.data.synthetic import HELDOUT_PAIRS
from recon_ft.data.transforms import CaptionerView, GeneratorView


def write_images(folder, n=5, bad=True):
    """n scene images (png and jpg, one in a subfolder) and, if `bad`, a file that is not an image."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    images = SyntheticImages("heldout", n, seed=3)
    names = []
    for i in range(n):
        name = f"sub/{i}.png" if i == 0 else f"{i}.{'png' if i % 2 else 'jpg'}"
        images[i]["image"].save(folder / name)
        names.append(name)
    if bad:
        (folder / "broken.png").write_bytes(b"not an image")
        names.append("broken.png")
    return names


# -- datasets -----------------------------------------------------------------------------------


def test_unpaired_images_from_a_folder_a_glob_and_a_karpathy_json(tmp_path):
    names = write_images(tmp_path / "imgs")
    folder = UnpairedImages(tmp_path / "imgs")
    assert sorted(i["id"] for i in (folder[k] for k in range(len(folder)))) == sorted(names)
    assert len(UnpairedImages(str(tmp_path / "imgs" / "*.png"))) == sum(
        n.endswith(".png") and "/" not in n for n in names)
    assert len(UnpairedImages(str(tmp_path / "imgs" / "**" / "*.png"))) == sum(n.endswith(".png") for n in names)
    karpathy = {"images": [{"filename": "1.png", "filepath": "imgs", "split": "train", "sentences": []},
                           {"filename": "2.jpg", "filepath": "imgs", "split": "val",
                            "sentences": [{"raw": "ignored"}]}]}
    (tmp_path / "dataset_coco.json").write_text(json.dumps(karpathy))
    js = UnpairedImages(tmp_path / "dataset_coco.json")
    assert [js[i]["image"] for i in range(2)] == [str(tmp_path / "imgs" / "1.png"), str(tmp_path / "imgs" / "2.jpg")]
    assert len(UnpairedImages(tmp_path / "dataset_coco.json", splits=["val"])) == 1


def test_unpaired_images_errors_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.unpaired.images=.*nowhere: expected a folder"):
        UnpairedImages(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        UnpairedImages(tmp_path / "empty")


def test_unpaired_texts_leave_out_empty_and_over_long_lines_by_name(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a small red circle\n\n   \n" + "word " * 31 + "\n  a large  blue star \n")
    texts = UnpairedTexts(path, max_words=30)
    assert [texts[i]["text"] for i in range(len(texts))] == ["a small red circle", "a large blue star"]
    assert texts[1]["id"] == "captions.txt:5"
    assert texts.bad_at_index == [("captions.txt:2", "empty caption"), ("captions.txt:3", "empty caption"),
                                  ("captions.txt:4", "31 words, over data.unpaired.max_words=30")]
    jsonl = tmp_path / "captions.jsonl"
    jsonl.write_text('{"caption": "a star"}\n{"caption": ""}\n')
    assert len(UnpairedTexts(jsonl)) == 1 and UnpairedTexts(jsonl).num_bad_at_index == 1
    jsonl.write_text('{"caption": "a star"}\n{"text": "no caption field"}\n')
    with pytest.raises(ValueError, match=r"captions.jsonl:2: expected \{\"caption\": text\}"):
        UnpairedTexts(jsonl)
    with pytest.raises(FileNotFoundError, match="expected a .txt file"):
        UnpairedTexts(tmp_path / "captions.csv")


def test_synthetic_unpaired_streams_hold_the_chosen_compositions_and_no_split_item():
    held = SyntheticImages("heldout", 64, seed=0)
    seen = SyntheticImages("seen", 64, seed=0)
    has_heldout = [any((o.colour, o.kind) in HELDOUT_PAIRS for o in ds.scene(i).objects) for ds in (held, seen)
                   for i in range(64)]
    assert all(has_heldout[:64]) and not any(has_heldout[64:])
    # their own random streams: not the test (or train) split's items
    test = SyntheticCaptions("test", 64, seed=0)
    assert all(held.scene(i) != test.scene(i) for i in range(64))
    texts = SyntheticTexts("heldout", 64, seed=0)
    assert all(parse_caption(texts[i]["text"]) == texts.scene(i) for i in range(64))
    assert all(texts.scene(i) != held.scene(i) for i in range(64))  # texts do not describe the images
    assert all(parse_caption(held[i]["truth"]) == held.scene(i) for i in range(8))  # the oracle arm's target
    # seeded: the same item everywhere
    assert np.array_equal(np.asarray(held[5]["image"]), np.asarray(SyntheticImages("heldout", 64, seed=0)[5]["image"]))


# -- which items each batch draws -----------------------------------------------------------------


def test_a_stream_walks_a_permutation_per_pass_and_ranks_draw_disjoint_items():
    stream = UnpairedStream("images", data_len=10, batch_size=3, every_n_steps=2, seed=1)
    assert [len(stream.keys(n)) for n in range(6)] == [3, 0, 3, 0, 3, 0]
    assert [stream.draws_before(n) for n in range(6)] == [0, 3, 3, 6, 6, 9]
    drawn = [k.index for n in range(0, 40, 2) for k in stream.keys(n)]  # 60 draws: 6 passes of 10
    for p in range(6):
        assert sorted(drawn[10 * p : 10 * p + 10]) == list(range(10))
    assert drawn[:10] != drawn[10:20]  # a new order each pass
    # two ranks of 3 draw together what one rank of 6 draws: rank r its items r, r + 2, r + 4, so
    # within a pass no item is drawn by both
    double = UnpairedStream("images", data_len=10, batch_size=6, every_n_steps=2, seed=1)
    for n in range(0, 12, 2):
        ranks = [stream.keys(n, rank, 2) for rank in (0, 1)]
        assert [ranks[j % 2][j // 2] for j in range(6)] == double.keys(n)
    assert stream.keys(4) == UnpairedStream("images", 10, 3, 2, seed=1).keys(4)  # a function of (seed, n)


def _paired_sampler(n=20, batch_size=4):
    from recon_ft.data.datamodule import _EpochBatchSampler
    from recon_ft.data.sampler import ResumableSampler

    return _EpochBatchSampler(ResumableSampler(n, seed=0), batch_size, drop_last=False)


def test_mixed_batches_keep_the_paired_keys_and_resume_mid_epoch_exactly():
    streams = [UnpairedStream("images", 7, 2, seed=0), UnpairedStream("texts", 5, 3, every_n_steps=2, seed=0)]
    plain, mixed = _paired_sampler(), MixedBatchSampler(_paired_sampler(), streams)
    assert len(mixed) == len(plain) == 5
    run = []
    for epoch in (0, 1):
        plain.sampler.set_epoch(epoch)
        mixed.sampler.set_epoch(epoch)
        for p, m in zip(plain, mixed):
            assert m[: len(p)] == p  # the paired keys are untouched
            run.append(m)
    assert [len(b) for b in run[:4]] == [4 + 2 + 3, 4 + 2, 4 + 2 + 3, 4 + 2]
    # epoch 1's first batch is the run's batch 5: texts draw on even run batches only, so not here
    assert [k.stream for k in run[5][4:]] == ["images", "images"]
    # resume in epoch 1 after 2 batches: the same keys as the uninterrupted run from there
    resumed = MixedBatchSampler(_paired_sampler(), streams)
    resumed.sampler.set_epoch(1)
    resumed.sampler.skip(2 * 4)
    assert list(resumed) == run[7:]


# -- how they join a batch ------------------------------------------------------------------------


def _sample(i):
    """A paired sample whose views are filled with its number: row i of a batch shows which it holds."""
    return {"id": i, "image_cap": torch.full((3, 4, 4), float(i)), "image_gen": torch.full((3, 8, 8), float(i)),
            "caption": f"caption {i}", "references": [f"caption {i}"]}


def _unpaired_image(i):
    return {"stream": "images", "index": i, "id": f"u{i}", "image_cap": torch.full((3, 4, 4), 100.0 + i),
            "image_gen": torch.full((3, 8, 8), 100.0 + i)}


def test_collate_drops_bad_rows_and_keeps_every_image_with_its_own_caption():
    collate = CaptionCollate(4, 8)
    samples = [_sample(0), BadSample(1), _sample(2), None, _sample(4), _unpaired_image(7), BadUnpaired("images", 8),
               _unpaired_image(9), {"stream": "texts", "index": 3, "id": "t3", "text": "a star"}]
    batch = collate(samples)
    assert batch["caption"] == ["caption 0", "caption 2", "caption 4"]
    assert batch["image_cap"][:, 0, 0, 0].tolist() == [0.0, 2.0, 4.0]  # the same rows, in the same order
    assert batch["image_gen"][:, 0, 0, 0].tolist() == [0.0, 2.0, 4.0]
    assert batch["n_bad"] == 2 and batch["bad_index"] == [1]
    assert batch["unpaired_images"]["id"] == ["u7", "u9"]
    assert batch["unpaired_images"]["image_cap"][:, 0, 0, 0].tolist() == [107.0, 109.0]
    assert batch["unpaired_images"]["image_gen"][:, 0, 0, 0].tolist() == [107.0, 109.0]
    assert batch["unpaired_texts"] == ["a star"] and batch["bad_unpaired"] == [("images", 8)]
    # every unpaired image bad: the stream's rows are there, empty, for the step to skip
    only_bad = collate([_sample(0), BadUnpaired("images", 2)])
    assert only_bad["unpaired_images"]["image_cap"].shape == (0, 3, 4, 4)
    assert "unpaired_images" not in collate([_sample(0)]) and "bad_unpaired" not in collate([_sample(0)])


def _datamodule(unpaired, n=12, batch_size=4):
    return CaptionDataModule(train=SyntheticCaptions("train", n, seed=0, image_size=32), batch_size=batch_size,
                             caption_view={"size": 32}, generator_view={"size": 32}, seed=0, unpaired=unpaired)


def test_the_loader_gives_each_unpaired_row_its_own_item_and_the_paired_rows_unchanged(tmp_path):
    names = write_images(tmp_path / "imgs", n=5)
    (tmp_path / "t.txt").write_text("a small red circle\n\na large blue star\n")
    dm = _datamodule({"images": str(tmp_path / "imgs"), "texts": str(tmp_path / "t.txt"), "batch_size": 3})
    assert dm.num_bad_at_index["unpaired_texts"] == 1
    plain = list(_datamodule(None).train_dataloader())
    batches = list(dm.train_dataloader())
    images = dm.unpaired["images"]
    cap_view, gen_view = CaptionerView(32), GeneratorView(32)
    bad_seen = 0
    for p, b, in zip(plain, batches):
        assert b["id"] == p["id"] and torch.equal(b["image_gen"], p["image_gen"]) and b["caption"] == p["caption"]
        assert len(b["unpaired_images"]["id"]) + len(b["bad_unpaired"]) == 3 and len(b["unpaired_texts"]) == 3
        bad_seen += len(b["bad_unpaired"])
        for row, item_id in enumerate(b["unpaired_images"]["id"]):
            path = images[[i for i, (name, _) in enumerate(images.items) if name == item_id][0]]["image"]
            from PIL import Image

            with Image.open(path) as im:
                torch.testing.assert_close(b["unpaired_images"]["image_gen"][row], gen_view(im.convert("RGB")))
                torch.testing.assert_close(b["unpaired_images"]["image_cap"][row], cap_view(im.convert("RGB")))
        assert set(b["unpaired_texts"]) <= {"a small red circle", "a large blue star"}
    assert bad_seen >= 1 and len(names) == 6  # 9 draws over 6 files: the broken one drawn, left out
    assert all("truth" not in b["unpaired_images"] for b in batches)  # a folder knows no true captions


def test_a_synthetic_image_stream_carries_each_image_s_true_caption_into_the_batch():
    held = SyntheticImages("heldout", 16, seed=0, image_size=32)
    dm = _datamodule({"images": held, "batch_size": 3})
    for b in dm.train_dataloader():
        rows = b["unpaired_images"]
        assert len(rows["truth"]) == len(rows["id"]) == 3
        for item_id, truth in zip(rows["id"], rows["truth"]):
            assert truth == held[int(item_id.rsplit("-", 1)[1])]["truth"]


def test_unpaired_options_are_checked():
    with pytest.raises(ValueError, match=r"data.unpaired: unknown options \['image'\]"):
        unpaired_datasets({"image": "x"})
    with pytest.raises(ValueError, match="every_n_steps"):
        UnpairedStream("texts", 3, 1, every_n_steps=0)
    assert StreamKey("images", 2) != (2, 0)  # never read as a paired SampleKey


def test_on_bad_sample_raise_stops_at_a_bad_unpaired_item(tmp_path):
    from recon_ft.data import BadSampleError

    write_images(tmp_path / "imgs", n=2)
    (tmp_path / "t.txt").write_text("a star\n\n")
    dm = _datamodule({"texts": str(tmp_path / "t.txt")})
    dm.on_bad_sample = "raise"
    with pytest.raises(BadSampleError, match="t.txt:2: empty caption"):
        dm.train_dataloader()
    dm = _datamodule({"images": str(tmp_path / "imgs"), "batch_size": 3})
    dm.on_bad_sample = "raise"
    with pytest.raises(BadSampleError, match="broken.png"):
        list(dm.train_dataloader())
