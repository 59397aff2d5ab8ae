"""The vocabulary bridge's coverage of each pair, from the two models' tokenizers alone.

The bridge is the one training builds (recon_ft.training.module: VocabBridge.from_tokenizers(captioner's,
generator's first tokenizer)). A pretrained model's tokenizer is read from its directory (no
weights are loaded); a random-init config builds its model.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from recon_ft.constants import CONF_DIR

FROZEN = {"mode": "frozen"}


def pair_configs(captioner: str, generator: str, overrides: list[str] = ()):
    """(captioner config, generator config) of eval.py's composition for the pair."""
    models = [o for o in overrides if o.split("=")[0].split(".")[0].lstrip("+~") in ("captioner", "generator")]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"captioner={captioner}", f"generator={generator}", *models])
    return cfg.captioner, cfg.generator


def captioner_tokenizer(cfg):
    if cfg.get("pretrained"):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(cfg.pretrained).tokenizer
    return instantiate(cfg, adapter=FROZEN, save_base_to=None).tokenizer


def generator_tokenizer(cfg):
    if cfg.get("pretrained"):
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(cfg.pretrained, subfolder="tokenizer")
    return instantiate(cfg, unet_adapter=FROZEN, text_encoder_adapter=FROZEN, save_base_to=None).tokenizer


def bridge_coverage(captioner_tok, generator_tok, fallback: str = "pieces") -> dict:
    """VocabBridge.coverage() of the pair and the two tokenizer conventions."""
    from recon_ft.method.bridge import VocabBridge
    from recon_ft.method.tokens import detect_style

    bridge = VocabBridge.from_tokenizers(captioner_tok, generator_tok, fallback=fallback)
    return {"captioner_style": detect_style(captioner_tok), "generator_style": detect_style(generator_tok),
            **bridge.coverage()}


def pair_coverage(captioner: str, generator: str, out: Path, overrides: list[str] = ()) -> dict:
    """The pair's coverage, computed once and kept in `out` (bridge.json)."""
    if out.is_file():
        return json.loads(out.read_text())
    c_cfg, g_cfg = pair_configs(captioner, generator, overrides)
    coverage = bridge_coverage(captioner_tokenizer(c_cfg), generator_tokenizer(g_cfg))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(coverage, indent=1) + "\n")
    return coverage
