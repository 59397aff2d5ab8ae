"""PyTorch's fused attention (SDPA) for BLIP's vision encoder.

transformers implements BLIP's attention only eagerly: softmax(q k^T * scale) v with explicit
matmuls, which keeps the (B, H, N, N) probabilities for the backward pass. For the ViT-B/16 at
384 px (N = 577 tokens, 12 heads) that is 16 MB per image and layer in float32, about 1.5 GB for
a batch of 8 through 12 layers. F.scaled_dot_product_attention computes the same function with
fused (flash / memory-efficient) kernels that keep no N x N matrix. The text decoder's attention
(about 40 tokens) stays eager: there is nothing to save there.

The UNet (diffusers' AttnProcessor2_0) and the CLIP text encoder already use SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION = ("sdpa", "eager")


def _blip_attention_class():
    from transformers.models.blip.modeling_blip import BlipAttention

    class SdpaBlipAttention(BlipAttention):
        """BlipAttention with the same parameters, computed by F.scaled_dot_product_attention."""

        def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, None]:
            b, n, d = hidden_states.shape
            qkv = self.qkv(hidden_states).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            dropout = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout, scale=self.scale)
            # (B, H, N, hd) -> (B, N, H * hd); no attention weights (BlipEncoderLayer discards them)
            return self.projection(out.transpose(1, 2).reshape(b, n, d)), None

    return BlipAttention, SdpaBlipAttention


def set_blip_attention(model: nn.Module, attention: str) -> int:
    """Switch every vision attention layer of a BLIP model to `attention` ("sdpa" or "eager") in
    place; weights and state-dict names are unchanged. Returns how many layers were switched."""
    if attention not in ATTENTION:
        raise ValueError(f"captioner.attention: expected one of {ATTENTION}, got {attention!r}")
    eager, sdpa = _blip_attention_class()
    target = sdpa if attention == "sdpa" else eager
    count = 0
    for module in model.modules():
        if isinstance(module, eager) and type(module) is not target:
            module.__class__ = target
            count += 1
    return count
