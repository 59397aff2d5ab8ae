"""Constants shared across the package: image normalisation statistics and where the project's
configs live.

OpenAI CLIP's per-channel mean and standard deviation (open_clip.constants.OPENAI_DATASET_MEAN /
_STD; written out here because importing open_clip takes seconds). BLIP, BLIP-2 and GIT normalise
their inputs with the same statistics, as do the CLIP feature extractors of the evaluation.
"""

from pathlib import Path

import torch

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# The checkout's root (train.py, eval.py) and its Hydra configs; the experiments compose the same
# configs the entry points do, so that no setting is written twice.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"

# The dtype every pretrained model loads in (transformers' `dtype=`, diffusers' `torch_dtype=`). Left
# unstated, transformers 5 loads with dtype="auto": a published config that says float16 (SDXL's text
# encoders) would give fp16 weights beside an fp32 UNet and VAE. Bases and LoRA weights are fp32;
# mixed precision comes from the trainer's `precision`, not from the weights.
LOAD_DTYPE: torch.dtype = torch.float32
