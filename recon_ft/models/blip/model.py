"""BLIP (BlipForConditionalGeneration) behind the captioner interface (recon_ft.models.captioner):
the captioner class and its builder. Configs: recon_ft.models.blip.configs, conf/captioner/blip_*.yaml
and tiny_blip.yaml."""

from __future__ import annotations

import torch
from torch import nn

from recon_ft.models.attention import set_blip_attention
from recon_ft.models.blip.configs import ARCHS, tiny_blip_config
from recon_ft.models.captioner import Captioner, CaptionTokens, blip_image_processor, finish_build, load_or_init
from recon_ft.models.lora import AdapterSpec, critic_call


class BlipCaptioner(Captioner):
    """BLIP (BlipForConditionalGeneration): a ViT and a BERT text decoder that cross-attends to it.

    input_ids are [DEC] prompt caption [SEP] [PAD]...; BLIP's WordPiece tokenizer drops spaces, so
    the prompt and the caption are tokenized together.
    """

    def __init__(self, model, processor, prompt: str = "a picture of ", max_length: int = 40):
        super().__init__(model, processor, prompt=prompt, max_length=max_length)
        text_config = model.config.text_config
        self.bos_token_id = text_config.bos_token_id
        self.eos_token_id = text_config.sep_token_id  # BLIP ends captions with [SEP]
        self.pad_token_id = text_config.pad_token_id
        self.prompt = prompt

    def _prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt).input_ids) - 1  # [DEC] + prompt, without the trailing [SEP]

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, captions: list[str], device=None) -> CaptionTokens:
        enc = self.tokenizer(
            [self.prompt + c for c in captions],
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = enc.input_ids.clone()
        input_ids[:, 0] = self.bos_token_id  # BLIP decodes from [DEC], not [CLS]
        labels = input_ids.masked_fill(enc.attention_mask == 0, -100)
        labels[:, : self.prompt_length] = -100
        tokens = CaptionTokens(input_ids, enc.attention_mask, labels, self.prompt_length)
        return tokens.to(device) if device is not None else tokens

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_decoder.get_input_embeddings()

    # -- forward --------------------------------------------------------------------------------
    def logits(self, pixel_values: torch.Tensor, tokens: CaptionTokens, critic: bool = False) -> torch.Tensor:
        """Teacher-forced logits (B, L, V); logits[:, i] predicts tokens.input_ids[:, i + 1].

        `critic=True` runs with the adapters detached (the captioner judges the generator's images
        in the text cycle without learning from that term).
        """
        kwargs = dict(pixel_values=pixel_values, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        out = critic_call(self.model, **kwargs) if critic else self.model(**kwargs)
        return out.logits

    def _generation_inputs(self, pixel_values: torch.Tensor) -> dict:
        b = pixel_values.shape[0]
        return {"input_ids": self.tokenizer([self.prompt] * b, return_tensors="pt").input_ids.to(pixel_values.device)}

    @property
    def _caption_start(self) -> int:
        return self.prompt_length  # generate() drops the prompt's trailing [SEP]


def build_blip(
    pretrained: str | None = None,
    tiny: dict | None = None,
    arch: str | None = None,
    adapter: dict | AdapterSpec | None = None,
    prompt: str = "a picture of ",
    max_length: int = 40,
    gradient_checkpointing: bool = False,
    save_base_to: str | None = None,
    init_seed: int = 0,
    attention: str = "sdpa",
    caption_max_length: int = 20,
) -> BlipCaptioner:
    """BLIP captioner from `pretrained` (hub id or local directory) or, offline, from a tiny config
    or a published architecture with random weights (`arch`: "blip_base", "blip_large"), with the
    real BLIP tokenizer.

    A randomly initialized model is written to `save_base_to` (before adapters are added), so a run's
    adapters can always be loaded back onto the exact base they were trained on. `attention`: the
    vision encoder's attention, "sdpa" (fused, no N x N matrix kept) or transformers' "eager".
    `caption_max_length`: its captions' length when a caller gives none, with [DEC] and the prompt
    (`Captioner.caption_max_length`); 20 as BLIP's captioning evaluation.
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model, processor = load_or_init(
        BlipForConditionalGeneration, BlipProcessor, pretrained, arch, tiny, init_seed,
        archs=ARCHS, tiny_config=tiny_blip_config, offline_processor=_offline_processor,
    )
    set_blip_attention(model, attention)
    captioner = BlipCaptioner(model, processor, prompt=prompt, max_length=max_length)
    return finish_build(captioner, pretrained, adapter, gradient_checkpointing, save_base_to, caption_max_length)


def _offline_processor(config):
    from transformers import BlipProcessor

    from recon_ft.models.tokenizers import blip_tokenizer

    return BlipProcessor(image_processor=blip_image_processor(config.vision_config.image_size),
                         tokenizer=blip_tokenizer())
