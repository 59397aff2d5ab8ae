"""The default zoo's CLIP ships with the package: a metric extractor must be the same network on
every machine (a build differs slightly between machines, and so would every CLIP number). First
use copies it into the cache and never trains one; metrics.json records its key and the sha256 of
its weights; the package data carries it."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest

from recon_ft.utils import file_sha256
from recon_ft.zoo import cache
from recon_ft.zoo.recipe import get_clip_recipe

ROOT = Path(__file__).resolve().parents[1]
# The shipped CLIP's model.safetensors, as `sha256sum` prints it (docs/zoo.md cites it). Changing
# the shipped CLIP changes every CLIP number: it takes a new hash here, in the docs and in results.
SHIPPED_CLIP_KEY = "clip-default-69e646a8bb27"
SHIPPED_CLIP_SHA256 = "8aaa4ac50bd0dc08ffe5e2aa92c99c74f2652406435164f8659215772c763bf5"
PACKAGE_DATA_LIMIT = 40 * 10**6  # bytes: the package's data may grow to 40 MB


def no_build(*args, **kwargs):
    raise AssertionError("a model was built where the shipped one should have been installed")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A fresh, empty cache of the default recipe, in which any zoo or CLIP build fails."""
    from recon_ft.zoo import build as build_module
    from recon_ft.zoo import clip as clip_module
    from recon_ft.zoo import family_build

    monkeypatch.setenv("RECON_FT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECON_FT_ZOO", "default")
    monkeypatch.setattr(clip_module, "build_clip", no_build)
    monkeypatch.setattr(build_module, "build_zoo", no_build)
    monkeypatch.setattr(family_build, "build_family", no_build)
    return tmp_path / "cache"


def test_the_shipped_clip_is_the_default_recipes_with_its_recorded_hash():
    recipe = get_clip_recipe("default")
    shipped = cache.shipped_clip_dir(recipe)
    assert recipe.key == SHIPPED_CLIP_KEY and shipped == cache.SHIPPED_ROOT / SHIPPED_CLIP_KEY
    assert sorted(p.name for p in shipped.iterdir()) == ["clip.json", "model.safetensors"]
    record = json.loads((shipped / "clip.json").read_text())
    assert record["key"] == recipe.key and record["recipe"] == recipe.to_dict()
    assert record["model_config"] == recipe.model_config()
    assert file_sha256(shipped / "model.safetensors") == SHIPPED_CLIP_SHA256
    # the shipped build's own validation (docs/zoo.md quotes it): a trained CLIP, not a random one
    assert record["validation"]["retrieval_top1"] > 0.9 and record["validation"]["clip_score_matched"] > 90
    assert cache.shipped_clip_dir(get_clip_recipe("smoke")) is None  # other recipes still build
    for doc in ("docs/zoo.md", "docs/metrics.md"):  # the hash a reader checks metrics.json against
        assert SHIPPED_CLIP_SHA256 in (ROOT / doc).read_text(), doc


def test_first_use_installs_the_shipped_clip_and_trains_none(empty_cache, capsys):
    from recon_ft.eval.features import zoo_clip_features
    from recon_ft.eval.identity import identity

    directory = cache.ensure_clip()
    assert directory == empty_cache / "zoo" / SHIPPED_CLIP_KEY
    assert not directory.with_name(SHIPPED_CLIP_KEY + ".partial").exists()
    shipped = cache.SHIPPED_ROOT / SHIPPED_CLIP_KEY
    for name in ("clip.json", "model.safetensors"):
        assert (directory / name).read_bytes() == (shipped / name).read_bytes(), name
    err = capsys.readouterr().err
    assert f"Installing the zoo's CLIP 'default' (eval's metric extractor) shipped with recon_ft into {directory}" in err
    assert f"model.safetensors sha256 {SHIPPED_CLIP_SHA256}" in err
    # found the second time: nothing copied or said again
    stamp = (directory / "model.safetensors").stat().st_mtime_ns
    assert cache.ensure_clip() == directory and "Installing" not in capsys.readouterr().err
    assert (directory / "model.safetensors").stat().st_mtime_ns == stamp
    # what metrics=zoo loads: the installed copy, whose hash is the shipped one
    feats = zoo_clip_features()
    assert feats.key == SHIPPED_CLIP_KEY and Path(feats.weights_file) == directory / "model.safetensors"
    assert identity(feats) == {"key": SHIPPED_CLIP_KEY, "sha256": SHIPPED_CLIP_SHA256}


