"""Image captioners behind one small interface, and the build every captioner family shares.

What the losses and the evaluation need from a captioner (and nothing else):
  - `preprocess(images)`: images in [-1, 1] -> the model's pixel values, differentiably;
  - `tokenize(captions)`: prompt + caption ids, attention mask, labels (-100 on prompt and padding);
  - `logits(pixel_values, tokens)`: teacher-forced logits, position i predicting token i + 1;
  - `generate(pixel_values, ...)`: captions by beam search or nucleus sampling;
  - `token_embedding`, `tokenizer`, `eos_token_id`: for the vocabulary bridge (the logits' last
    dimension is `len(tokenizer)`: one column per token the bridge knows);
  - `new_token_range`, `configure_adapters`, `save_base`, `enable_gradient_checkpointing`;
  - `prompt` (settable: the evaluation may caption with another prompt) and `prompt_length`.
`Captioner` holds what every family shares (images, prompt, adapters, saving). Each family is a
folder with a subclass and its builder (model.py) and its published and tiny configs (configs.py):
recon_ft.models.blip, .blip2, .git. A builder is `load_or_init` (the model and its processor),
the family's class, then `finish_build`. Their Hydra configs are conf/captioner/*.yaml;
docs/adding_a_model.md walks through adding a family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from recon_ft.constants import CLIP_MEAN, CLIP_STD, LOAD_DTYPE
from recon_ft.utils import is_rank_zero
from recon_ft.models.lora import AdapterSpec, critic_checkpoint_context, unfreeze_modules


@dataclass
class CaptionTokens:
    input_ids: torch.Tensor  # (B, L): [DEC] prompt caption [SEP] [PAD]...
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L): input_ids with -100 on the prompt and on padding
    prompt_length: int  # P: positions 0..P-1 hold [DEC] and the prompt

    def to(self, device) -> "CaptionTokens":
        return CaptionTokens(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.prompt_length
        )

    def select(self, rows: torch.Tensor) -> "CaptionTokens":
        """The tokens of `rows`: a boolean mask or row indices (indices need no host read of a mask)."""
        return CaptionTokens(self.input_ids[rows], self.attention_mask[rows], self.labels[rows], self.prompt_length)


class Captioner(nn.Module):
    """What every captioner family shares: the differentiable image preprocessing, the prompt, the
    generation length rule, adapters, saving and gradient checkpointing.

    Subclasses set `bos_token_id`, `eos_token_id`, `pad_token_id` and implement `_prompt_length`,
    `tokenize`, `logits`, `_generation_inputs`, `_caption_start` and `token_embedding`.
    """

    # The length of its captions when a caller gives none (`generate`; eval.py's caption.max_length
    # and the caption-validation callback's max_length: null), counted as BLIP counts, with the
    # positions before the caption (`new_token_range`). The length belongs to the captioner, as
    # guidance belongs to the generator: a tokenizer that splits captions finer needs more (the
    # zoo's BLIP-2 OPT's byte-level BPE). The builders set it from their `caption_max_length`.
    caption_max_length: int = 20

    def __init__(self, model, processor, prompt: str = "a picture of ", max_length: int = 40):
        super().__init__()
        self.model = model  # the transformers model, LoRA layers injected when training adapters
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        image_processor = processor.image_processor
        self.image_size = image_side(image_processor)
        self.register_buffer("mean", torch.tensor(image_processor.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(image_processor.image_std).view(1, 3, 1, 1), persistent=False)
        self.peft_model = None  # set by `configure_adapters` in LoRA mode
        self._prompt = prompt

    # -- prompt ---------------------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return self._prompt

    @prompt.setter
    def prompt(self, value: str) -> None:
        self._prompt = value
        self.prompt_length = self._prompt_length(value)

    def _prompt_length(self, prompt: str) -> int:
        """P: the number of positions before the caption's first token in `tokenize`'s input_ids."""
        raise NotImplementedError

    # -- images ---------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) normalized pixel values; differentiable."""
        x = (images + 1) / 2
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def new_token_range(self, max_length: int, min_length: int) -> dict[str, int]:
        """BLIP's lengths (counted with the prompt positions) -> transformers' new-token bounds.

        Explicit new-token bounds, not max_length / min_length: a checkpoint's generation_config
        may set max_new_tokens, which would override a plain max_length.
        """
        p = self.prompt_length
        if max_length <= p:
            raise ValueError(f"caption.max_length={max_length} counts the prompt's {p} positions: "
                             f"expected more than {p}")
        return {"max_new_tokens": max_length - p, "min_new_tokens": max(min_length - p, 0)}

    def _search_kwargs(self, num_beams, do_sample, top_p, repetition_penalty, num_return_sequences) -> dict:
        kwargs = dict(repetition_penalty=repetition_penalty, num_return_sequences=num_return_sequences)
        if do_sample:
            kwargs.update(do_sample=True, top_p=top_p, top_k=0, num_beams=1)
        else:
            kwargs.update(do_sample=False, num_beams=max(num_beams, num_return_sequences))
        return kwargs

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: torch.Tensor,
        num_beams: int = 3,
        max_length: int | None = None,
        min_length: int = 5,
        do_sample: bool = False,
        top_p: float = 0.9,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        **generate_kwargs,
    ) -> list[str]:
        """Captions (without the prompt) for a batch: B * num_return_sequences strings, grouped by image.

        Lengths count the positions before the caption too (`new_token_range`), as BLIP's own
        generate does: with BLIP's "a picture of " (4 tokens) 20 / 5 allow 1 to 16 caption tokens.
        `max_length` None: the captioner's own (`caption_max_length`). `generate_kwargs` go to
        transformers' generate (e.g. `logits_processor`: the evaluation's per-item seeded nucleus
        sampling, recon_ft.eval.captioning).
        """
        max_length = self.caption_max_length if max_length is None else max_length
        out = self.model.generate(
            pixel_values=pixel_values, **self._generation_inputs(pixel_values),
            **self.new_token_range(max_length, min_length),
            **self._search_kwargs(num_beams, do_sample, top_p, repetition_penalty, num_return_sequences),
            **generate_kwargs,
        )
        self.last_ids = out[:, self._caption_start :]  # (B * n, T) the caption ids, for inspection and tests
        return [c.strip() for c in self.tokenizer.batch_decode(self.last_ids, skip_special_tokens=True)]

    def _generation_inputs(self, pixel_values: torch.Tensor) -> dict:
        """The family's generate() arguments besides the pixels and the search: the prompt's ids and
        whatever else it needs (attention mask, special token ids)."""
        raise NotImplementedError

    @property
    def _caption_start(self) -> int:
        """Where the caption starts in generate()'s output rows."""
        raise NotImplementedError

    # -- adapters and saving ----------------------------------------------------------------------
    def configure_adapters(self, spec: AdapterSpec) -> None:
        self.model.requires_grad_(False)
        if spec.mode == "lora":
            from peft import get_peft_model

            self.peft_model = get_peft_model(self.model, spec.lora_config())
            self.model = self.peft_model.get_base_model()  # same modules, LoRA layers injected
        elif spec.mode == "full":
            unfreeze_modules(self.model, spec.target_modules)

    def save_base(self, directory: str | Path) -> None:
        """The base model and processor, transformers format (call before adapters are added)."""
        self.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the transformer layers (in train mode only, as transformers does)."""
        kwargs = {"use_reentrant": False, "context_fn": critic_checkpoint_context(self.model)}
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def image_side(image_processor) -> int:
    """The square side the model sees: BLIP's size {height, width}, or a centre crop (CLIP's
    processors: resize the shortest edge, crop to crop_size)."""
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop:
        return int(crop["height"])
    size = image_processor.size
    return int(size.get("height") or size["shortest_edge"])


def finish_build(captioner: Captioner, pretrained, adapter, gradient_checkpointing, save_base_to,
                 caption_max_length: int = Captioner.caption_max_length) -> Captioner:
    """The builders' common tail: the caption length, save a random-init base (before adapters, so
    a run's adapters always load back onto the exact base they were trained on), add adapters,
    checkpointing."""
    p = captioner.prompt_length
    if int(caption_max_length) <= p:  # said now, not at the first validation's generate
        raise ValueError(f"captioner.caption_max_length={caption_max_length} counts the prompt's {p} positions: "
                         f"expected more than {p}")
    captioner.caption_max_length = int(caption_max_length)
    if save_base_to and not pretrained and is_rank_zero():
        captioner.save_base(save_base_to)
    captioner.configure_adapters(AdapterSpec.coerce(adapter))
    if gradient_checkpointing:
        captioner.enable_gradient_checkpointing()
    return captioner


def init_random(model_class, config, init_seed: int):
    """A model with random weights from `config`, the same for the same seed."""
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        return model_class(config)


def load_or_init(model_class, processor_class, pretrained: str | None, arch: str | None, tiny: dict | None,
                 init_seed: int, archs: dict, tiny_config, offline_processor):
    """(model, processor): the first half of every captioner builder.

    `pretrained` (hub id or local directory): both loaded with the family's classes, the model in
    float32 whatever dtype its config.json names (recon_ft.constants.LOAD_DTYPE). Otherwise, no
    download: the config is the published architecture `archs[arch]()` or `tiny_config(**tiny)`,
    `offline_processor(config)` makes the processor with a tokenizer built offline (it may set
    config fields that depend on the tokenizer, e.g. BLIP-2's image token id) and the weights are
    random, the same for the same `init_seed`.
    """
    if pretrained:
        return model_class.from_pretrained(pretrained, dtype=LOAD_DTYPE), processor_class.from_pretrained(pretrained)
    if arch and tiny:
        raise ValueError("captioner: give `arch` or `tiny`, not both")
    if arch and arch not in archs:
        raise ValueError(f"captioner: unknown arch {arch!r}; available: {sorted(archs)}")
    config = archs[arch]() if arch else tiny_config(**(tiny or {}))
    processor = offline_processor(config)
    return init_random(model_class, config, init_seed), processor


def blip_image_processor(size: int):
    """BLIP's and BLIP-2's image processor offline: resize to (size, size), CLIP's normalisation."""
    from transformers import BlipImageProcessor

    return BlipImageProcessor(size={"height": size, "width": size}, image_mean=list(CLIP_MEAN),
                              image_std=list(CLIP_STD))
