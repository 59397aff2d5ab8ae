"""How much gradient each loss term sends into each model: the study's mechanism log.

||d(w_k L_k) / d theta_m|| for every weighted term k of the joint objective (cap, gen, i2t2i,
t2i2t and the unpaired terms) and each model's trainable parameters theta_m, through
torch.autograd.grad with the step's graph kept for its own backward. A logged step costs one extra
backward pass per term, so it is a diagnostic taken every n steps (`term_grad_norms_every_n_steps`).
With cycle_grads=own the image cycle's norm into the generator is 0 by construction, and so is the
text cycle's into the captioner.
"""

from __future__ import annotations

import torch


def term_grad_norms(out: dict[str, torch.Tensor], weights: dict[str, float],
                    params: dict[str, list[torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """{"<model>/<term>": 0-dim tensor} for each term in `out` ("loss_<term>") with a non-zero weight
    and a graph, and each model in `params` ({"captioner": [...], "generator": [...]})."""
    norms = {}
    for key, value in out.items():
        term = key.removeprefix("loss_")
        if key == "loss" or not key.startswith("loss_") or not weights.get(term) or not value.requires_grad:
            continue
        for model, group in params.items():
            grads = torch.autograd.grad(weights[term] * value, group, retain_graph=True, allow_unused=True)
            squares = [g.pow(2).sum() for g in grads if g is not None]
            norms[f"{model}/{term}"] = torch.stack(squares).sum().sqrt() if squares else value.new_zeros(())
    return norms
