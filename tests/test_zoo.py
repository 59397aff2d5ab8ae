"""The synthetic model zoo: recipes, the build's outputs, and the round trip through `pretrained=<dir>`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recon_ft.models.blip import build_blip
from recon_ft.models.sd import build_stable_diffusion
from recon_ft.zoo import RECIPES, ensure_zoo, get_recipe
from recon_ft.zoo.build import build_models, build_zoo
from recon_ft.zoo.data import render_split
from recon_ft.zoo.pretrain import grammar_token_ids
from tests.conftest import compose_train


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "smoke"
    record = build_zoo(get_recipe("smoke"), out)
    return out, record


def test_recipe_key_changes_with_every_field():
    base = RECIPES["default"]
    assert base.key.startswith("default-") and len(base.key) == len("default-") + 12
    assert dataclasses.replace(base, seed=1).key != base.key
    changed = dataclasses.replace(base, unet=dataclasses.replace(base.unet, steps=base.unet.steps + 1))
    assert changed.key != base.key
    assert dataclasses.replace(base).key == base.key
    with pytest.raises(ValueError, match="zoo recipe 'nope' is unknown"):
        get_recipe("nope")


def test_rendered_split_matches_the_dataset():
    from recon_ft.data.synthetic import SyntheticCaptions

    data = render_split("train", 5, seed=3, size=32)
    ds = SyntheticCaptions("train", 5, seed=3, image_size=32)
    for i in range(5):
        assert torch.equal(data.images[i].permute(1, 2, 0), torch.from_numpy(np.array(ds[i]["image"])))
        assert data.references[i] == ds[i]["references"]
    images, texts, index = data.batch(torch.Generator().manual_seed(0), 7, size=16)
    assert images.shape == (7, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert [t in data.references[i] for t, i in zip(texts, index.tolist())] == [True] * 7


def test_grammar_token_ids_are_the_captions_tokens():
    from recon_ft.models.tokenizers import blip_tokenizer

    tok = blip_tokenizer()
    ids = grammar_token_ids(tok)
    words = tok.convert_ids_to_tokens(ids.tolist())
    # every grammar word is one WordPiece token: 4 kinds, 2 sizes, 6 colours, a/left/right/of, and [SEP]
    from recon_ft.data.synthetic import COLOURS, KINDS, SIZES

    assert sorted(words) == sorted(["[SEP]", "a", "left", "right", "of", *KINDS, *SIZES, *COLOURS])


def test_build_writes_standard_formats(smoke_zoo):
    out, record = smoke_zoo
    assert (out / "captioner" / "config.json").is_file() and (out / "captioner" / "processor_config.json").is_file()
    assert (out / "generator" / "model_index.json").is_file()
    assert not out.with_name("smoke.partial").exists()
    saved = json.loads((out / "zoo.json").read_text())
    assert saved["recipe"] == get_recipe("smoke").to_dict()
    assert set(saved["curves"]) == {"vae", "unet", "captioner"}
    assert len(saved["curves"]["unet"]) == 2  # steps 0 and 2 of 3 (logged every 50 and at the end)
    assert set(saved["competence"]) >= {"caption_exact", "gen_colour", "gen_count", "vae_psnr_test"}


def test_round_trip_through_pretrained_dir(smoke_zoo):
    """The saved models load back through the same builders as real checkpoints, weights equal to
    a rebuild from the same recipe and seed (the build is deterministic)."""
    out, record = smoke_zoo
    captioner = build_blip(pretrained=str(out / "captioner"), adapter={"mode": "frozen"})
    generator = build_stable_diffusion(pretrained=str(out / "generator"), unet_adapter={"mode": "frozen"})
    assert generator.latent_scale == pytest.approx(record["latent_scaling_factor"])
    assert captioner.image_size == get_recipe("smoke").captioner.image_size
    assert generator.image_size == get_recipe("smoke").generator_size

    again = out.with_name("again")
    build_zoo(get_recipe("smoke"), again)
    captioner2 = build_blip(pretrained=str(again / "captioner"), adapter={"mode": "frozen"})
    generator2 = build_stable_diffusion(pretrained=str(again / "generator"), unet_adapter={"mode": "frozen"})
    for a, b in ((captioner.model, captioner2.model), (generator.unet, generator2.unet),
                 (generator.vae, generator2.vae), (generator.text_encoder, generator2.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # and the training moved the weights away from the random init
    fresh, _ = build_models(get_recipe("smoke"))
    init = fresh.model.state_dict()
    assert not torch.equal(captioner.model.state_dict()["text_decoder.bert.embeddings.word_embeddings.weight"],
                           init["text_decoder.bert.embeddings.word_embeddings.weight"])


def test_resolver_builds_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_FT_CACHE", str(tmp_path))
    monkeypatch.setenv("RECON_FT_ZOO", "smoke")
    cfg = compose_train(tmp_path / "run")
    path = Path(OmegaConf.to_container(cfg.captioner, resolve=True)["pretrained"])
    assert path == tmp_path / "zoo" / get_recipe("smoke").key / "captioner"
    assert (path / "config.json").is_file()
    stamp = (path.parent / "zoo.json").stat().st_mtime_ns
    assert ensure_zoo() == path.parent  # found, not rebuilt
    assert (path.parent / "zoo.json").stat().st_mtime_ns == stamp
    assert Path(OmegaConf.to_container(cfg.generator, resolve=True)["pretrained"]) == path.parent / "generator"


def test_first_use_installs_a_shipped_zoo_instead_of_building(smoke_zoo, tmp_path, monkeypatch):
    """A zoo shipped with the package (recon_ft/zoo/shipped/<key>) is copied into the cache on
    first use, whole, and never rebuilt; a recipe without a shipped zoo still builds."""
    from recon_ft.zoo import build as build_module
    from recon_ft.zoo import cache

    out, _ = smoke_zoo
    key = get_recipe("smoke").key
    shipped = tmp_path / "shipped"
    import shutil

    shutil.copytree(out, shipped / key)
    monkeypatch.setattr(cache, "SHIPPED_ROOT", shipped)
    monkeypatch.setenv("RECON_FT_CACHE", str(tmp_path / "cache"))

    def no_build(*args, **kwargs):
        raise AssertionError("a shipped zoo was rebuilt")

    monkeypatch.setattr(build_module, "build_zoo", no_build)
    directory = ensure_zoo("smoke")
    assert directory == tmp_path / "cache" / "zoo" / key and not directory.with_name(key + ".partial").exists()
    for name in ("captioner/model.safetensors", "generator/unet/diffusion_pytorch_model.safetensors", "zoo.json"):
        assert (directory / name).read_bytes() == (out / name).read_bytes(), name
    # a shipped directory of another key (a changed recipe) is not used
    shutil.move(shipped / key, shipped / "smoke-000000000000")
    monkeypatch.setenv("RECON_FT_CACHE", str(tmp_path / "cache2"))
    with pytest.raises(AssertionError, match="rebuilt"):
        ensure_zoo("smoke")


def test_the_shipped_default_zoo_is_the_default_recipes_and_meets_its_targets():
    """The package ships the default recipe's zoo (its UNet schedule is too long for a first-use
    build): the same recipe and key, the commit that built it, safetensors within 30 MB, and the
    build summary's competence at or above every target."""
    from recon_ft.zoo.cache import load_record, shipped_dir
    from recon_ft.zoo.competence import TARGETS

    recipe = RECIPES["default"]
    directory = shipped_dir(recipe)
    assert directory is not None, f"recon_ft/zoo/shipped/{recipe.key} is missing"
    record = load_record(directory)
    assert record["key"] == recipe.key and record["recipe"] == recipe.to_dict()
    assert record["commit"] and set(record["versions"]) == {"torch", "transformers", "diffusers"}
    assert sum(p.stat().st_size for p in directory.rglob("*.safetensors")) <= 30 * 2**20
    summary = record["competence"]
    assert all(summary[name] >= target for name, target in TARGETS.items()), summary
    assert build_blip(pretrained=str(directory / "captioner"), adapter={"mode": "frozen"}) is not None


def test_default_run_finetunes_the_zoo_and_summarizes(tmp_path, capsys, cfg_train):
    """The default config (here with the smoke recipe) trains LoRA on the zoo models loaded from
    their directories, validates the base models first, and ends with the run's summary."""
    from recon_ft.training.run import train

    final = train(cfg_train(
        "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
        "data.train.size=16", "data.val.size=4", "data.batch_size=4", "callbacks.model_checkpoint.every_n_train_steps=2",
    ))
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert Path(saved.captioner.pretrained) == Path(ensure_zoo()) / "captioner"
    assert not (tmp_path / "base").exists()  # the base models are the zoo's directories
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the base validation ran before training, on the same 4 items: the same keys as the final one
    assert {k for k in summary["base"] if k.startswith("val/")} == {k for k in final if k.startswith("val/")}
    assert summary["best"]["monitor"] == "val/cider_bleu4"
    assert Path(summary["best"]["path"]) == tmp_path / "checkpoints" / "best.ckpt"
    out = capsys.readouterr().out
    assert f"run finished: {tmp_path}" in out and f"next: python eval.py run_dir={tmp_path}" in out
    assert "val/caption_exact" in out
