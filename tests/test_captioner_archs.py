"""Each real captioner config's LoRA targets exist in its architecture, built on the meta device.

The released checkpoints cannot be downloaded here; each family's configs.py (recon_ft.models.archs) writes their configs out.
On the meta device a 3.9B-parameter BLIP-2 takes no memory and builds in seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recon_ft.models.archs import captioner_arch
from recon_ft.models.lora import AdapterSpec, matches_target

CONF = Path(__file__).resolve().parents[1] / "conf" / "captioner"

# config -> (arch, model class, {component: modules its targets must hit, counted by hand})
CASES = {
    # 12 decoder layers x (self + cross attention) x (query, key, value)
    "blip_base": ("blip_base", "BlipForConditionalGeneration", {"text_decoder": 72}),
    "blip_large": ("blip_large", "BlipForConditionalGeneration", {"text_decoder": 72}),
    # Q-Former: 12 layers x self (query, value) + 6 cross-attention layers (every second) x 2 = 36;
    # OPT-2.7b: 32 layers x (q_proj, v_proj) = 64
    "blip2_opt": ("blip2_opt_2.7b", "Blip2ForConditionalGeneration", {"qformer": 36, "language_model": 64}),
    # Flan-T5-XL: encoder 24 x self (q, v) = 48, decoder 24 x (self + cross) x (q, v) = 96
    "blip2_flan_t5": ("blip2_flan_t5_xl", "Blip2ForConditionalGeneration", {"qformer": 36, "language_model": 144}),
    # 6 layers x (query, key, value)
    "git_base": ("git_base", "GitForCausalLM", {"git": 18}),
}


def _meta_model(arch: str, class_name: str):
    import transformers

    from recon_ft.models.blip2.model import untie_t5_lm_head

    with torch.device("meta"):
        model = getattr(transformers, class_name)(captioner_arch(arch))
        # as build_blip2 does: Flan-T5's lm_head is its own matrix (tie_word_embeddings: false)
        return untie_t5_lm_head(model) if class_name == "Blip2ForConditionalGeneration" else model


@pytest.mark.parametrize("config_name", sorted(CASES))
def test_lora_targets_exist_in_the_real_architecture(config_name):
    arch, class_name, expected = CASES[config_name]
    cfg = OmegaConf.load(CONF / f"{config_name}.yaml")
    spec = AdapterSpec.coerce(OmegaConf.to_container(cfg.adapter))
    model = _meta_model(arch, class_name)
    assert next(model.parameters()).device.type == "meta"
    hit = [n for n, m in model.named_modules() if n and matches_target(n, spec.target_modules)]
    per_component = {c: sum(n.split(".")[0] == c for n in hit) for c in expected}
    assert per_component == expected
    assert len(hit) == sum(expected.values())  # nothing outside the named components
    # every alternative of the regex's outer group names some module (no dead target)
    inner = re.fullmatch(r"\.\*\((.*)\)", spec.target_modules)
    alternatives = _split_top_level(inner.group(1)) if inner else [spec.target_modules]
    for alt in alternatives:
        assert any(re.fullmatch(f".*{alt}" if inner else alt, n) for n in hit), f"{alt!r} matches no module"

    from peft import inject_adapter_in_model

    with torch.device("meta"):
        inject_adapter_in_model(spec.lora_config(), model)
    lora_a = [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]
    assert len(lora_a) == len(hit)


def _split_top_level(pattern: str) -> list[str]:
    """'a.*(b|c)|d' -> ['a.*(b|c)', 'd']: the alternatives outside any parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(pattern):
        depth += (ch == "(") - (ch == ")")
        if ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
    return parts + [pattern[start:]]


def test_real_architecture_sizes():
    """Parameter counts (millions) of the written-out configs, so that an edit to one shows up here.
    BLIP base's 224M is the number the arch module's docstring gives; BLIP-2 Flan-T5-XL's 3942M and
    GIT large's 394M are the published checkpoints' (GIT's output layer is its own matrix, as
    published: 23.5M of the 394M)."""
    archs = {name: (arch, cls) for name, (arch, cls, _) in CASES.items()}
    archs["git_large"] = ("git_large", "GitForCausalLM")
    sizes = {name: round(sum(p.numel() for p in _meta_model(arch, cls).parameters()) / 1e6)
             for name, (arch, cls) in archs.items()}
    assert sizes == {"blip_base": 224, "blip_large": 446, "blip2_opt": 3745, "blip2_flan_t5": 3942, "git_base": 177,
                     "git_large": 394}


def test_unknown_arch_names_the_choices():
    with pytest.raises(ValueError, match="unknown arch 'blip3'.*blip2_opt_2.7b"):
        captioner_arch("blip3")
