"""BLIP-2 (Blip2ForConditionalGeneration) behind the captioner interface (recon_ft.models.captioner):
the captioner class and its builder. Configs: recon_ft.models.blip2.configs, conf/captioner/blip2_*.yaml
and tiny_blip2_*.yaml.

A frozen-style ViT, a Q-Former whose Q learned queries read the image, and a language model that
gets the queries (projected to its width) as Q input embeddings, at the positions of Q "<image>"
placeholder ids (transformers swaps the embeddings in). Two language-model kinds:

- decoder-only (OPT): the LM reads [Q queries; BOS prompt caption EOS]. `tokenize` returns only
  the text part, input_ids = BOS prompt caption EOS PAD..., prompt_length P = 1 + prompt tokens;
  `logits` prepends the placeholders and drops their Q output positions, so logits[:, i] predicts
  input_ids[:, i + 1] exactly as for BLIP. The prompt and the caption are tokenized apart and
  joined (the caption with its leading space): byte-level BPE would otherwise merge the prompt's
  trailing space into the caption's first token, and P would depend on the caption.
- encoder-decoder (Flan-T5): the prompt is the encoder's input, after the queries
  ([Q queries; prompt </s>]), the same for every caption. The caption is the decoder's sequence:
  input_ids = <pad> caption </s> <pad>... (T5 starts decoding from <pad>), so P = 1, labels are
  the caption and its </s>, and logits[:, i] (decoder position i) predicts input_ids[:, i + 1].
  The losses need nothing else: the soft caption is read off the decoder's logits as for BLIP.

Released checkpoints pad their embedding matrices past the tokenizer (OPT 50,304 rows for 50,266
tokens, T5 32,128 for 32,101); `logits` returns the tokenizer's columns only, which are what the
vocabulary bridge maps (the padding rows are no tokens and are never trained towards).
"""

from __future__ import annotations

import torch
from torch import nn

from recon_ft.models.blip2.configs import ARCHS, tiny_blip2_config
from recon_ft.models.captioner import Captioner, CaptionTokens, blip_image_processor, finish_build, load_or_init
from recon_ft.models.lora import AdapterSpec, critic_call


class Blip2Captioner(Captioner):
    def __init__(self, model, processor, prompt: str = "", max_length: int = 40, caption_end: str | None = None):
        super().__init__(model, processor, prompt=prompt, max_length=max_length)
        config = model.config
        if config.image_token_index is None:
            raise ValueError("BLIP-2 checkpoint: config.image_token_index is not set (a checkpoint saved before "
                             "transformers placed the query embeddings at '<image>' ids); expected an id")
        self.image_token_id = int(config.image_token_index)
        self.num_query_tokens = int(config.num_query_tokens)
        self.decoder_only = bool(config.use_decoder_only_language_model)
        tok = self.tokenizer
        self.pad_token_id = tok.pad_token_id
        if self.decoder_only:
            self.bos_token_id = tok.bos_token_id
            # the token that ends a caption: LAVIS trained BLIP-2 OPT with "\n" (see conf/captioner/blip2_opt.yaml)
            self.eos_token_id = _single_id(tok, caption_end) if caption_end else tok.eos_token_id
        else:
            self.bos_token_id = int(model.config.text_config.decoder_start_token_id)  # T5: <pad>
            self.eos_token_id = tok.eos_token_id
        self.prompt = prompt

    # -- text -----------------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self._text_ids(prompt.rstrip()) if prompt.strip() else []

    def _prompt_length(self, prompt: str) -> int:
        return 1 + len(self._prompt_ids(prompt)) if self.decoder_only else 1

    def tokenize(self, captions: list[str], device=None) -> CaptionTokens:
        p = self.prompt_length
        head = [self.bos_token_id] + (self._prompt_ids(self.prompt) if self.decoder_only else [])  # P ids
        # the caption's first word takes its leading space when a prompt comes before it
        lead = " " if self.decoder_only and self.prompt.strip() else ""
        rows = [head + self._text_ids(lead + c.strip())[: self.max_length - p - 1] + [self.eos_token_id]
                for c in captions]
        n = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), n), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention_mask[i, : len(r)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, :p] = -100
        tokens = CaptionTokens(input_ids, attention_mask, labels, p)
        return tokens.to(device) if device is not None else tokens

    def _encoder_ids(self, batch: int, device) -> torch.Tensor:
        """Encoder-decoder: (B, Q + prompt tokens + 1) = <image> x Q, prompt, </s>."""
        ids = [self.image_token_id] * self.num_query_tokens + self._prompt_ids(self.prompt) + [self.eos_token_id]
        return torch.tensor(ids, device=device).expand(batch, -1)

    def _with_queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Decoder-only: the Q placeholders before the text, (B, L) -> (B, Q + L)."""
        b = input_ids.shape[0]
        image = input_ids.new_full((b, self.num_query_tokens), self.image_token_id)
        return torch.cat([image, input_ids], 1), torch.cat([torch.ones_like(image), attention_mask], 1)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    # -- forward --------------------------------------------------------------------------------
    def logits(self, pixel_values: torch.Tensor, tokens: CaptionTokens, critic: bool = False) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) over the text positions; logits[:, i] predicts input_ids[:, i + 1].

        V = len(tokenizer). `critic=True` runs with the adapters detached.
        """
        if self.decoder_only:
            input_ids, attention_mask = self._with_queries(tokens.input_ids, tokens.attention_mask)
            kwargs = dict(input_ids=input_ids, attention_mask=attention_mask)
        else:
            enc = self._encoder_ids(tokens.input_ids.shape[0], tokens.input_ids.device)
            kwargs = dict(input_ids=enc, attention_mask=torch.ones_like(enc), decoder_input_ids=tokens.input_ids,
                          decoder_attention_mask=tokens.attention_mask)
        kwargs["pixel_values"] = pixel_values
        out = critic_call(self.model, **kwargs) if critic else self.model(**kwargs)
        logits = out.logits[:, self.num_query_tokens :] if self.decoder_only else out.logits  # (B, L, V_model)
        return logits[..., : self.vocab_size]

    def _generation_inputs(self, pixel_values: torch.Tensor) -> dict:
        b, device = pixel_values.shape[0], pixel_values.device
        if self.decoder_only:
            head = torch.tensor([self.bos_token_id] + self._prompt_ids(self.prompt), device=device).expand(b, -1)
            input_ids, attention_mask = self._with_queries(head, torch.ones_like(head))
        else:
            input_ids = self._encoder_ids(b, device)
            attention_mask = torch.ones_like(input_ids)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, eos_token_id=self.eos_token_id,
                      pad_token_id=self.pad_token_id)
        rows = self.model.get_output_embeddings().out_features
        if rows > self.vocab_size:  # the embedding's padding rows are no tokens: never generate them
            inputs["suppress_tokens"] = list(range(self.vocab_size, rows))
        return inputs

    @property
    def _caption_start(self) -> int:
        # decoder-only: the output repeats the Q placeholders and the P prompt ids; T5: it starts with <pad>
        return self.num_query_tokens + self.prompt_length if self.decoder_only else 1


