"""BLIP's vision attention through SDPA: the same function, gradients and parameters as eager."""

from __future__ import annotations

import pytest
import torch

from recon_ft.models.attention import set_blip_attention
from recon_ft.models.blip import build_blip
from tests.conftest import CAPTIONER_ADAPTER

VISION_LORA = {**CAPTIONER_ADAPTER, "target_modules": r".*(text_decoder.*\.(query|value)|vision_model.*\.qkv)"}


def logits_and_grads(attention: str):
    captioner = build_blip(tiny={"image_size": 32}, adapter=VISION_LORA, attention=attention, init_seed=3)
    torch.manual_seed(0)
    for name, p in captioner.named_parameters():  # non-zero LoRA B, so the vision LoRA matters
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens = captioner.tokenize(["a red circle", "a large blue square left of a star", "a star"])
    logits = captioner.logits(captioner.preprocess(images), tokens)
    logits.logsumexp(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in captioner.named_parameters() if p.requires_grad}
    return captioner, logits.detach(), grads


def test_sdpa_vision_attention_equals_eager():
    sdpa, logits_sdpa, grads_sdpa = logits_and_grads("sdpa")
    eager, logits_eager, grads_eager = logits_and_grads("eager")
    kinds = {type(m).__name__ for m in sdpa.model.vision_model.modules()}
    assert "SdpaBlipAttention" in kinds and "BlipAttention" not in kinds
    assert "SdpaBlipAttention" not in {type(m).__name__ for m in eager.model.modules()}
    assert sdpa.model.state_dict().keys() == eager.model.state_dict().keys()
    torch.testing.assert_close(logits_sdpa, logits_eager, rtol=1e-4, atol=1e-5)
    assert any("vision_model" in n for n in grads_sdpa)
    for name in grads_eager:
        torch.testing.assert_close(grads_sdpa[name], grads_eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_switching_back_and_bad_names():
    captioner = build_blip(tiny={"image_size": 32}, attention="sdpa")
    layers = captioner.model.config.vision_config.num_hidden_layers
    assert set_blip_attention(captioner.model, "eager") == layers
    assert set_blip_attention(captioner.model, "eager") == 0
    with pytest.raises(ValueError, match="captioner.attention"):
        set_blip_attention(captioner.model, "flash")
