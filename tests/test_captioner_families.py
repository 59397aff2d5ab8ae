"""Every captioner family trains with the losses unchanged and captions an evaluation item.

For each family's tiny config (conf/captioner/tiny_*.yaml) with the tiny Stable Diffusion: one joint
step with all four terms (both cycles), gradients on the captioner's LoRA parameters in each
targeted part, the interface's alignment (position i predicts token i + 1), and captions from the
evaluation's beam search and seeded sampling.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recon_ft.eval.captioning import CaptionSettings, beam_captions, sample_captions
from recon_ft.models.sd import build_stable_diffusion
from recon_ft.training.module import ReconModule
from recon_ft.method.objective import compute_losses
from tests.conftest import UNET_ADAPTER, fake_batch

CONF = Path(__file__).resolve().parents[1] / "conf" / "captioner"
# config -> the model's parts whose LoRA parameters must get a gradient from the joint step
FAMILIES = {
    "tiny_blip": ("text_decoder", "vision_model"),
    "tiny_git": ("git.encoder", "git.image_encoder"),
    "tiny_blip2_opt": ("language_model", "qformer", "vision_model"),
    "tiny_blip2_flan_t5": ("language_model", "qformer", "vision_model"),
}


def build_captioner(name: str):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    cfg.pop("defaults")
    cfg.save_base_to = None
    return instantiate(cfg)


@pytest.fixture(scope="module")
def generator():
    return build_stable_diffusion(tiny={"sample_size": 32}, unet_adapter=UNET_ADAPTER)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_joint_step_trains_the_captioner_lora_and_eval_captions(name, generator):
    torch.manual_seed(0)
    captioner = build_captioner(name)
    module = ReconModule(captioner, generator, loss=dict(lambda_img=1.0, lambda_txt=1.0))
    batch = fake_batch(captioner, generator, b=2)
    out = compute_losses(captioner, generator, module.bridge, batch, module.loss_cfg)
    assert sorted(k for k in out if k.startswith("loss_")) == ["loss_cap", "loss_gen", "loss_i2t2i", "loss_t2i2t"]
    assert all(torch.isfinite(v) for v in out.values())
    assert 0 < float(out["bridge_mass"]) <= 1
    for p in module.parameters():
        p.grad = None
    out["loss"].backward()
    lora = {n: p for n, p in captioner.model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    for part in FAMILIES[name]:
        got = [n for n, p in lora.items() if n.startswith(part) and p.grad is not None and p.grad.abs().sum() > 0]
        assert got, f"no LoRA gradient reached {part}"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.unet.parameters() if p.requires_grad)

    # one optimizer step changes the adapters
    before = {n: p.detach().clone() for n, p in lora.items()}
    torch.optim.SGD(lora.values(), lr=0.1).step()
    assert any(not torch.equal(before[n], p) for n, p in lora.items())

    # one evaluation item: a beam caption and two seeded samples, also under another prompt
    captioner.eval()
    pixel_values = batch["image_cap"][:1]
    s = CaptionSettings(max_length=12, min_length=6)
    beam = beam_captions(captioner, pixel_values, s)
    samples = sample_captions(captioner, pixel_values, ids=[7], n=2, s=s, seed=0)
    # (random weights may pick special tokens, which decode to nothing: the count is what is checked)
    assert len(beam) == 1 and isinstance(beam[0], str) and len(samples) == 1 and len(samples[0]) == 2
    assert sample_captions(captioner, pixel_values, ids=[7], n=2, s=s, seed=0) == samples  # seeded
    p_len = captioner.prompt_length
    assert beam_captions(captioner, pixel_values, CaptionSettings(max_length=12, min_length=6, prompt="a photo of "))
    assert captioner.prompt_length == p_len  # the training prompt is back


@pytest.mark.parametrize("name", ["tiny_git", "tiny_blip2_opt", "tiny_blip2_flan_t5"])
def test_logits_position_i_predicts_token_i_plus_1(name):
    """Greedy decoding's first caption token is the argmax of the teacher-forced logits at position
    P - 1, and its second the argmax at P when the first is fed back: the alignment the losses use."""
    torch.manual_seed(0)
    captioner = build_captioner(name).eval()
    pixel_values = captioner.preprocess(torch.rand(1, 3, 32, 32) * 2 - 1)
    p = captioner.prompt_length
    captioner.generate(pixel_values, num_beams=1, max_length=p + 2, min_length=p + 2)
    generated = captioner.last_ids[:, :2]  # (1, 2): greedy's first two caption tokens
    tokens = captioner.tokenize(["red circle"])
    tokens.input_ids = torch.cat([tokens.input_ids[:, :p], generated], 1)  # prompt positions + them
    tokens.attention_mask = torch.ones_like(tokens.input_ids)
    logits = captioner.logits(pixel_values, tokens)
    assert logits.shape == (1, p + 2, len(captioner.tokenizer))
    assert logits[0, p - 1 : p + 1].argmax(-1).tolist() == generated[0].tolist()
    tokens = captioner.tokenize(["red circle"])
    # the labels: -100 on the P prompt positions, the caption and its end token after them
    assert (tokens.labels[0, :p] == -100).all() and tokens.labels[0, -1] == captioner.eos_token_id


def test_blip2_prompt_and_caption_tokens():
    """OPT: </s> prompt caption </s>, the caption's first word with its space ("Ġred"); T5: the
    prompt goes to the encoder, the decoder reads <pad> caption </s>."""
    opt = build_captioner("tiny_blip2_opt")
    tok = opt.tokenize(["red circle"])
    assert opt.tokenizer.convert_ids_to_tokens(tok.input_ids[0]) == [
        "</s>", "a", "Ġpict", "ure", "Ġof", "Ġred", "Ġcircle", "</s>"]
    assert opt.prompt_length == 5
    t5 = build_captioner("tiny_blip2_flan_t5")
    tok = t5.tokenize(["red circle", "a star"])
    assert [t5.tokenizer.convert_ids_to_tokens(r) for r in tok.input_ids] == [
        ["<pad>", "▁red", "▁circle", "</s>"], ["<pad>", "▁a", "▁star", "</s>"]]
    assert t5.prompt_length == 1 and tok.labels[0].tolist()[0] == -100
    enc = t5._encoder_ids(1, "cpu")[0]
    assert t5.tokenizer.convert_ids_to_tokens(enc)[4:] == ["▁a", "▁picture", "▁of", "</s>"]  # after 4 queries
