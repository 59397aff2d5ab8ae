"""The synthetic shapes benchmark: determinism, grammar round trip, held-out split, oracle."""

import numpy as np
import pytest

from recon_ft.data import (
    HELDOUT_PAIRS,
    SampleKey,
    Scene,
    Shape,
    SyntheticCaptions,
    captions,
    colour_match,
    object_colours,
    drop_attributes,
    parse_caption,
    parse_partial,
    score_attributes,
    score_caption,
)
from recon_ft.data.synthetic import BACKGROUND, COLOURS, KINDS, SIZES, generate


def _pixels(sample):
    return np.asarray(sample["image"])


def test_same_seed_same_items_different_seed_different_items():
    a, b = SyntheticCaptions("train", 20, seed=3, image_size=32), SyntheticCaptions("train", 20, seed=3, image_size=32)
    for i in [7, 3, 19, 0]:  # out of order: each item stands alone
        assert np.array_equal(_pixels(a[i]), _pixels(b[i]))
        assert a[i]["references"] == b[i]["references"] and a[i]["caption"] == b[i]["caption"]
    other = SyntheticCaptions("train", 20, seed=4, image_size=32)
    differ_img = sum(not np.array_equal(_pixels(a[i]), _pixels(other[i])) for i in range(20))
    differ_cap = sum(a[i]["references"] != other[i]["references"] for i in range(20))
    assert differ_img == 20 and differ_cap >= 15
    # splits of one seed differ too
    val = SyntheticCaptions("val", 20, seed=3, image_size=32)
    assert sum(a[i]["references"] != val[i]["references"] for i in range(20)) >= 15


def test_images_shape_dtype_and_plain_background():
    for size in (32, 64):
        image = _pixels(SyntheticCaptions("test", 1, seed=0, image_size=size)[0])
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        assert tuple(image[0, 0]) == BACKGROUND or tuple(image[-1, -1]) == BACKGROUND
        colours = {tuple(p) for p in image.reshape(-1, 3)}
        assert colours <= {BACKGROUND, *COLOURS.values()}  # hard masks, exact palette


def test_every_caption_parses_back_to_its_scene_and_oracle_agrees():
    for split in ("train", "val", "test"):
        ds = SyntheticCaptions(split, 120, seed=1, image_size=32)
        for i in range(len(ds)):
            scene, sample = ds.scene(i), ds[i]
            assert 1 <= len(scene) <= 3
            assert len(sample["references"]) == (1 if len(scene) == 1 else 2)
            assert sample["caption"] in sample["references"]
            for ref in sample["references"]:
                assert parse_caption(ref) == scene
                assert score_caption(ref, scene)["exact"] == 1.0
            # pixel oracle: object colours left to right, exactly, at 32 px
            assert object_colours(sample["image"]) == [o.colour for o in scene.objects]
            assert colour_match(sample["image"], scene) == {"count": 1.0, "colour": 1.0, "exact": 1.0}


def test_readings_and_parse_edge_cases():
    red, blue = Shape("circle", "red", "small"), Shape("square", "blue", "large")
    green = Shape("star", "green", "small")
    scene = Scene((red, blue, green))
    assert captions(scene) == [
        "a small red circle left of a large blue square left of a small green star",
        "a small green star right of a large blue square right of a small red circle",
    ]
    assert parse_caption("  A Small RED circle   left of a large blue square left of a small green star. ") == scene
    assert parse_caption("a small red circle") == Scene((red,))
    four = "a small red circle left of a small red circle left of a small red circle left of a small red circle"
    assert len(parse_caption(four)) == 4
    for bad in ["", "a red circle", "a small pink circle", "a small red circle above a large blue square",
                "a small red circle left of a large blue square right of a small green star",
                "a small red circle left of", "a picture of a small red circle"]:
        assert parse_caption(bad) is None, bad


def test_score_caption_per_attribute():
    scene = Scene((Shape("circle", "red", "small"), Shape("square", "blue", "large")))
    wrong_colour = score_caption("a small red circle left of a large green square", scene)
    assert wrong_colour == dict(parsed=1.0, exact=0.0, count=1.0, kind=1.0, colour=0.5, size=1.0,
                                attributes=pytest.approx(2.5 / 3), recall=pytest.approx(5 / 6),
                                precision=pytest.approx(5 / 6))
    one_object = score_caption("a small red circle", scene)
    assert one_object["count"] == 0.0 and one_object["kind"] == 0.5 and one_object["attributes"] == 0.5
    swapped = score_caption("a large blue square left of a small red circle", scene)
    assert swapped["exact"] == 0.0 and swapped["attributes"] == 0.0
    assert score_caption("a large blue square right of a small red circle", scene)["exact"] == 1.0
    garbage = score_caption("two dogs on a beach", scene)
    assert garbage["parsed"] == 0.0 and garbage["attributes"] == 0.0 and garbage["exact"] == 0.0


