"""Datasets (raw samples), the two image views, samplers and the LightningDataModule."""

from recon_ft.data.coco import KARPATHY_SPLITS, KarpathyCaptions
from recon_ft.data.datamodule import (
    BadSampleError,
    CaptionCollate,
    CaptionDataModule,
    ViewDataset,
    load_image,
    truncate_words,
)
from recon_ft.data.jsonl import JsonlCaptions
from recon_ft.data.nocaps import NOCAPS_DOMAINS, NoCapsCaptions
from recon_ft.data.sampler import EvalShardSampler, ResumableSampler, SampleKey, pick_reference, unpack_key
from recon_ft.data.synthetic import (
    HELDOUT_PAIRS,
    Scene,
    Shape,
    SyntheticCaptions,
    captions,
    colour_match,
    object_colours,
    drop_attributes,
    parse_caption,
    parse_partial,
    render,
    score_attributes,
    score_caption,
)
from recon_ft.data.transforms import CaptionerView, GeneratorView
from recon_ft.data.unpaired import SyntheticImages, SyntheticTexts, UnpairedImages, UnpairedTexts

__all__ = [
    "SyntheticImages",
    "SyntheticTexts",
    "UnpairedImages",
    "UnpairedTexts",
    "HELDOUT_PAIRS",
    "KARPATHY_SPLITS",
    "NOCAPS_DOMAINS",
    "BadSampleError",
    "CaptionCollate",
    "CaptionDataModule",
    "CaptionerView",
    "EvalShardSampler",
    "GeneratorView",
    "JsonlCaptions",
    "KarpathyCaptions",
    "NoCapsCaptions",
    "ResumableSampler",
    "SampleKey",
    "Scene",
    "Shape",
    "SyntheticCaptions",
    "ViewDataset",
    "captions",
    "colour_match",
    "load_image",
    "object_colours",
    "drop_attributes",
    "parse_caption",
    "parse_partial",
    "pick_reference",
    "render",
    "score_attributes",
    "score_caption",
    "truncate_words",
    "unpack_key",
]
