"""COCO / Flickr30k Karpathy, NoCaps and jsonl loaders on fabricated files in the standard formats."""

import json
from pathlib import Path

import pytest

from recon_ft.data import (
    JsonlCaptions,
    KarpathyCaptions,
    NoCapsCaptions,
    SampleKey,
    load_image,
    object_colours,
    parse_caption,
)
from recon_ft.data.fabricate import write_coco_karpathy, write_jsonl, write_nocaps


def _check_learnable(sample):
    """The image file exists and shows the scene its references describe."""
    assert Path(sample["image"]).is_file()
    scenes = {parse_caption(r) for r in sample["references"]}
    assert len(scenes) == 1 and None not in scenes  # all readings of one scene
    assert sample["caption"] in sample["references"]
    scene = scenes.pop()
    assert object_colours(load_image(sample["image"])) == [o.colour for o in scene.objects]


def test_coco_karpathy_splits(tmp_path):
    paths = write_coco_karpathy(tmp_path, n_per_split=3)
    data = json.loads(paths["json"].read_text())
    assert paths["json"].name == "dataset_coco.json" and data["dataset"] == "coco"
    entry = data["images"][0]
    assert set(entry) >= {"filepath", "filename", "cocoid", "split", "sentences", "imgid", "sentids"}
    assert entry["filepath"] == "train2014" and entry["filename"].startswith("COCO_train2014_")
    assert len(entry["sentences"]) == 5 and {"raw", "tokens"} <= set(entry["sentences"][0])

    train = KarpathyCaptions(paths["json"], paths["image_root"])  # default: train + restval
    assert len(train) == 6 and train.num_bad_at_index == 0
    by_split = {e["cocoid"]: e["split"] for e in data["images"]}
    assert [by_split[train[i]["id"]] for i in range(6)] == ["train"] * 3 + ["restval"] * 3
    for split in ("val", "test"):
        ds = KarpathyCaptions(paths["json"], paths["image_root"], splits=[split])
        assert len(ds) == 3 and all(by_split[ds[i]["id"]] == split for i in range(3))
        assert "val2014" in ds[0]["image"]
    for i in range(len(train)):
        sample = train[SampleKey(i, 1)]
        assert len(sample["references"]) == 5 and "domain" not in sample
        _check_learnable(sample)
    assert len(KarpathyCaptions(paths["json"], paths["image_root"], limit=2)) == 2


def test_flickr30k(tmp_path):
    paths = write_coco_karpathy(tmp_path, n_per_split=2, flickr=True)
    data = json.loads(paths["json"].read_text())
    assert paths["json"].name == "dataset_flickr30k.json"
    assert {e["split"] for e in data["images"]} == {"train", "val", "test"}
    assert "filepath" not in data["images"][0] and "cocoid" not in data["images"][0]
    ds = KarpathyCaptions(paths["json"], paths["image_root"], splits=["train", "restval"])
    assert len(ds) == 2
    sample = ds[1]
    assert sample["id"] == data["images"][1]["imgid"]
    assert sample["image"] == str(paths["image_root"] / data["images"][1]["filename"])
    _check_learnable(sample)


def test_nocaps_with_domains(tmp_path):
    paths = write_nocaps(tmp_path, n_per_domain=2)
    data = json.loads(paths["json"].read_text())
    assert paths["json"].name == "nocaps_val_4500_captions.json"
    assert set(data["images"][0]) >= {"id", "file_name", "open_images_id", "height", "width", "domain"}
    assert len(data["annotations"]) == 6 * 10 and set(data["annotations"][0]) == {"image_id", "id", "caption"}

    ds = NoCapsCaptions(paths["json"], paths["image_root"])
    assert len(ds) == 6
    assert [ds[i]["domain"] for i in range(6)] == ["in-domain"] * 2 + ["near-domain"] * 2 + ["out-domain"] * 2
    assert [ds[i]["id"] for i in range(6)] == [img["id"] for img in data["images"]]
    for i in range(6):
        assert len(ds[i]["references"]) == 10
        _check_learnable(ds[i])
    out = NoCapsCaptions(paths["json"], paths["image_root"], domains=["out-domain"])
    assert len(out) == 2 and {out[i]["domain"] for i in range(2)} == {"out-domain"}
    with pytest.raises(ValueError, match="unknown NoCaps domains"):
        NoCapsCaptions(paths["json"], paths["image_root"], domains=["indomain"])