def test_attribute_recall_and_precision_of_incomplete_captions():
    scene = Scene((Shape("circle", "red", "small"), Shape("square", "blue", "large")))  # 6 attributes
    assert parse_partial("a red circle left of a square") == [{"colour": "red", "kind": "circle"}, {"kind": "square"}]
    assert parse_partial("a large square right of a circle") == [{"kind": "circle"}, {"size": "large", "kind": "square"}]
    assert parse_partial("a red") is None and parse_partial("a circle left of a square right of a star") is None
    # complete and right: every attribute stated and right
    assert score_attributes("a small red circle left of a large blue square", scene) == dict(recall=1.0, precision=1.0)
    # terse but right: 3 of the scene's 6 attributes stated (red, circle, square), all right
    assert score_attributes("a red circle left of a square", scene) == dict(recall=0.5, precision=1.0)
    # wrong colour and an extra object: right = small, circle, large, square: 4 of the 7 stated
    wrong = score_attributes("a small green circle left of a large square left of a small star", scene)
    assert wrong == dict(recall=pytest.approx(4 / 6), precision=pytest.approx(4 / 7))
    assert score_attributes("two dogs", scene) == dict(recall=0.0, precision=0.0)
    # score_caption carries them; an incomplete caption does not parse as a complete one
    terse = score_caption("a red circle left of a square", scene)
    assert terse["parsed"] == 0.0 and terse["exact"] == 0.0 and terse["recall"] == 0.5 and terse["precision"] == 1.0


def test_references_that_leave_out_attributes():
    rng = np.random.default_rng(0)
    caption = "a small red circle left of a large blue square"
    assert drop_attributes(caption, 0.0, rng) == caption
    assert drop_attributes(caption, 1.0, rng) == "a circle left of a square"
    dropped = [drop_attributes("a small red circle", 0.5, np.random.default_rng(i)) for i in range(2000)]
    assert set(dropped) == {"a small red circle", "a red circle", "a small circle", "a circle"}
    share = np.mean([len(d.split()) - 2 for d in dropped]) / 2  # share of size/colour words kept
    assert abs(share - 0.5) < 0.035  # 3 standard errors of 4,000 draws

    full = SyntheticCaptions("train", 50, seed=3, image_size=8)
    terse = SyntheticCaptions("train", 50, seed=3, image_size=8, drop_attributes=0.5)
    words = {"kept": 0, "all": 0}
    for i in range(50):
        a, b = full[i], terse[i]
        assert np.array_equal(_pixels(a), _pixels(b))  # same scene and image: only the words differ
        assert terse[i]["references"] == b["references"]  # fixed per item
        scene = full.scene(i)
        for ref in b["references"]:
            assert score_attributes(ref, scene)["precision"] == 1.0  # what it states is true
        words["kept"] += len(b["caption"].split()) - len(a["caption"].split()) + 2 * len(scene)
        words["all"] += 2 * len(scene)
    assert 0.35 < words["kept"] / words["all"] < 0.65
    with pytest.raises(ValueError, match="drop_attributes"):
        SyntheticCaptions("train", 5, drop_attributes=1.5)


def test_heldout_compositions_only_in_test():
    assert len(HELDOUT_PAIRS) == 4

    def pairs(scene):
        return {(o.colour, o.kind) for o in scene.objects}

    seen = set()
    for split in ("train", "val"):
        ds = SyntheticCaptions(split, 400, seed=0)
        for i in range(len(ds)):
            scene = ds.scene(i)
            assert not pairs(scene) & HELDOUT_PAIRS
            seen |= pairs(scene)
    # every colour and every kind does occur in training, only the pairs are new
    assert {c for c, _ in seen} == set(COLOURS) and {k for _, k in seen} == set(KINDS)
    test = SyntheticCaptions("test", 400, seed=0)
    heldout_seen = set()
    for i in range(len(test)):
        found = pairs(test.scene(i)) & HELDOUT_PAIRS
        assert found, f"test item {i} has no held-out pair"
        heldout_seen |= found
    assert heldout_seen == HELDOUT_PAIRS
    # generated scenes vary: all kinds, colours, sizes and object counts occur
    scenes = [test.scene(i) for i in range(400)]
    assert {len(s) for s in scenes} == {1, 2, 3}
    assert {o.size for s in scenes for o in s.objects} == set(SIZES)


def test_one_reference_per_epoch_is_deterministic():
    ds = SyntheticCaptions("train", 300, seed=5, image_size=8)
    again = SyntheticCaptions("train", 300, seed=5, image_size=8)
    multi = [i for i in range(300) if len(ds.scene(i)) > 1]
    assert len(multi) > 150
    assert ds[SampleKey(4, 0)]["caption"] == ds[4]["caption"]  # an int key is epoch 0
    changed = 0
    for i in multi:
        e0, e1 = ds[SampleKey(i, 0)]["caption"], ds[SampleKey(i, 1)]["caption"]
        assert e1 == again[SampleKey(i, 1)]["caption"]
        changed += e0 != e1
    assert 0.3 < changed / len(multi) < 0.7  # two readings, chosen independently per epoch
    with pytest.raises(IndexError):
        ds[300]


def test_generate_matches_dataset():
    scene, pixels = generate(9, "val", 11, 64)
    sample = SyntheticCaptions("val", 12, seed=9, image_size=64)[11]
    assert np.array_equal(pixels, _pixels(sample)) and sample["references"] == captions(scene)
    assert sample["id"] == "val-11"
