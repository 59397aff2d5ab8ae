"""GIT (GitForCausalLM) behind the captioner interface (recon_ft.models.captioner): the captioner
class and its builder. Configs: recon_ft.models.git.configs, conf/captioner/git_base.yaml, tiny_git.yaml.

GIT is one transformer over [image tokens; text tokens]: the image encoder's N tokens (CLS +
patches) are prefixed, the text attends to all of them and causally to itself. Its tokenizer is
BERT uncased WordPiece: input_ids are [CLS] prompt caption [SEP] [PAD]..., as BLIP's with [CLS] in
place of [DEC]. The model's logits cover the N image positions too; `logits` drops them, so
position i still predicts token i + 1 of the text.
"""

from __future__ import annotations

import torch
from torch import nn

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.models.captioner import Captioner, CaptionTokens, finish_build, load_or_init
from recon_ft.models.git.configs import ARCHS, tiny_git_config
from recon_ft.models.lora import AdapterSpec, critic_call


class GitCaptioner(Captioner):
    def __init__(self, model, processor, prompt: str = "", max_length: int = 40):
        super().__init__(model, processor, prompt=prompt, max_length=max_length)
        self.bos_token_id = self.tokenizer.cls_token_id  # GIT decodes from [CLS]
        self.eos_token_id = self.tokenizer.sep_token_id
        self.pad_token_id = self.tokenizer.pad_token_id
        # image tokens before the text: (image_size / patch_size)^2 + 1
        self.num_image_tokens = model.git.encoder.layer[0].attention.self.image_patch_tokens
        self.prompt = prompt

    def _prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer(prompt).input_ids) - 1  # [CLS] + prompt, without the trailing [SEP]

    def tokenize(self, captions: list[str], device=None) -> CaptionTokens:
        enc = self.tokenizer(
            [self.prompt + c for c in captions], padding="longest", truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        labels[:, : self.prompt_length] = -100
        tokens = CaptionTokens(enc.input_ids, enc.attention_mask, labels, self.prompt_length)
        return tokens.to(device) if device is not None else tokens

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def logits(self, pixel_values: torch.Tensor, tokens: CaptionTokens, critic: bool = False) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) at the text positions; logits[:, i] predicts input_ids[:, i + 1]."""
        kwargs = dict(pixel_values=pixel_values, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        out = critic_call(self.model, **kwargs) if critic else self.model(**kwargs)
        return out.logits[:, self.num_image_tokens :]  # (B, N + L, V) -> (B, L, V)

    def _generation_inputs(self, pixel_values: torch.Tensor) -> dict:
        b = pixel_values.shape[0]
        prompt = self.tokenizer([self.prompt] * b, return_tensors="pt").input_ids[:, :-1]  # without [SEP]
        return {"input_ids": prompt.to(pixel_values.device), "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id}

    @property
    def _caption_start(self) -> int:
        return self.prompt_length  # [CLS] and the prompt


def build_git(
    pretrained: str | None = None,
    tiny: dict | None = None,
    arch: str | None = None,
    adapter: dict | AdapterSpec | None = None,
    prompt: str = "",
    max_length: int = 40,
    gradient_checkpointing: bool = False,
    save_base_to: str | None = None,
    init_seed: int = 0,
    caption_max_length: int = 20,
) -> GitCaptioner:
    """GIT captioner from `pretrained` (hub id or local directory) or, offline, from a tiny config
    (recon_ft.models.git.configs.tiny_git_config) or a published architecture with random weights (`arch`:
    "git_base", "git_large"), with the real tokenizer (BERT uncased) either way.

    GIT's COCO checkpoints caption from [CLS] alone, so the prompt defaults to none.
    `caption_max_length`: its captions' length when a caller gives none, with [CLS] and the prompt
    (`Captioner.caption_max_length`); 20, transformers' default, which GIT's generation configs
    keep (BERT's WordPiece, as BLIP's).
    """
    from transformers import AutoProcessor, GitForCausalLM

    model, processor = load_or_init(
        GitForCausalLM, AutoProcessor, pretrained, arch, tiny, init_seed,
        archs=ARCHS, tiny_config=tiny_git_config, offline_processor=_offline_processor,
    )
    captioner = GitCaptioner(model, processor, prompt=prompt, max_length=max_length)
    return finish_build(captioner, pretrained, adapter, gradient_checkpointing, save_base_to, caption_max_length)


def _offline_processor(config):
    """CLIP's image processor (resize the shortest edge, centre crop) and BERT uncased."""
    from transformers import CLIPImageProcessor, GitProcessor

    from recon_ft.models.tokenizers import bert_tokenizer

    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return GitProcessor(image_processor=image_processor, tokenizer=bert_tokenizer())
