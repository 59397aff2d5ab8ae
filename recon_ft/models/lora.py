"""Which parameters of a model train: LoRA adapters (peft), full weights of named modules, or none.

`mode: lora` injects peft LoRA layers into the target modules and freezes everything else.
`mode: full` unfreezes the weights of the target modules themselves and freezes the rest; this is
how the reference implementation trained (cross-attention query projections only).
`mode: frozen` trains nothing.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from recon_ft.utils import dataclass_from


@dataclass
class AdapterSpec:
    mode: str = "lora"  # lora | full | frozen
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    # peft semantics: a list of module-name suffixes, or one regex string matched against full names.
    target_modules: Any = field(default_factory=list)

    @classmethod
    def coerce(cls, spec: "AdapterSpec | dict | None") -> "AdapterSpec":
        if spec is None:
            return cls(mode="frozen")
        if isinstance(spec, cls):
            return spec
        out = dataclass_from(cls, spec, "adapter")
        if out.mode not in ("lora", "full", "frozen"):
            raise ValueError(f"adapter.mode: expected lora, full or frozen, got {out.mode!r}")
        if out.target_modules is not None and not isinstance(out.target_modules, str):
            out.target_modules = list(out.target_modules)
        return out

    def lora_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            init_lora_weights="gaussian",
        )


def inject_lora(module: nn.Module, spec: AdapterSpec) -> None:
    """peft LoRA layers into a transformers model, readable by `get_peft_model_state_dict`.

    transformers' own `add_adapter` would do this but demands a newer peft than is released.
    """
    from peft import inject_adapter_in_model

    config = spec.lora_config()
    inject_adapter_in_model(config, module, adapter_name="default")
    module.peft_config = {"default": config}


def matches_target(name: str, target_modules) -> bool:
    """peft's rule: a regex string must match the full name; a list entry must end the name."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def unfreeze_modules(model: nn.Module, target_modules) -> list[str]:
    """`mode: full`: freeze `model`, then unfreeze the parameters of every matching module."""
    model.requires_grad_(False)
    hit = [name for name, module in model.named_modules() if name and matches_target(name, target_modules)]
    if not hit:
        raise ValueError(f"adapter.target_modules={target_modules!r} matches no module of {type(model).__name__}")
    for name in hit:
        model.get_submodule(name).requires_grad_(True)
    return hit


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def critic_call(module: nn.Module, *args, **kwargs):
    """Call `module` with its trainable parameters detached.

    Used where a model is a fixed critic in the other model's cycle term: the gradient still flows
    through the module to its *inputs*, but none reaches its own adapters (docs/design.md, "The method",
    "Gradient routing").
    """
    detached = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    if not detached:
        return module(*args, **kwargs)
    return torch.func.functional_call(module, detached, args, kwargs, strict=False)


def critic_checkpoint_context(model: nn.Module):
    """`context_fn` for non-reentrant torch.utils.checkpoint inside `model`, so that gradient
    checkpointing works in `critic_call`s of it. Make it after the adapters are in place.

    critic_call runs `model` with its trainable parameters swapped for detached copies, but a
    checkpointed segment is recomputed during backward, after the swap is undone: the recomputation
    would see parameters that require grad, save other tensors than the forward did, and fail
    torch's metadata check. A segment first run as a critic is recomputed with those parameters'
    requires_grad turned off, which saves the same tensors. (Gradient edges come from the forward's
    graph, so the adapters get no gradient from a critic pass either way.)
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        return lambda: (contextlib.nullcontext(), contextlib.nullcontext())
    path, _, attr = trainable[0][0].rpartition(".")
    probe = model.get_submodule(path)  # under critic_call, getattr(probe, attr) is a detached copy

    @contextlib.contextmanager
    def as_critic():
        for _, p in trainable:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for _, p in trainable:
                p.requires_grad_(True)

    def context_fn():
        in_critic = not getattr(probe, attr).requires_grad
        return contextlib.nullcontext(), (as_critic() if in_critic else contextlib.nullcontext())

    return context_fn
