"""The optimizer's settings, checked: per-model learning rate, weight decay and gradient clipping,
and the learning-rate schedule (linear warmup, then constant or cosine)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from recon_ft.utils import expect


@dataclass
class ModelOptim:
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global norm of this model's trainable parameters


@dataclass
class OptimConfig:
    captioner: ModelOptim = field(default_factory=ModelOptim)
    generator: ModelOptim = field(default_factory=ModelOptim)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio

    @classmethod
    def coerce(cls, cfg) -> "OptimConfig":
        if isinstance(cfg, cls):
            return cfg
        cfg = dict(cfg or {})
        for key in ("captioner", "generator"):
            cfg[key] = ModelOptim(**dict(cfg.get(key) or {}))
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        out = cls(**cfg)
        if out.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule: expected constant or cosine, got {out.schedule!r}")
        out.check_ranges()
        return out

    def check_ranges(self) -> None:
        for model in ("captioner", "generator"):
            m = getattr(self, model)
            # a negative rate would ascend the loss
            expect(m.lr >= 0, f"optim.{model}.lr", ">= 0", m.lr)
            expect(m.weight_decay >= 0, f"optim.{model}.weight_decay", ">= 0", m.weight_decay)
            expect(m.grad_clip is None or m.grad_clip > 0, f"optim.{model}.grad_clip", "> 0 or null", m.grad_clip)
        expect(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
                "two values in [0, 1)", list(self.betas))
        expect(self.eps > 0, "optim.eps", "> 0", self.eps)
        expect(self.warmup_steps >= 0, "optim.warmup_steps", ">= 0", self.warmup_steps)
        expect(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Multiplier of the base learning rate at optimizer step s: linear warmup, then constant or cosine."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f