def _single_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"captioner.caption_end={text!r}: expected text of one token, got {len(ids)} tokens {ids}")
    return ids[0]


def build_blip2(
    pretrained: str | None = None,
    tiny: dict | None = None,
    arch: str | None = None,
    adapter: dict | AdapterSpec | None = None,
    prompt: str = "",
    max_length: int = 40,
    caption_end: str | None = None,
    gradient_checkpointing: bool = False,
    save_base_to: str | None = None,
    init_seed: int = 0,
    caption_max_length: int = 30,
) -> Blip2Captioner:
    """BLIP-2 captioner from `pretrained` (hub id or local directory) or, offline, from a tiny config
    (recon_ft.models.blip2.configs.tiny_blip2_config; `tiny.language_model`: opt | t5) or a published
    architecture with random weights (`arch`: "blip2_opt_2.7b", "blip2_flan_t5_xl").

    Offline builds use the small OPT-style or T5-style tokenizers of
    recon_ft.models.trained_tokenizers (the real ones are not available offline); with `arch` the
    model keeps its real vocabulary size and only the tokenizer's ids are used. `caption_end`: the
    text of the token that ends a caption (decoder-only models; default the tokenizer's EOS).
    `caption_max_length`: its captions' length when a caller gives none, with BOS and the prompt
    (`Captioner.caption_max_length`); 30 as BLIP-2's captioning evaluation (LAVIS's max_len), which
    also holds the longest benchmark caption in the zoo OPT's byte-level BPE (16 tokens + 5).
    """
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    model, processor = load_or_init(
        Blip2ForConditionalGeneration, AutoProcessor, pretrained, arch, tiny, init_seed,
        archs=ARCHS, tiny_config=tiny_blip2_config, offline_processor=_offline_processor,
    )
    untie_t5_lm_head(model)
    captioner = Blip2Captioner(model, processor, prompt=prompt, max_length=max_length, caption_end=caption_end)
    return finish_build(captioner, pretrained, adapter, gradient_checkpointing, save_base_to, caption_max_length)


def untie_t5_lm_head(model):
    """Give a T5 language model whose config says `tie_word_embeddings: false` its own `lm_head`, as the
    published Flan-T5 checkpoints have (BLIP-2 Flan-T5-XL: 3.94B parameters, 65.8M of them lm_head).

    transformers 5's T5Config reads `tie_word_embeddings: false` as "do not scale the decoder's
    output" (scale_decoder_outputs) and then sets tie_word_embeddings to True, so that a model built
    from the config shares lm_head with the input embeddings, and a checkpoint whose two matrices
    are equal (a random-init base saved here) loads tied again. Untied here, lm_head starts as a
    copy of the embeddings (the same outputs as the tied model); the input embeddings stay shared
    between encoder and decoder, as published. A no-op for OPT and for T5 models that do tie.
    """
    lm = model.language_model
    if lm.config.model_type != "t5" or getattr(lm.config, "scale_decoder_outputs", True):
        return model
    if lm.lm_head.weight is lm.shared.weight:
        lm.lm_head.weight = nn.Parameter(lm.shared.weight.detach().clone())
    # tie_weights() (resize_token_embeddings, save_pretrained's bookkeeping) must not tie them back
    lm._tied_weights_keys = {k: v for k, v in lm._tied_weights_keys.items() if k != "lm_head.weight"}
    lm.all_tied_weights_keys = lm.get_expanded_tied_weights_keys()
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)
    return model


def _offline_processor(config):
    """The small OPT-style or T5-style tokenizer (recon_ft.models.trained_tokenizers); the config's
    image token id becomes the tokenizer's "<image>"."""
    from transformers import Blip2Processor

    from recon_ft.models import trained_tokenizers as tt

    decoder_only = config.text_config.model_type == "opt"
    tokenizer = tt.bytelevel_tokenizer() if decoder_only else tt.sentencepiece_tokenizer()
    config.image_token_index = tokenizer.convert_tokens_to_ids(tt.IMAGE_TOKEN)
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"captioner.tiny.vocab_size={config.text_config.vocab_size}: expected at least the "
                         f"tokenizer's {len(tokenizer)} tokens")
    return Blip2Processor(image_processor=blip_image_processor(config.vision_config.image_size),
                          tokenizer=tokenizer, num_query_tokens=config.num_query_tokens)
