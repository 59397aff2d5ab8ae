"""The zoo's CLIP (recon_ft.zoo.clip): its loss, its hard negatives, a deterministic build, the
save / load round trip, its cache key apart from the zoo's, and metrics=zoo in an evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from recon_ft.data.synthetic import Scene, Shape
from recon_ft.eval.features import ClipImageFeatures, ClipZeroShotLogits, zoo_clip_features, zoo_clip_fid_features
from recon_ft.utils import file_sha256
from recon_ft.zoo import get_recipe
from recon_ft.zoo.cache import clip_dir, ensure_clip
from recon_ft.zoo.clip import build_clip, contrastive_loss, load_clip
from recon_ft.zoo.scenes import perturb
from recon_ft.zoo.recipe import CLIP_RECIPES, get_clip_recipe


@pytest.fixture(scope="module")
def smoke_clip(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "smoke"
    return out, build_clip(get_clip_recipe("smoke"), out)


def test_contrastive_loss_by_hand():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # (B=2, D=2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 2 captions + 1 hard negative (= caption 0)
    positives = torch.tensor([[True, False, False], [False, True, False]])
    # logits [[1, 0, 1], [0, 1, 0]]; image -> text over 3 texts, text -> image over the 2 images
    per_image = (1 - math.log(2 * math.e + 1)) + (1 - math.log(math.e + 2))
    per_text = 2 * (1 - math.log(math.e + 1))
    expected = -(per_image / 2 + per_text / 2) / 2
    assert contrastive_loss(image, text, torch.tensor(1.0), positives).item() == pytest.approx(expected, rel=1e-6)
    # text 2 describes image 0's scene too: its probability mass counts as a hit
    positives[0, 2] = True
    per_image = (math.log(2 * math.e) - math.log(2 * math.e + 1)) + (1 - math.log(math.e + 2))
    expected = -(per_image / 2 + per_text / 2) / 2
    assert contrastive_loss(image, text, torch.tensor(1.0), positives).item() == pytest.approx(expected, rel=1e-6)


def test_perturb_changes_one_attribute():
    scene = Scene((Shape("circle", "red", "small"), Shape("star", "blue", "large")))
    rng = torch.Generator().manual_seed(0)
    for attribute in ("colour", "kind", "size"):
        for _ in range(10):
            new = perturb(scene, attribute, rng)
            changed = [(a, b) for a, b in zip(scene.objects, new.objects) if a != b]
            assert len(new) == 2 and len(changed) == 1
            a, b = changed[0]
            assert getattr(a, attribute) != getattr(b, attribute)
            assert {f for f in ("colour", "kind", "size") if getattr(a, f) != getattr(b, f)} == {attribute}
    counts = {len(perturb(scene, "count", rng)) for _ in range(20)}
    assert counts == {1, 3}
    assert {len(perturb(Scene(scene.objects[:1]), "count", rng)) for _ in range(5)} == {2}


def test_clip_key_is_apart_from_the_zoos():
    clip, zoo = get_clip_recipe("default"), get_recipe("default")
    assert clip.key.startswith("clip-default-") and clip.key != zoo.key
    assert clip_dir(clip).parent.name == "zoo"
    changed = CLIP_RECIPES["default"].__class__(steps=clip.steps + 1)
    assert changed.key != clip.key
    with pytest.raises(ValueError, match="zoo CLIP recipe 'nope' is unknown"):
        get_clip_recipe("nope")


def test_smoke_build_is_deterministic_and_round_trips(smoke_clip, tmp_path):
    out, record = smoke_clip
    assert sorted(p.name for p in out.iterdir()) == ["clip.json", "model.safetensors"]
    assert json.loads((out / "clip.json").read_text()) == json.loads(json.dumps(record))
    assert record["key"] == get_clip_recipe("smoke").key
    assert set(record["validation"]) >= {"retrieval_top1", "zero_shot_colour", "zero_shot_count",
                                         "clip_score_matched", "clip_score_mismatched"}
    first = load_file(str(out / "model.safetensors"))
    again = tmp_path / "again"
    build_clip(get_clip_recipe("smoke"), again)
    second = load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    model, tokenizer, loaded = load_clip(out)
    assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    assert not torch.equal(first["visual.conv1.weight"], load_clip_init(loaded)["visual.conv1.weight"])
    feats = zoo_clip_features(out)
    assert feats.random is False and feats.image_size == 32
    assert feats.description == f"zoo CLIP {record['key']} (trained on the synthetic benchmark)"
    images = torch.rand(3, 3, 64, 64)
    expected = torch.nn.functional.normalize(model.encode_text(tokenizer(["a small red circle"])), dim=-1)
    assert torch.allclose(feats.encode_text(["a small red circle"]), expected)
    assert feats.encode_image(images).shape == (3, 32)

    fid = zoo_clip_fid_features("image", out)
    assert isinstance(fid, ClipImageFeatures) and fid.num_features == 32 and fid(images).shape == (3, 32)
    classes = zoo_clip_fid_features("classes", out)
    assert isinstance(classes, ClipZeroShotLogits) and classes.num_features == 24
    assert classes(images).shape == (3, 24)
    assert "zero-shot over 24 colour-kind classes" in classes.description and record["key"] in fid.description
    with pytest.raises(ValueError, match="kind must be 'image' or 'classes'"):
        zoo_clip_fid_features("inception", out)


def load_clip_init(record):
    from recon_ft.zoo.clip import build_clip_model

    return build_clip_model(record["model_config"], record["recipe"]["seed"])[0].state_dict()


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no clip.json"):
        load_clip(tmp_path)


def test_metrics_zoo_is_evals_default_and_scores_with_the_zoo_clip(cfg_eval):
    from recon_ft.eval.pipeline import evaluate
    from tests.test_eval_pipeline import FAST

    key = get_clip_recipe("smoke").key
    cfg = cfg_eval(*(o for o in FAST if o != "metrics=tiny"))  # no metrics= override: the default
    assert cfg.metrics.clip._target_ == "recon_ft.eval.features.zoo_clip_features"
    metrics = evaluate(cfg)
    assert ensure_clip() == clip_dir(get_clip_recipe("smoke"))  # built on first use, into the test cache
    assert OmegaConf.create({"p": "${zoo:clip}"}).p == str(clip_dir(get_clip_recipe("smoke")))
    assert metrics["extractors/clip"] == f"zoo CLIP {key} (trained on the synthetic benchmark)"
    assert metrics["extractors/fid"] == f"image tower of zoo CLIP {key} (trained on the synthetic benchmark)"
    # the very network: its key and its weights file's sha256, one for all three views of the CLIP
    weights = file_sha256(clip_dir(get_clip_recipe("smoke")) / "model.safetensors")
    assert {metrics[f"extractors/{n}_key"] for n in ("clip", "fid", "inception_score")} == {key}
    assert {metrics[f"extractors/{n}_sha256"] for n in ("clip", "fid", "inception_score")} == {weights}
    assert metrics["extractors/random"] is False
    # The smoke CLIP barely trained, but its matched cosines are positive, so CLIPScore varies over
    # the T2I2T images (the tiny random CLIP's are clipped to 0: a constant, a null Spearman).
    assert isinstance(metrics["t2i2t/spearman_clip_sbert"], float)
    assert metrics["gen/clip_score"] > 0