def test_a_zoo_build_installs_a_shipped_clip_instead_of_training_one(tmp_path, monkeypatch):
    """A zoo built from scratch (no shipped zoo) still takes the shipped CLIP of its recipe, as the
    build_clip step of its build."""
    from recon_ft.zoo import clip as clip_module

    recipe = get_clip_recipe("default")
    monkeypatch.setenv("RECON_FT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(clip_module, "build_clip", no_build)
    step = cache.build_clip_once(recipe, cache.clip_dir(recipe), None, shipped=cache.shipped_clip_dir(recipe))
    assert file_sha256(step / "model.safetensors") == SHIPPED_CLIP_SHA256
    # without a shipped copy (python -m recon_ft.zoo --out DIR) it trains
    with pytest.raises(AssertionError, match="was built"):
        cache.build_clip_once(recipe, tmp_path / "out" / "clip")


def test_first_eval_on_an_empty_cache_builds_nothing_and_records_the_clips_hash(empty_cache, tmp_path):
    """`python eval.py` on an empty cache (default recipe, few items): the zoo and its CLIP are
    installed, nothing is built, metrics.json names the CLIP by key and sha256, for CLIPScore,
    FID and IS alike, and SBERT by its weights' sha256, and its CLIP numbers are the pinned ones."""
    from recon_ft.eval.features import sbert_model_path
    from recon_ft.eval.pipeline import evaluate
    from tests.conftest import compose_eval
    from tests.test_eval_pipeline import FAST

    out = tmp_path / "eval"
    metrics = evaluate(compose_eval(out, *(o for o in FAST if o != "metrics=tiny"), "limit=2", "batch_size=2"))
    installed = empty_cache / "zoo" / SHIPPED_CLIP_KEY / "model.safetensors"
    assert file_sha256(installed) == SHIPPED_CLIP_SHA256
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("clip", "fid", "inception_score"):
        assert metrics[f"extractors/{name}_key"] == SHIPPED_CLIP_KEY, name
        assert metrics[f"extractors/{name}_sha256"] == SHIPPED_CLIP_SHA256, name
    assert metrics["extractors/random"] is False
    # The numbers themselves, as measured where the CLIP was shipped: the zoo's generator samples the
    # same images from the same seeds and the same CLIP scores them; the tolerances keep the digits
    # eval prints (78.64, 0.8257) and allow float32 sums that differ in the last bits between CPUs.
    assert metrics["gen/clip_score"] == pytest.approx(78.6427, abs=0.002)
    assert metrics["gen/clip_i"] == pytest.approx(0.825734, abs=2e-5)
    assert metrics["extractors/sbert_key"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metrics["extractors/sbert_sha256"] == file_sha256(sbert_model_path() / "model.safetensors")


def test_the_shipped_clip_scores_fixed_items_as_pinned_on_every_machine():
    """The same network gives the same numbers: its CLIPScore and CLIP-I on four rendered val items
    (integer pixels, identical everywhere) against the values it gave where it was shipped. A
    different CPU may move float32 sums in the last bits, so the pin holds to 1e-3 on CLIPScore's
    0-100 scale (eval reports two decimals) and 1e-5 on cosines; anything more is a different
    extractor, and every CLIP number of the benchmark would move with it."""
    import torch

    from recon_ft.data.synthetic import captions, generate
    from recon_ft.eval.features import zoo_clip_features
    from recon_ft.eval.metrics import clip_i, clip_score

    clip = zoo_clip_features(cache.SHIPPED_ROOT / SHIPPED_CLIP_KEY)
    items = [generate(0, "val", i, 64) for i in range(4)]
    images = torch.stack([torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 for _, pixels in items])
    texts = [captions(scene)[0] for scene, _ in items]
    assert texts[0] == "a large orange square left of a small orange star"
    assert clip_score(clip, images, texts).tolist() == pytest.approx([90.6929, 96.7942, 97.9938, 95.7491], abs=1e-3)
    # each image with the next one's caption: lower, two of them clamped at 0
    assert clip_score(clip, images, texts[1:] + texts[:1]).tolist() == pytest.approx([74.9031, 0.0, 0.0, 87.982],
                                                                                     abs=1e-3)
    assert clip_i(clip, images, images.roll(1, 0)).tolist() == pytest.approx(
        [0.937646, 0.833056, -0.028364, -0.147471], abs=1e-5)


def test_package_data_carries_the_shipped_clip_within_the_limit():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["recon_ft.zoo"]
    package = ROOT / "recon_ft" / "zoo"
    matched = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    for name in ("clip.json", "model.safetensors"):
        assert package / "shipped" / SHIPPED_CLIP_KEY / name in matched, name
    # the installed package finds it where the cache looks
    resource = importlib.resources.files("recon_ft.zoo").joinpath("shipped", SHIPPED_CLIP_KEY, "model.safetensors")
    assert resource.is_file() and Path(str(resource)) == cache.SHIPPED_ROOT / SHIPPED_CLIP_KEY / "model.safetensors"
    total = sum(p.stat().st_size for p in (package / "shipped").rglob("*") if p.is_file())
    assert total <= PACKAGE_DATA_LIMIT, f"shipped data {total / 1e6:.1f} MB"