def test_jsonl_relative_and_absolute_paths(tmp_path):
    paths = write_jsonl(tmp_path / "mine", n=4)
    ds = JsonlCaptions(paths["jsonl"])
    assert len(ds) == 4
    lines = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert lines[0]["image"] == "images/00000.png"  # written relative
    for i in range(4):
        sample = ds[i]
        assert sample["id"] == i + 1  # line number
        assert sample["image"] == str(tmp_path / "mine" / lines[i]["image"])
        assert sample["references"] == [lines[i]["caption"]] == [sample["caption"]]
        _check_learnable(sample)
    # an absolute path stays as it is; the same image on two lines is two items
    other = tmp_path / "elsewhere" / "captions.jsonl"
    other.parent.mkdir()
    image = str(tmp_path / "mine" / "images" / "00000.png")
    other.write_text(json.dumps({"image": image, "caption": "one"}) + "\n\n"
                     + json.dumps({"image": image, "caption": "two"}) + "\n")
    ds = JsonlCaptions(other)
    assert len(ds) == 2 and ds[0]["image"] == ds[1]["image"] == image
    assert (ds[0]["id"], ds[1]["id"]) == (1, 3) and ds[1]["references"] == ["two"]


def test_empty_captions_are_counted_at_indexing(tmp_path):
    coco = write_coco_karpathy(tmp_path / "coco", 2, empty_caption=True)
    ds = KarpathyCaptions(coco["json"], coco["image_root"])
    assert len(ds) == 4 and ds.num_bad_at_index == 1
    assert ds.bad_at_index[0] == (str(coco["empty_caption"]), "no non-empty caption")
    nocaps = write_nocaps(tmp_path / "nocaps", 1, empty_caption=True)
    ds = NoCapsCaptions(nocaps["json"], nocaps["image_root"])
    assert len(ds) == 3 and ds.num_bad_at_index == 1 and ds.bad_at_index[0][0] == str(nocaps["empty_caption"])
    jl = write_jsonl(tmp_path / "jl", 2, empty_caption=True)
    ds = JsonlCaptions(jl["jsonl"])
    assert len(ds) == 2 and ds.num_bad_at_index == 1
    assert "captions.jsonl:3" in ds.bad_at_index[0][0] and ds.bad_at_index[0][1] == "empty caption"


def test_missing_paths_and_bad_formats_name_the_file(tmp_path):
    coco = write_coco_karpathy(tmp_path / "coco", 1)
    with pytest.raises(FileNotFoundError, match=r"nope/dataset_coco\.json: file not found"):
        KarpathyCaptions(tmp_path / "nope" / "dataset_coco.json", coco["image_root"])
    with pytest.raises(FileNotFoundError, match=r"no_images: directory not found"):
        KarpathyCaptions(coco["json"], tmp_path / "no_images")
    wrong = tmp_path / "dataset_coco.json"
    wrong.write_text(json.dumps([{"filename": "x.jpg"}]))
    with pytest.raises(ValueError, match=r"dataset_coco\.json: expected a top-level 'images' list"):
        KarpathyCaptions(wrong, coco["image_root"])
    wrong.write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "train"}]}))
    with pytest.raises(ValueError, match=r"images\[0\] needs 'filename', 'split' and a 'sentences' list"):
        KarpathyCaptions(wrong, coco["image_root"])
    wrong.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        KarpathyCaptions(wrong, coco["image_root"])
    with pytest.raises(ValueError, match="splits must be"):
        KarpathyCaptions(coco["json"], coco["image_root"], splits=["training"])

    nocaps = write_nocaps(tmp_path / "nocaps", 1)
    with pytest.raises(FileNotFoundError, match="nocaps_val_4500_captions.json: file not found"):
        NoCapsCaptions(tmp_path / "nocaps_val_4500_captions.json", nocaps["image_root"])
    data = json.loads(nocaps["json"].read_text())
    del data["images"][0]["domain"]
    broken = tmp_path / "nocaps_broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"nocaps_broken\.json: images\[0\] needs a 'domain' field"):
        NoCapsCaptions(broken, nocaps["image_root"])
    broken.write_text(json.dumps({"images": data["images"]}))
    with pytest.raises(ValueError, match="expected a top-level 'annotations' list"):
        NoCapsCaptions(broken, nocaps["image_root"])

    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: file not found"):
        JsonlCaptions(tmp_path / "missing.jsonl")
    lines = tmp_path / "captions.jsonl"
    lines.write_text(json.dumps({"image": "a.png", "caption": "x"}) + "\n" + json.dumps({"img": "b.png"}) + "\n")
    with pytest.raises(ValueError, match=r"captions\.jsonl:2: expected \{\"image\": path, \"caption\": text\}"):
        JsonlCaptions(lines)
    lines.write_text("not json\n")
    with pytest.raises(ValueError, match=r"captions\.jsonl:1: not valid JSON"):
        JsonlCaptions(lines)
